"""Tests for the GMI inversion."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from tests.attacks.test_inversion import (
    Z_DIM,
    check_result,
    softmax_cross_entropy,
    tiny_classifier,
    tiny_generator,
    tiny_head,
    to_numpy,
)
from trapmid_tf.attacks.gmi import GMIAttack, clip_latents, gmi_optimizer
from trapmid_tf.attacks.inversion import cross_entropy_identity_loss, latent_variable, minimize

CLASSES = [2, 0]
PER_CLASS = 2


@pytest.fixture(scope="module")
def networks():
    return tiny_generator(), tiny_head(1), tiny_classifier()


def gmi_objective(networks, z, labels):
    """The reference objective `-mean D(G(z)) + 100 * mean CE(T(G(z)), y)`, in numpy."""
    generator, critic, target = networks
    images = generator(z)
    realness = to_numpy(critic(images))[:, 0]
    cross_entropy = softmax_cross_entropy(to_numpy(target(images)), labels)
    return -realness.mean() + 100.0 * cross_entropy.mean()


def invert(networks, iterations, seed=3, **kwargs):
    generator, critic, target = networks
    attack = GMIAttack(generator, critic, iterations=iterations, chunk_size=20, **kwargs)
    return attack.invert(target, CLASSES, per_class=PER_CLASS, seed=seed, verbose=0)


def test_update_matches_the_reference_rule_on_a_quadratic():
    # L = 0.5 * sum(c * (z - a)^2), gradient c * (z - a). Reference rule, by hand:
    # v' = m v - lr g; z <- clip(z - m v + (1 + m) v', -1, 1).
    start = np.array([[0.9, -0.2, 0.1]], np.float32)
    centre = np.array([[3.0, -0.5, 0.0]], np.float32)
    curvature = np.array([[1.0, 2.0, 4.0]], np.float32)
    learning_rate, momentum = 0.3, 0.9
    z, velocity = start.astype(np.float64), np.zeros_like(start, np.float64)
    for _ in range(2):
        new_velocity = momentum * velocity - learning_rate * curvature * (z - centre)
        z = np.clip(z - momentum * velocity + (1.0 + momentum) * new_velocity, -1.0, 1.0)
        velocity = new_velocity
    assert z[0, 0] == 1.0  # the clip was active

    variable = latent_variable(start, "z", clip_latents)
    minimize(
        lambda: 0.5 * ops.sum(curvature * (variable - centre) ** 2),
        [variable],
        gmi_optimizer(learning_rate, momentum),
        2,
    )
    np.testing.assert_allclose(variable.numpy(), z, atol=1e-6)


def test_inversion_lowers_the_objective(networks):
    before = invert(networks, iterations=0)
    after = invert(networks, iterations=40)
    check_result(after, CLASSES, PER_CLASS, (Z_DIM,))
    labels = np.repeat(CLASSES, PER_CLASS)
    assert gmi_objective(networks, after.latents, labels) < gmi_objective(
        networks, before.latents, labels
    ) - 1.0
    assert np.abs(after.latents).max() <= 1.0
    np.testing.assert_allclose(after.images, to_numpy(networks[0](after.latents)), atol=1e-6)


def test_same_seed_repeats_and_other_seeds_differ(networks):
    first, second = invert(networks, 10, seed=5), invert(networks, 10, seed=5)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.latents, second.latents)
    other = invert(networks, 10, seed=6)
    assert not np.allclose(first.latents, other.latents)


def test_restarts_differ_and_the_loop_is_traced_once(networks):
    calls = []

    def counting_identity_loss(target):
        cross_entropy = cross_entropy_identity_loss(target)

        def loss(images, labels):
            calls.append(1)
            return cross_entropy(images, labels)

        return loss

    result = invert(networks, 50, identity_loss=counting_identity_loss)
    assert len(calls) == 1  # three chunks of 20, 20, 10 steps from one trace
    assert not np.allclose(result.latents[0], result.latents[1])


def test_rejects_a_target_of_another_image_shape(networks):
    generator, critic, _ = networks
    inputs = keras.Input((8, 8, 1))
    other = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match=r"target.*\(4, 4, 1\)"):
        GMIAttack(generator, critic, iterations=1).invert(other, [0], verbose=0)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"iterations": -1}, "iterations"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"momentum": 1.0}, "momentum"),
        ({"identity_weight": -1.0}, "identity_weight"),
    ],
)
def test_rejects_bad_hyperparameters(networks, kwargs, name):
    generator, critic, _ = networks
    with pytest.raises(ValueError, match=name):
        GMIAttack(generator, critic, **kwargs)


def test_rejects_a_generator_without_flat_latents(networks):
    _, critic, target = networks
    with pytest.raises(ValueError, match="generator"):
        GMIAttack(target, critic)



def test_xla_compiled_loop_gives_the_same_result(networks):
    plain, compiled = invert(networks, 20), invert(networks, 20, jit_compile=True)
    np.testing.assert_allclose(compiled.latents, plain.latents, atol=1e-5)
    np.testing.assert_allclose(compiled.images, plain.images, atol=1e-5)


def test_each_latent_steps_as_in_its_reference_batch_of_60(networks):
    """130 identities: the reference runs batches of 60, 60 and 10, each on its batch mean."""
    generator, critic, target = networks
    classes = [i % 3 for i in range(130)]
    start = GMIAttack(generator, critic, iterations=0).invert(target, classes, 1, 4, 0).latents
    stepped = GMIAttack(generator, critic, iterations=1).invert(target, classes, 1, 4, 0).latents
    # The reference's first step from v = 0: z <- clip(z + 1.9 * (-0.02 * grad)), where grad
    # is that of its own batch's mean objective; written here batch by batch with a tape.
    expected = []
    for batch in (slice(0, 60), slice(60, 120), slice(120, 130)):
        z = tf.Variable(start[batch])
        labels = np.asarray(classes[batch])
        with tf.GradientTape() as tape:
            images = generator(z)
            realness = critic(images)[:, 0]
            cross_entropy = keras.losses.sparse_categorical_crossentropy(
                labels, target(images), from_logits=True
            )
            loss = -tf.reduce_mean(realness) + 100.0 * tf.reduce_mean(cross_entropy)
        expected.append(np.clip(start[batch] - 1.9 * 0.02 * tape.gradient(loss, z), -1, 1))
    # float32 gradients of the same sums in another order: a few ulps of the step.
    np.testing.assert_allclose(stepped, np.concatenate(expected), rtol=0, atol=1e-6)
    # The steps are long enough that dividing by all 130 identities (steps 60/130 as long)
    # would fail the comparison above by far.
    assert np.abs(stepped[:60] - start[:60]).max() > 1e-4
