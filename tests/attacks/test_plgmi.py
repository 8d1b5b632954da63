"""Tests for the PLG-MI reconstruction."""

import itertools
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
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
from trapmid_tf.attacks.suite import PriorNetworks
from trapmid_tf.experiments.attacks import RECONSTRUCTIONS_FILE, run_attack
from trapmid_tf.files import STAGE_FILE

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


def reference_max_margin_loss(logits, labels):
    """plgmi/losses.py `max_margin_loss` of the reference, in TensorFlow: the best other class
    is the top of an argsort unless that is the label, then the second."""
    top_two = tf.argsort(logits, axis=1)[:, -2:]
    other = tf.where(top_two[:, -1] == labels, top_two[:, -2], top_two[:, -1])
    real = tf.gather(logits, labels, batch_dims=1)
    return -tf.reduce_mean(real) + tf.reduce_mean(tf.gather(logits, other, batch_dims=1))


def test_loss_and_gradient_are_the_reference_runs_summed(networks):
    """3 identities x 2 restarts in reference batches of 2 identities: the reference runs four
    problems (identities {2, 1} and {0}, once per restart), each on the sum of its two views'
    batch-mean margins. Our one batch's loss is the sum of the four, and each z receives its
    own run's gradient (Adam's epsilon makes the step depend on that scale)."""
    generator, target = networks
    # The first view is the image, the second its mirror image.
    views = itertools.cycle([lambda images: images, lambda images: ops.flip(images, axis=2)])
    attack = PLGMIAttack(
        generator, augment=lambda images, _: next(views)(images), identities_per_batch=2
    )
    labels = np.repeat(np.array([2, 1, 0], np.int32), PER_CLASS)
    problem = attack.build_problem(
        target, ops.convert_to_tensor(labels), 3, keras.random.SeedGenerator(0)
    )
    (z,) = problem.variables
    with tf.GradientTape() as tape:
        loss = problem.loss()
    gradient = to_numpy(tape.gradient(loss, z))

    start = to_numpy(z).reshape(3, PER_CLASS, Z_DIM)  # identity-major
    runs = [(batch, restart) for batch in (slice(0, 2), slice(2, 3)) for restart in range(2)]
    run_latents = [tf.Variable(start[batch, restart]) for batch, restart in runs]
    with tf.GradientTape() as tape:
        run_losses = []
        for (batch, _), latents in zip(runs, run_latents):
            identities = tf.constant(labels[::PER_CLASS][batch])
            images = generator([latents, identities])
            run_losses.append(sum(
                reference_max_margin_loss(target(view), identities)
                for view in (images, tf.reverse(images, axis=[2]))
            ))
        total = tf.add_n(run_losses)
    expected_gradient = np.zeros_like(start)
    for (batch, restart), run_gradient in zip(runs, tape.gradient(total, run_latents)):
        expected_gradient[batch, restart] = to_numpy(run_gradient)

    # float32: the same 12 margins (each |margin| < 4 here, the total ~14) summed in another
    # order and with other weights: at most 12 roundings of a partial sum below 16, i.e.
    # 12 * 16 * 1.2e-7 ~ 2.3e-5. The gradient entries (at most 3 here) come from the same
    # products in another order: a few dozen ulps of 3, 1e-5.
    assert max(abs(float(value)) for value in run_losses) < 8.0
    assert float(loss) == pytest.approx(float(total), abs=2.3e-5)
    np.testing.assert_allclose(
        gradient, expected_gradient.reshape(gradient.shape), rtol=0, atol=1e-5
    )
    # The mean over all six images (the scale before) weights each image by 1/6 instead of
    # 1/2 or 1: its gradients would miss these by far more than the tolerance.
    assert np.abs(expected_gradient).max() > 1.0


def test_stage_names_the_loss_scale_and_one_made_before_is_not_reused(networks, tmp_path):
    generator, target = networks
    settings = dict(num_classes=3, per_class=1, seed=0, iterations=None, plgmi_iterations=1,
                    mi_face_iterations=None, kedmi_batch_size=32)

    def attack():
        return run_attack("plgmi", target, {"plgmi": PriorNetworks(generator, None)},
                          settings, str(tmp_path))

    made = attack()
    stage_path = tmp_path / STAGE_FILE
    stage = json.loads(stage_path.read_text())
    assert stage == dict(settings, plgmi_loss_scale="reference_batches")
    # A stage made before the loss followed the reference's batches has no such entry.
    del stage["plgmi_loss_scale"]
    stage_path.write_text(json.dumps(stage))
    np.savez(tmp_path / RECONSTRUCTIONS_FILE, iterations=1, images=np.zeros(1),
             labels=np.zeros(1), latents=np.zeros(1), initial_images=np.zeros(1))
    remade = attack()
    np.testing.assert_array_equal(remade["images"], made["images"])
    assert json.loads(stage_path.read_text())["plgmi_loss_scale"] == "reference_batches"
