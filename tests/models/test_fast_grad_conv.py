"""FastGradConv2D: the same outputs and gradients as keras.layers.Conv2D, saving, replicas."""

import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from trapmid_tf.layers import fast_grad_conv
from trapmid_tf.layers.fast_grad_conv import FastGradConv2D
from trapmid_tf.layers.fused_batch_norm import FusedBatchNorm
from trapmid_tf.models import copies, torch_layers

# (height, width, in channels, out channels, kernel, strides, padding): stride 1 and 2, odd
# and even kernels, 'same' and 'valid', sizes that leave input rows unused by a strided conv,
# output maps of at most 4 positions (the kernel gradient as a patch product) and strided convs
# of 16 input channels (TensorFlow's input gradient under oneDNN).
CASES = [
    (7, 7, 3, 4, 3, 1, "same"),
    (5, 6, 2, 3, 4, 1, "same"),
    (9, 8, 2, 3, 3, 2, "same"),
    (8, 9, 2, 3, 3, 2, "valid"),
    (10, 10, 3, 2, 7, 2, "valid"),
    (6, 6, 2, 2, 1, 2, "valid"),
    (8, 8, 3, 2, 2, 3, "valid"),
    (11, 7, 2, 2, (3, 2), (3, 2), "same"),
    (2, 2, 3, 4, 3, 1, "same"),
    (4, 3, 3, 2, (3, 2), (2, 2), "same"),
    (9, 8, 16, 3, 3, 2, "same"),
    (5, 5, 16, 3, 3, 2, "valid"),
]


def twin_layers(rng, input_shape, filters, kernel_size, strides, padding):
    """A keras Conv2D and a FastGradConv2D of the same config and random weights."""
    reference = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding)
    reference.build(input_shape)
    reference.set_weights(
        [rng.normal(size=w.shape).astype("float32") for w in reference.get_weights()]
    )
    fast = FastGradConv2D.from_config(reference.get_config())
    fast.build(input_shape)
    fast.set_weights(reference.get_weights())
    return reference, fast


def gradients(layer, x):
    """Output, first-order gradients (input, kernel, bias) and the gradients of ||dL/dx||²."""
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(tf.sin(y))  # a non-constant upstream gradient
        first = inner.gradient(loss, [x, layer.kernel, layer.bias])
        penalty = tf.reduce_sum(first[0] ** 2)  # as a WGAN-GP gradient penalty
    second = outer.gradient(penalty, [x, layer.kernel])
    return [y, *first, *second]


@pytest.mark.parametrize("height, width, cin, cout, kernel_size, strides, padding", CASES)
def test_outputs_and_gradients_equal_keras_conv2d(
    height, width, cin, cout, kernel_size, strides, padding
):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(2, height, width, cin)).astype("float32"))
    reference, fast = twin_layers(rng, x.shape, cout, kernel_size, strides, padding)
    expected, actual = gradients(reference, x), gradients(fast, x)
    names = ["output", "d/dx", "d/dkernel", "d/dbias", "d2/dx", "d2/dkernel"]
    for name, e, a in zip(names, expected, actual):
        e, a = np.asarray(e), np.asarray(a)
        assert e.shape == a.shape, name
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4 * np.abs(e).max(), err_msg=name)


