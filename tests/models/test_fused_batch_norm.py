"""FusedBatchNorm: Keras BatchNormalization's outputs, gradients and moving statistics."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.tolerances import assert_float32_close
from trapmid_tf.layers import fused_batch_norm
from trapmid_tf.layers.fused_batch_norm import FusedBatchNorm
from trapmid_tf.models import (
    copies, dcgan_generator, facenet64, facenet_eval, ir18, ir152, small_cnn, torch_layers,
    vgg16_bn,
)

MOMENTUM = torch_layers.BN_MOMENTUM
EPSILON = torch_layers.BN_EPSILON


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
    model = keras.Model(inputs, torch_layers.batch_norm("bn")(inputs))
    assert type(model.get_layer("bn")) is FusedBatchNorm
    model.get_layer("bn").set_weights([np.full(2, v, "float32") for v in (2.0, 0.5, 0.3, 4.0)])
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.get_layer("bn")) is FusedBatchNorm
    assert loaded.get_layer("bn").get_config() == model.get_layer("bn").get_config()
    images = np.random.default_rng(6).uniform(size=(2, 3, 3, 2)).astype("float32")
    np.testing.assert_array_equal(loaded(images), model(images))


# A batch of known values, (batch 2, height 2, width 1, channels 2): n = 4 values per channel,
# channel 0 holds 1, 2, 3, 4 and channel 1 holds 0, 2, 4, 10.
KNOWN_BATCH = np.array(
    [[[[1.0, 0.0]], [[2.0, 2.0]]], [[[3.0, 4.0]], [[4.0, 10.0]]]], "float32"
)
KNOWN_MEAN = np.array([2.5, 4.0])
KNOWN_BIASED = np.array([1.25, 14.0])  # (2.25 + 0.25 + 0.25 + 2.25) / 4, (16 + 4 + 0 + 36) / 4
KNOWN_UNBIASED = np.array([5.0 / 3.0, 56.0 / 3.0])  # the sums of squares divided by n - 1 = 3
OLD_MEAN, OLD_VARIANCE = np.array([0.5, -1.0], "float32"), np.array([2.0, 3.0], "float32")


def known_batch_layer(torch_running_variance, x=KNOWN_BATCH):
    """A layer for `x` with unit scale, zero offset and the old moving statistics."""
    layer = FusedBatchNorm(
        momentum=MOMENTUM, epsilon=EPSILON, torch_running_variance=torch_running_variance
    )
    layer.build(x.shape)
    layer.set_weights([np.ones(2, "float32"), np.zeros(2, "float32"), OLD_MEAN, OLD_VARIANCE])
    return layer


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("path", ["fused", "keras, rank 3", "keras, GPU"])
@pytest.mark.parametrize(
    "torch_running_variance, batch_variance",
    [(True, KNOWN_UNBIASED), (False, KNOWN_BIASED)],
)
def test_moving_variance_follows_the_chosen_rule_on_a_batch_of_known_values(
    monkeypatch, torch_running_variance, batch_variance, path, graph
):
    # Keras's path serves rank-3 inputs, and on a GPU the zoo's epsilon (below cuDNN's 1.001e-5).
    x = KNOWN_BATCH.reshape(2, 2, 2) if path == "keras, rank 3" else KNOWN_BATCH
    if path == "keras, GPU":
        monkeypatch.setattr(fused_batch_norm, "_has_gpu", lambda: True)
    layer = known_batch_layer(torch_running_variance, x)
    assert layer._fused_kernel_applies(x, None) == (path == "fused")
    call = tf.function(layer.__call__) if graph else layer.__call__
    y = call(tf.constant(x), training=True)
    # Either rule normalizes the batch with its biased variance.
    expected_y = (x - KNOWN_MEAN) / np.sqrt(KNOWN_BIASED + EPSILON)
    # The sums behind the batch statistics reach 16 (0 + 2 + 4 + 10); 4 terms each, then a
    # subtraction, an rsqrt and a product: under 8 roundings of magnitude 16.
    assert_float32_close(y, expected_y, magnitude=16.0, roundings=8)
    # new = momentum * old + (1 - momentum) * batch: the batch variance (below 19, about 5
    # roundings) enters times 0.1, then a product and a sum of results below 5: under 8
    # roundings of magnitude 5.
    assert_float32_close(
        layer.moving_mean, MOMENTUM * OLD_MEAN + (1 - MOMENTUM) * KNOWN_MEAN,
        magnitude=5.0, roundings=8,
    )
    assert_float32_close(
        layer.moving_variance, MOMENTUM * OLD_VARIANCE + (1 - MOMENTUM) * batch_variance,
        magnitude=5.0, roundings=8,
    )


def test_torch_rule_counts_only_the_unmasked_values_on_keras_path():
    # A third sample of large values, masked out: n is still 4 per channel.
    x = np.concatenate([KNOWN_BATCH, np.full((1, 2, 1, 2), 100.0, "float32")])
    mask = np.array([True, True, False])[:, None, None] * np.ones((3, 2, 1), bool)
    layer = known_batch_layer(True)
    layer(tf.constant(x), training=True, mask=tf.constant(mask))
    # As above; Keras's masked moments divide by n + 1e-7 (a relative 2.5e-8 change).
    assert_float32_close(
        layer.moving_variance, MOMENTUM * OLD_VARIANCE + (1 - MOMENTUM) * KNOWN_UNBIASED,
        magnitude=5.0, roundings=8,
    )


@pytest.mark.parametrize("torch_running_variance", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 1, 2), (1, 2), (1, 1, 2)])
def test_one_value_per_channel_updates_with_variance_zero_under_either_rule(
    shape, torch_running_variance
):
    layer = FusedBatchNorm(
        momentum=MOMENTUM, epsilon=EPSILON, torch_running_variance=torch_running_variance
    )
    layer.build(shape)
    layer.set_weights([np.ones(2, "float32"), np.zeros(2, "float32"), OLD_MEAN, OLD_VARIANCE])
    layer(tf.constant(np.array([3.0, -7.0], "float32").reshape(shape)), training=True)
    # The one value's biased variance is 0: only the decayed old value remains (0.9 rounded
    # to float32, then the product; values below 3).
    assert_float32_close(
        layer.moving_variance, MOMENTUM * OLD_VARIANCE, magnitude=3.0, roundings=2
    )


def test_torch_running_variance_is_in_the_config_and_survives_a_keras_file(tmp_path):
    assert FusedBatchNorm().get_config()["torch_running_variance"] is False
    inputs = keras.Input(KNOWN_BATCH.shape[1:])
    model = keras.Model(inputs, torch_layers.batch_norm("bn", torch_running_variance=True)(inputs))
    config = model.get_layer("bn").get_config()
    assert config["torch_running_variance"] is True
    assert FusedBatchNorm.from_config(config).get_config() == config
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path).get_layer("bn")
    assert loaded.get_config() == config
    loaded.set_weights([np.ones(2, "float32"), np.zeros(2, "float32"), OLD_MEAN, OLD_VARIANCE])
    loaded(KNOWN_BATCH, training=True)
    assert_float32_close(
        loaded.moving_variance, MOMENTUM * OLD_VARIANCE + (1 - MOMENTUM) * KNOWN_UNBIASED,
        magnitude=5.0, roundings=8,
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(torch_running_variance=1), "`torch_running_variance` must be True or False; "
                                         "received 1"),
        (dict(torch_running_variance=True, renorm=True), "needs renorm=False and "
                                                         "synchronized=False; received renorm=True"),
    ],
)
def test_bad_torch_running_variance_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FusedBatchNorm(**kwargs)


@pytest.mark.parametrize(
    "builder, input_shape",
    [
        (small_cnn, (8, 8, 1)),
        (vgg16_bn, (32, 32, 1)),
        (ir18, (32, 32, 1)),
        (facenet64, (16, 16, 1)),
        (ir152, (16, 16, 1)),
        (facenet_eval, (8, 8, 1)),
        (dcgan_generator, (8, 8, 1)),  # 2: the latent size
    ],
)
def test_zoo_builders_pass_the_rule_to_every_batch_norm(builder, input_shape):
    model = builder(input_shape, 2, torch_running_variance=True)
    rules = [
        layer.torch_running_variance
        for layer in model._flatten_layers()
        if isinstance(layer, FusedBatchNorm)
    ]
    assert rules and all(rules)


def test_plain_keras_copy_keeps_inference_and_drops_the_rule():
    inputs = keras.Input(KNOWN_BATCH.shape[1:])
    model = keras.Model(inputs, torch_layers.batch_norm("bn", torch_running_variance=True)(inputs))
    model.get_layer("bn").set_weights(
        [np.full(2, 2.0, "float32"), np.full(2, 0.5, "float32"), OLD_MEAN, OLD_VARIANCE]
    )
    copy = copies.plain_keras_copy(model)
    assert type(copy.get_layer("bn")) is keras.layers.BatchNormalization
    # The same stored statistics, in two float32 graphs of a few operations each on values
    # below 14 (2 * (10 + 1) / sqrt(3) + 0.5).
    assert_float32_close(
        copy(KNOWN_BATCH, training=False), model(KNOWN_BATCH, training=False),
        magnitude=20.0, roundings=8,
    )
