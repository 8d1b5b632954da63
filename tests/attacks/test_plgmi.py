"""Tests for the PLG-MI reconstruction."""

import keras
import numpy as np
import pytest
from keras import ops

from tests.attacks.test_inversion import (
    Z_DIM,
    check_result,
    tiny_classifier,
    tiny_conditional_generator,
    tiny_generator,
    to_numpy,
)
from trapmid_tf.attacks.plgmi import PLGMIAttack, reconstruction_augment

CLASSES = [2, 1]
PER_CLASS = 2


def random_flip(images, seed_generator):
    """Test augmentation: each image flipped left-right with probability 1/2."""
    flip = keras.random.uniform((ops.shape(images)[0], 1, 1, 1), seed=seed_generator) < 0.5
    return ops.where(flip, ops.flip(images, axis=2), images)


def numpy_margin(logits, labels):
    """max_{j != y} logit_j - logit_y per row."""
    rows = np.arange(len(labels))
    others = logits.copy()
    others[rows, labels] = -np.inf
    return others.max(axis=1) - logits[rows, labels]


@pytest.fixture(scope="module")
def networks():
    return tiny_conditional_generator(), tiny_classifier()


def invert(networks, iterations, seed=0, augment=random_flip):
    generator, target = networks
    attack = PLGMIAttack(generator, iterations=iterations, augment=augment, chunk_size=20)
    return attack.invert(target, CLASSES, per_class=PER_CLASS, seed=seed, verbose=0)


def expected_objective(networks, latents, labels):
    """Expected loss over the flips: each view is x or flip(x) with probability 1/2, so the
    two views' mean margins add up to mean(margin(x) + margin(flip(x)))."""
    generator, target = networks
    images = to_numpy(generator([latents, labels]))
    total = sum(
        numpy_margin(to_numpy(target(view)), labels) for view in (images, images[:, :, ::-1])
    )
    return total.mean()


def test_inversion_lowers_the_expected_objective(networks):
    before, after = invert(networks, 0), invert(networks, 40)
    check_result(after, CLASSES, PER_CLASS, (Z_DIM,))
    assert expected_objective(networks, after.latents, after.labels) < expected_objective(
        networks, before.latents, after.labels
    ) - 0.5
    np.testing.assert_allclose(
        after.images, to_numpy(networks[0]([after.latents, after.labels])), atol=1e-6
    )


def test_same_seed_repeats_and_other_seeds_differ(networks):
    first, second = invert(networks, 10, seed=4), invert(networks, 10, seed=4)
    np.testing.assert_array_equal(first.latents, second.latents)
    np.testing.assert_array_equal(first.images, second.images)
    assert not np.allclose(first.latents, invert(networks, 10, seed=5).latents)


def test_default_augmentation_is_the_references_and_moves_the_latents(networks):
    assert PLGMIAttack(networks[0], augment=None).augment is reconstruction_augment
    start, result = invert(networks, 0, augment=None), invert(networks, 3, augment=None)
    check_result(result, CLASSES, PER_CLASS, (Z_DIM,))
    assert not np.allclose(to_numpy(result.latents), to_numpy(start.latents))


def test_rejects_an_unconditional_generator():
    with pytest.raises(ValueError, match="conditional"):
        PLGMIAttack(tiny_generator())


def test_rejects_a_non_callable_augment(networks):
    with pytest.raises(ValueError, match="augment"):
        PLGMIAttack(networks[0], augment="kornia")


def test_rejects_classes_the_generator_does_not_know():
    generator = tiny_conditional_generator()
    generator.num_classes = 2  # as `trapmid_tf.models.cgan.ResNetGenerator` exposes it
    with pytest.raises(ValueError, match=r"classes.*\[0, 2\)"):
        PLGMIAttack(generator, iterations=1).invert(tiny_classifier(), [2], verbose=0)