def test_input_gradient_matches_tensorflow_backprop_input_on_a_wide_small_map():
    # The case the layer exists for: ResNet's last stage, 2x2 maps with many channels.
    rng = np.random.default_rng(1)
    kernel = tf.constant(rng.normal(size=(3, 3, 64, 32)).astype("float32"))
    upstream = tf.constant(rng.normal(size=(4, 2, 2, 32)).astype("float32"))
    shape = tf.constant([4, 2, 2, 64])
    expected = tf.raw_ops.Conv2DBackpropInput(
        input_sizes=shape, filter=kernel, out_backprop=upstream, strides=[1, 1, 1, 1],
        padding="SAME",
    )
    actual = fast_grad_conv.conv2d_input_gradient(upstream, kernel, shape, (1, 1), "SAME")
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_kernel_gradient_matches_tensorflow_backprop_filter_on_wide_small_maps():
    # 2x2 and 1x1 output maps with many channels take the patch product; a 3x3 map does not.
    rng = np.random.default_rng(3)
    for size, strides, padding in ((2, (1, 1), "SAME"), (3, (2, 2), "VALID"), (3, (1, 1), "SAME")):
        inputs = tf.constant(rng.normal(size=(4, size, size, 64)).astype("float32"))
        kernel_shape = [3, 3, 64, 32]
        outputs = tf.nn.conv2d(inputs, tf.zeros(kernel_shape), [1, *strides, 1], padding)
        upstream = tf.constant(rng.normal(size=outputs.shape).astype("float32"))
        expected = tf.raw_ops.Conv2DBackpropFilter(
            input=inputs, filter_sizes=kernel_shape, out_backprop=upstream,
            strides=[1, *strides, 1], padding=padding,
        )
        actual = fast_grad_conv.conv2d_kernel_gradient(
            inputs, upstream, kernel_shape, strides, padding
        )
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_zoo_convs_use_it_and_a_model_round_trips_through_keras_file(tmp_path):
    inputs = keras.Input((9, 9, 2))
    x = torch_layers.conv2d(inputs, 3, 3, strides=2, padding=1, use_bias=True,
                      kernel_initializer="glorot_uniform", name="strided")
    x = torch_layers.conv2d(x, 2, 3, padding=1, use_bias=False, kernel_initializer="glorot_uniform",
                      name="same")
    model = keras.Model(inputs, x)
    assert all(isinstance(model.get_layer(n), FastGradConv2D) for n in ("strided", "same"))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("strided"), FastGradConv2D)
    assert loaded.get_layer("strided").get_config() == model.get_layer("strided").get_config()
    images = np.random.default_rng(2).uniform(size=(2, 9, 9, 2)).astype("float32")
    np.testing.assert_array_equal(loaded(images), model(images))


def test_plain_keras_copy_has_standard_convs_and_the_same_predictions(tmp_path):
    inner_inputs = keras.Input((9, 9, 2))
    inner = keras.Model(inner_inputs, torch_layers.conv2d(
        inner_inputs, 3, 3, strides=2, padding=1, use_bias=True,
        kernel_initializer="glorot_uniform", name="nested_conv"), name="inner")
    inputs = keras.Input((9, 9, 2))
    x = torch_layers.batch_norm("bn")(inner(inputs))
    x = torch_layers.conv2d(x, 2, 3, padding=1, use_bias=False, kernel_initializer="glorot_uniform",
                      name="top_conv")
    model = keras.Model(inputs, x)
    model.get_layer("bn").set_weights([np.full(3, v, "float32") for v in (2.0, 0.5, 0.3, 4.0)])

    copy = copies.plain_keras_copy(model)
    kinds = {type(layer) for layer in copy._flatten_layers()}
    assert keras.layers.Conv2D in kinds and FastGradConv2D not in kinds
    assert keras.layers.BatchNormalization in kinds and FusedBatchNorm not in kinds
    path = tmp_path / "plain.keras"
    copy.save(path)
    with zipfile.ZipFile(path) as archive:
        assert "trapmid_tf" not in archive.read("config.json").decode()
    images = np.random.default_rng(4).uniform(size=(2, 9, 9, 2)).astype("float32")
    expected = np.asarray(model(images))
    # Keras's batch norm and the fused kernel round differently in the last bits.
    np.testing.assert_allclose(
        keras.saving.load_model(path)(images), expected, rtol=1e-5,
        atol=1e-6 * np.abs(expected).max(),
    )
    plain = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(1, 3)])
    assert copies.plain_keras_copy(plain) is plain


