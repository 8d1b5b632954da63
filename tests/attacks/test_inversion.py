"""Tests for the shared inversion loop, and tiny networks for the attack tests.

The builders below make deterministic toy networks on 4x4x1 images that honour the attack
interfaces (generators end in a sigmoid; classifiers end in a Dense named "logits"); the
other attack test modules import them.
"""

import keras
import numpy as np
import pytest
from keras import ops

from trapmid_tf.attacks.inversion import (
    AttackResult,
    identity_labels,
    latent_variable,
    minimize,
)
from tests.numpy_reference import to_numpy
from tests.tolerances import assert_float32_close

IMAGE_SHAPE = (4, 4, 1)
PIXELS = 16
Z_DIM = 4
NUM_CLASSES = 3


def _dense(units, seed, name=None, activation=None, scale=1.0):
    return keras.layers.Dense(
        units,
        activation=activation,
        kernel_initializer=keras.initializers.RandomNormal(stddev=scale, seed=seed),
        bias_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=seed + 1),
        name=name,
    )


def tiny_generator(seed=0):
    """`(batch, 4)` latents -> Dense(16) -> 4x4x1 -> sigmoid; the Dense is named "project"."""
    z = keras.Input((Z_DIM,))
    x = _dense(PIXELS, seed, name="project", scale=0.3)(z)
    images = keras.layers.Activation("sigmoid")(keras.layers.Reshape(IMAGE_SHAPE)(x))
    return keras.Model(z, images)


def tiny_classifier(seed=10, num_classes=NUM_CLASSES):
    """4x4x1 images -> Flatten -> Dense(6, tanh) feature -> Dense "logits"."""
    images = keras.Input(IMAGE_SHAPE)
    features = _dense(6, seed, name="feature", activation="tanh")(keras.layers.Flatten()(images))
    return keras.Model(images, _dense(num_classes, seed + 2, name="logits")(features))


def tiny_head(outputs, seed=20):
    """4x4x1 images -> Flatten -> Dense(outputs): a critic (1) or KED-MI discriminator."""
    images = keras.Input(IMAGE_SHAPE)
    return keras.Model(images, _dense(outputs, seed)(keras.layers.Flatten()(images)))


def tiny_conditional_generator(seed=30):
    """`[z (batch, 4), y (batch,)]` -> Dense(16) of [z, embedding(y)] -> 4x4x1 -> sigmoid."""
    z = keras.Input((Z_DIM,))
    y = keras.Input((), dtype="int32")
    embedding = keras.layers.Embedding(
        NUM_CLASSES, 3, embeddings_initializer=keras.initializers.RandomNormal(seed=seed)
    )(y)
    x = _dense(PIXELS, seed + 1, scale=0.5)(keras.layers.Concatenate()([z, embedding]))
    images = keras.layers.Activation("sigmoid")(keras.layers.Reshape(IMAGE_SHAPE)(x))
    return keras.Model([z, y], images)


def softmax_cross_entropy(logits, labels):
    """Per-row cross-entropy of integer labels under softmax(logits), in numpy."""
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


def recover_latents(generator, images):
    """Inverts the tiny generator: sigmoid(z K + b) = images, so z = (logit - b) pinv(K)."""
    kernel, bias = generator.get_layer("project").get_weights()
    flat = images.reshape(len(images), -1).astype(np.float64)
    return (np.log(flat / (1.0 - flat)) - bias) @ np.linalg.pinv(kernel)


def check_result(result, classes, per_class, latent_shape):
    """Asserts the layout every attack result must have."""
    assert isinstance(result, AttackResult)
    count = len(classes) * per_class
    assert result.images.shape == (count, *IMAGE_SHAPE)
    assert result.images.dtype == np.float32
    assert result.images.min() >= 0.0 and result.images.max() <= 1.0
    assert result.labels.dtype == np.int32
    np.testing.assert_array_equal(result.labels, np.repeat(classes, per_class))
    assert result.latents.shape == (count, *latent_shape)


