"""Tests for the KED-MI distributional inversion."""

import keras
import numpy as np
import pytest
from keras import ops

from tests.attacks.test_inversion import (
    Z_DIM,
    check_result,
    recover_latents,
    softmax_cross_entropy,
    tiny_classifier,
    tiny_generator,
    tiny_head,
    to_numpy,
)
from trapmid_tf.attacks.kedmi import KEDMIAttack, discriminator_groups, grouped_logits

CLASSES = [1, 2, 0]


@pytest.fixture(scope="module")
def networks():
    return tiny_generator(), tiny_head(3), tiny_classifier()


def invert(networks, iterations, per_class=2, seed=0, **kwargs):
    generator, discriminator, target = networks
    attack = KEDMIAttack(generator, discriminator, iterations=iterations, chunk_size=20, **kwargs)
    return attack.invert(target, CLASSES, per_class=per_class, seed=seed, verbose=0)


def expected_objective(networks, latents, labels, draws=256):
    """Monte-Carlo estimate of E[softplus(lse D) - lse D + 100 CE(T, y)] per distribution."""
    generator, discriminator, target = networks
    mean, log_variance = latents[:, 0], latents[:, 1]
    epsilon = np.random.default_rng(0).standard_normal((draws, *mean.shape))
    z = (mean + np.exp(0.5 * log_variance) * epsilon).reshape(-1, Z_DIM).astype(np.float32)
    images = generator(z)
    lse = np.logaddexp.reduce(to_numpy(discriminator(images)).astype(np.float64), axis=1)
    prior = np.logaddexp(0.0, lse) - lse
    cross_entropy = softmax_cross_entropy(to_numpy(target(images)), np.tile(labels, draws))
    return (prior + 100.0 * cross_entropy).mean()


def test_inversion_lowers_the_expected_objective(networks):
    before, after = invert(networks, 0), invert(networks, 40)
    check_result(after, CLASSES, 2, (2, Z_DIM))
    np.testing.assert_array_equal(before.latents[:, 0], 0.0)  # mu starts at 0
    np.testing.assert_array_equal(before.latents[:, 1], 1.0)  # log sigma^2 starts at 1
    labels = after.labels
    assert expected_objective(networks, after.latents, labels) < expected_objective(
        networks, before.latents, labels
    ) - 1.0


def test_images_are_fresh_samples_of_the_returned_distributions(networks):
    result = invert(networks, 20, per_class=20, samples_per_distribution=20)
    mean, log_variance = result.latents[:, 0], result.latents[:, 1]
    # One distribution per class: its 20 images share (mu, log sigma^2).
    for start in range(0, 60, 20):
        np.testing.assert_array_equal(mean[start : start + 20], mean[[start] * 20])
        np.testing.assert_array_equal(
            log_variance[start : start + 20], log_variance[[start] * 20]
        )
    assert not np.allclose(mean[0], mean[20])
    z = recover_latents(networks[0], result.images)
    epsilon = (z - mean) / np.exp(0.5 * log_variance)
    # 240 standard normal draws: mean within 4 standard errors, std near 1, all distinct.
    assert abs(epsilon.mean()) < 4.0 / np.sqrt(epsilon.size)
    assert 0.8 < epsilon.std() < 1.2
    assert len(np.unique(epsilon.round(4), axis=0)) == 60


def test_clipped_latents_stay_in_the_unit_box(networks):
    result = invert(networks, 5, per_class=10, clip_latents=True)
    z = recover_latents(networks[0], result.images)
    assert np.abs(z).max() <= 1.0 + 1e-3
    assert np.mean(np.abs(z) > 1.0 - 1e-3) > 0.2  # sigma = e^0.5: many draws were clipped


def test_same_seed_repeats_and_other_seeds_differ(networks):
    first, second = invert(networks, 10, seed=2), invert(networks, 10, seed=2)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.latents, second.latents)
    assert not np.allclose(first.images, invert(networks, 10, seed=3).images)


def test_rejects_per_class_not_a_multiple_of_the_samples(networks):
    with pytest.raises(ValueError, match="samples_per_distribution=2"):
        invert(networks, 1, per_class=3, samples_per_distribution=2)




def test_xla_compiled_loop_with_per_step_noise_runs(networks):
    result = invert(networks, 10, seed=1, jit_compile=True)
    check_result(result, CLASSES, 2, (2, Z_DIM))
    assert np.all(np.isfinite(result.latents))


def test_discriminator_sees_interleaved_groups_of_its_training_batch_size():
    # 3 identities x 3 restarts, identity-major: images 0-2 are identity 0. Restart-major
    # order is 0 3 6 1 4 7 2 5 8; groups of 4, the last filled from the start of that order.
    groups, inverse = discriminator_groups(9, per_class=3, group_size=4)
    assert groups.tolist() == [[0, 3, 6, 1], [4, 7, 2, 5], [8, 0, 3, 6]]
    assert np.concatenate(groups)[inverse].tolist() == list(range(9))
    # Smaller than one training batch: one group, nothing repeated.
    assert discriminator_groups(4, per_class=2, group_size=64)[0].tolist() == [[0, 2, 1, 3]]


def test_grouped_logits_are_the_discriminator_on_each_group():
    # A "discriminator" whose output depends on its batch: x minus the batch mean of x.
    images = keras.Input((1,))
    centred = keras.layers.Lambda(lambda x: x - ops.mean(x, axis=0, keepdims=True))(images)
    discriminator = keras.Model(images, centred)
    values = np.arange(9, dtype=np.float32)[:, None] ** 2
    groups, inverse = discriminator_groups(9, per_class=3, group_size=4)
    got = to_numpy(grouped_logits(discriminator, values, groups, inverse))
    # By hand: each image's output is from the first group it appears in; the images wrapped
    # into the last group (0, 3, 6) only fill it.
    first = {}
    for group in groups:
        for index in group:
            first.setdefault(int(index), values[index, 0] - values[group, 0].mean())
    np.testing.assert_allclose(got[:, 0], [first[i] for i in range(9)], rtol=1e-6)