def test_fast_gradient_copy_of_a_loaded_plain_model_keeps_outputs_and_input_gradients(tmp_path):
    rng = np.random.default_rng(5)
    inputs = keras.Input((10, 10, 2))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="strided")(inputs)
    x = keras.layers.Conv2D(3, 3, dilation_rate=2, name="dilated")(x)  # not supported: kept
    x = keras.layers.BatchNormalization(name="bn")(x)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    model.get_layer("bn").moving_variance.assign(rng.uniform(0.5, 2.0, size=3))
    path = tmp_path / "plain.keras"
    model.save(path)

    loaded = copies.load_classifier(path)
    assert type(loaded.get_layer("strided")) is FastGradConv2D
    assert type(loaded.get_layer("dilated")) is keras.layers.Conv2D
    assert type(loaded.get_layer("bn")) is FusedBatchNorm
    images = tf.constant(rng.uniform(size=(3, 10, 10, 2)).astype("float32"))
    np.testing.assert_allclose(loaded(images), model(images), rtol=1e-6, atol=1e-6)
    gradients = []
    for network in (model, loaded):
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = tf.reduce_sum(network(images) ** 2)
        gradients.append(tape.gradient(loss, images).numpy())
    np.testing.assert_allclose(gradients[1], gradients[0], rtol=1e-4, atol=1e-5)
    assert copies.fast_gradient_copy(loaded) is loaded  # nothing left to replace
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        copies.load_classifier(tmp_path / "missing.keras")


def test_load_classifier_reads_a_file_compiled_with_an_unregistered_optimizer(tmp_path):
    # A target saved while compiled with TorchSGD, loaded by a process that never imported
    # trapmid_tf.optimizers (a reused pipeline stage), failed: Keras could not locate the
    # optimizer class. The same with an optimizer class removed from the registry.
    @keras.saving.register_keras_serializable(package="test_only")
    class UnregisteredSGD(keras.optimizers.SGD):
        pass

    inputs = keras.Input((4, 4, 1))
    outputs = keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(
        keras.layers.Conv2D(2, 3, name="conv")(inputs)))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=UnregisteredSGD(), loss="mse")
    path = tmp_path / "compiled.keras"
    model.save(path)
    del keras.saving.get_custom_objects()["test_only>UnregisteredSGD"]

    loaded = copies.load_classifier(path)
    images = np.random.default_rng(0).uniform(size=(2, 4, 4, 1)).astype("float32")
    # Same weights, same layers up to the fast convolution: equal up to float32 rounding of a
    # 9-term convolution and a 8-term dense sum of values below 1 (weights of Glorot scale).
    np.testing.assert_allclose(loaded(images), model(images), rtol=1e-5, atol=1e-5)
    assert type(loaded.get_layer("conv")) is FastGradConv2D


def test_gradients_under_mirrored_strategy_equal_one_device(two_replicas):
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(4, 6, 6, 2)).astype("float32")
    reference, _ = twin_layers(rng, (None, 6, 6, 2), 3, 3, 2, "valid")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.sin(reference(x)))
    expected = tape.gradient(loss, reference.kernel)
    with two_replicas.scope():
        fast = FastGradConv2D.from_config(reference.get_config())
        fast.build((None, 6, 6, 2))
        fast.set_weights(reference.get_weights())

    @tf.function
    def replica_gradient(images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.sin(fast(images)))
        return tape.gradient(loss, fast.kernel)

    shards = two_replicas.experimental_distribute_values_from_function(
        lambda context: x[2 * context.replica_id_in_sync_group:][:2]
    )
    per_replica = two_replicas.run(replica_gradient, args=(shards,))
    total = two_replicas.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
    np.testing.assert_allclose(total, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs", [dict(dilation_rate=2), dict(groups=2), dict(data_format="channels_first")]
)
def test_unsupported_configurations_are_rejected(kwargs):
    with pytest.raises(ValueError, match="FastGradConv2D supports"):
        FastGradConv2D(4, 3, **kwargs)