def test_minimize_matches_gradient_descent_and_traces_once():
    # L = 0.5 * sum(c * (z - a)^2) under SGD(lr): z_k = a + (z_0 - a) * (1 - lr * c)^k.
    start = np.array([[2.0, -1.0, 0.5]], dtype=np.float32)
    centre = np.array([[0.5, 0.25, -1.0]], dtype=np.float32)
    curvature = np.array([[1.0, 0.5, 2.0]], dtype=np.float32)
    z = latent_variable(start, "z")
    traces = []

    def loss():
        traces.append(1)
        return 0.5 * ops.sum(curvature * (z - centre) ** 2)

    final_loss = minimize(loss, [z], keras.optimizers.SGD(0.05), 25, chunk_size=10)
    expected = centre + (start - centre) * (1.0 - 0.05 * curvature) ** 25
    # Each float32 step rounds 4 times (difference, gradient, scaled step, update) at most
    # |z| + |a|, and contracts earlier errors: 25 steps, 100 roundings.
    magnitude = np.abs(start).max() + np.abs(centre).max()
    assert_float32_close(z.numpy(), expected, magnitude, roundings=100)
    previous = centre + (start - centre) * (1.0 - 0.05 * curvature) ** 24
    expected_loss = 0.5 * np.sum(curvature * (previous - centre) ** 2)
    # The loss moves by sum(c |z - a|) per unit error of z, plus its own 3 x 3 roundings.
    slope = np.sum(curvature * np.abs(previous - centre))
    assert_float32_close(final_loss, expected_loss, magnitude=slope * magnitude + expected_loss,
                         roundings=100)
    # Three chunks (10, 10, 5 steps) ran from a single trace of the loss.
    assert len(traces) == 1


def test_minimize_draws_fresh_randomness_every_step():
    # L = sum(z * eps_k) with SGD(1): z_final = z_0 - sum_k eps_k, eps_k the seeded draws.
    z = latent_variable(np.zeros((2, 3), np.float32), "z")
    seed = keras.random.SeedGenerator(7)
    minimize(
        lambda: ops.sum(z * keras.random.normal((2, 3), seed=seed)),
        [z],
        keras.optimizers.SGD(1.0),
        5,
        chunk_size=2,
    )
    replay = keras.random.SeedGenerator(7)
    draws = [to_numpy(keras.random.normal((2, 3), seed=replay)) for _ in range(5)]
    np.testing.assert_allclose(z.numpy(), -np.sum(draws, axis=0), atol=1e-5)
    assert not np.allclose(draws[0], draws[1])


def test_minimize_applies_the_variable_constraint():
    z = latent_variable(np.zeros((1, 2), np.float32), "z", lambda v: ops.clip(v, -0.3, 0.3))
    minimize(lambda: ops.sum(z * np.array([[1.0, -1.0]])), [z], keras.optimizers.SGD(1.0), 3)
    np.testing.assert_allclose(z.numpy(), [[-0.3, 0.3]])


def test_minimize_progress_bar(capsys):
    z = latent_variable(np.ones((1, 1), np.float32), "z")
    minimize(lambda: ops.sum(z**2), [z], keras.optimizers.SGD(0.1), 30, chunk_size=10, verbose=1)
    output = capsys.readouterr().out
    assert "30/30" in output and "loss" in output


def test_minimize_zero_iterations_changes_nothing():
    z = latent_variable(np.ones((1, 2), np.float32), "z")
    assert minimize(lambda: ops.sum(z), [z], keras.optimizers.SGD(1.0), 0) is None
    np.testing.assert_array_equal(z.numpy(), np.ones((1, 2)))


@pytest.mark.parametrize(
    "iterations, chunk_size, name",
    [(-1, 10, "iterations"), (2.5, 10, "iterations"), (10, 0, "chunk_size")],
)
def test_minimize_rejects_bad_counts(iterations, chunk_size, name):
    z = latent_variable(np.ones((1,), np.float32), "z")
    with pytest.raises(ValueError, match=name):
        minimize(
            lambda: ops.sum(z), [z], keras.optimizers.SGD(1.0), iterations, chunk_size=chunk_size
        )


def test_identity_labels_are_identity_major():
    np.testing.assert_array_equal(identity_labels([3, 0], 2, 5), [3, 3, 0, 0])
    assert identity_labels(range(2), 1, 5).dtype == np.int32


@pytest.mark.parametrize("classes", [[], [5], [-1], [1.0]])
def test_identity_labels_reject_bad_classes(classes):
    with pytest.raises(ValueError, match="classes"):
        identity_labels(classes, 2, 5)


def test_identity_labels_reject_bad_per_class():
    with pytest.raises(ValueError, match="per_class"):
        identity_labels([0], 0, 5)
