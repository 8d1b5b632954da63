"""FusedBatchNorm: Keras BatchNormalization's outputs, gradients and moving statistics."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trapmid_tf.models import common, ir18
from trapmid_tf.models.fused_batch_norm import FusedBatchNorm

MOMENTUM = common.BN_MOMENTUM
EPSILON = common.BN_EPSILON


def twin_layers(rng, input_shape, **kwargs):
    """A keras BatchNormalization and a FusedBatchNorm of the same config and random weights."""
    reference = keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPSILON, **kwargs)
    reference.build(input_shape)
    weights = [rng.normal(size=w.shape).astype("float32") for w in reference.get_weights()]
    weights[-1] = np.abs(weights[-1]) + 0.5  # the moving variance is positive
    reference.set_weights(weights)
    fused = FusedBatchNorm.from_config(reference.get_config())
    fused.build(input_shape)
    fused.set_weights(weights)
    return reference, fused


def outputs_and_gradients(layer, x, training):
    """Output, then the gradients of a non-constant loss: input, then trainable weights."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(tf.sin(3.0 * y) * tf.range(1.0, y.shape[-1] + 1.0))
    return [y, *tape.gradient(loss, [x, *layer.trainable_variables])]


def assert_close(actual, expected, name):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, name
    # float32 sums over up to a few hundred values in different orders.
    np.testing.assert_allclose(
        actual, expected, rtol=1e-4, atol=1e-5 * max(np.abs(expected).max(), 1.0), err_msg=name
    )


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(
    "shape, kwargs",
    [
        ((4, 5, 6, 3), {}),
        ((7, 4), {"center": False}),
        ((3, 2, 2, 5), {"scale": False}),
    ],
)
def test_outputs_gradients_and_moving_statistics_equal_keras(shape, kwargs, training):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, size=shape).astype("float32"))
    reference, fused = twin_layers(rng, shape, **kwargs)
    expected = outputs_and_gradients(reference, x, training)
    actual = outputs_and_gradients(fused, x, training)
    names = ["output", "d/dx", *[f"d/d{v.name}" for v in fused.trainable_variables]]
    assert len(actual) == len(names)
    for name, a, e in zip(names, actual, expected):
        assert_close(a, e, name)
    for a, e in zip(fused.non_trainable_variables, reference.non_trainable_variables):
        assert_close(a, e, a.name)


def test_training_call_normalizes_with_the_batch_and_updates_moving_statistics_as_by_hand():
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 2.0, size=(3, 4, 4, 2)).astype("float32")
    layer = FusedBatchNorm(momentum=MOMENTUM, epsilon=EPSILON)
    layer.build(x.shape)
    gamma, beta = np.array([2.0, 0.5], "float32"), np.array([0.1, -1.0], "float32")
    layer.set_weights([gamma, beta, np.zeros(2, "float32"), np.ones(2, "float32")])
    y = layer(x, training=True)
    mean, variance = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))  # biased, as Keras
    assert_close(y, gamma * (x - mean) / np.sqrt(variance + EPSILON) + beta, "output")
    assert_close(layer.moving_mean, 0.1 * mean, "moving mean")
    assert_close(layer.moving_variance, 0.9 + 0.1 * variance, "moving variance")


def test_a_frozen_layer_normalizes_with_its_moving_statistics_and_keeps_them():
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(4, 3, 3, 2)).astype("float32"))
    reference, fused = twin_layers(rng, x.shape)
    fused.trainable = False
    before = [np.asarray(v) for v in fused.non_trainable_variables]
    assert_close(fused(x, training=True), reference(x, training=False), "output")
    for a, e in zip(fused.non_trainable_variables, before):
        np.testing.assert_array_equal(a, e)


def test_second_order_gradients_equal_keras():
    # As a WGAN-GP gradient penalty differentiates through a critic's normalization.
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(4, 3, 3, 2)).astype("float32"))
    results = []
    for layer in twin_layers(rng, x.shape):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                loss = tf.reduce_sum(tf.sin(layer(x, training=True)))
            penalty = tf.reduce_sum(inner.gradient(loss, x) ** 2)
        results.append(outer.gradient(penalty, [x, layer.gamma]))
    for name, a, e in zip(["d2/dx", "d2/dgamma"], results[1], results[0]):
        assert_close(a, e, name)


def test_calls_the_fused_kernel_cannot_serve_take_keras_path():
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(2, 5, 3)).astype("float32"))  # rank 3
    reference, fused = twin_layers(rng, x.shape)
    assert_close(fused(x, training=True), reference(x, training=True), "rank 3")
    channels_first = FusedBatchNorm(axis=1)
    channels_first.build((2, 3, 4, 4))
    images = tf.constant(rng.normal(size=(2, 3, 4, 4)).astype("float32"))
    assert not channels_first._fused_kernel_applies(images, None)
    assert_close(
        channels_first(images, training=True),
        (images - tf.reduce_mean(images, (0, 2, 3), keepdims=True))
        / tf.sqrt(tf.math.reduce_variance(images, (0, 2, 3), keepdims=True) + 1e-3),
        "channels first",
    )


def test_mixed_bfloat16_computes_in_float32_and_returns_bfloat16():
    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(size=(4, 3, 3, 2)).astype("float32"))
    reference, fused = twin_layers(rng, x.shape, dtype="mixed_bfloat16")
    expected = reference(tf.cast(x, "bfloat16"), training=True)
    actual = fused(tf.cast(x, "bfloat16"), training=True)
    assert actual.dtype == tf.bfloat16
    # The same float32 values up to their last bits, then one rounding to bfloat16's 8 bits.
    np.testing.assert_allclose(
        tf.cast(actual, "float32"), tf.cast(expected, "float32"), rtol=2.0**-8, atol=1e-6
    )


def test_zoo_models_use_it_and_round_trip_through_a_keras_file(tmp_path):
    assert any(type(layer) is FusedBatchNorm for layer in ir18((32, 32, 3), 2).layers)
    inputs = keras.Input((3, 3, 2))
    model = keras.Model(inputs, common.batch_norm("bn")(inputs))
    assert type(model.get_layer("bn")) is FusedBatchNorm
    model.get_layer("bn").set_weights([np.full(2, v, "float32") for v in (2.0, 0.5, 0.3, 4.0)])
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.get_layer("bn")) is FusedBatchNorm
    assert loaded.get_layer("bn").get_config() == model.get_layer("bn").get_config()
    images = np.random.default_rng(6).uniform(size=(2, 3, 3, 2)).astype("float32")
    np.testing.assert_array_equal(loaded(images), model(images))
