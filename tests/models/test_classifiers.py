"""Tests for the classifier zoo: shapes, parameter counts, padding, weights, arguments, training."""

import functools

import keras
import numpy as np
import pytest

from trapmid_tf.models import torch_layers
from trapmid_tf.models.features import features_and_logits
from trapmid_tf.models.irse import facenet64, ir152
from trapmid_tf.models.resnet import ir18
from trapmid_tf.models.small_cnn import small_cnn
from trapmid_tf.models.vgg import vgg16_bn

BUILDERS = {
    "small_cnn": small_cnn,
    "vgg16_bn": vgg16_bn,
    "ir18": ir18,
    "facenet64": facenet64,
    "ir152": ir152,
}


@functools.lru_cache(maxsize=None)
def built(builder_name, input_shape, num_classes):
    """Builds each (architecture, shape, classes) once per test session."""
    return BUILDERS[builder_name](input_shape, num_classes)


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# ---- per-layer parameter formulas (PyTorch's nn modules) ----


def conv(k, cin, cout, bias=False):
    return k * k * cin * cout + (cout if bias else 0)


def bn(c):  # weight + bias; running statistics are buffers, not parameters
    return 2 * c


def dense(cin, cout):
    return cin * cout + cout


def vgg16_bn_body(cin):
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    total, prev = 0, cin
    for item in cfg:
        if item != "M":
            total += conv(3, prev, item, bias=True) + bn(item)
            prev = item
    return total


def vgg16_bn_target(cin, classes, flat):
    # BatchNorm1d(flat) with its bias frozen: only its weight is trainable.
    return vgg16_bn_body(cin) + flat + dense(flat, classes)


def resnet18(cin, classes):
    total = conv(7, cin, 64) + bn(64)
    prev = 64
    for stage, width in enumerate([64, 128, 256, 512]):
        for block in range(2):
            total += conv(3, prev, width) + bn(width) + conv(3, width, width) + bn(width)
            if stage > 0 and block == 0:
                total += conv(1, prev, width) + bn(width)
            prev = width
    return total + dense(512, classes)


def ir_classifier(units, cin, classes, spatial):
    total = conv(3, cin, 64) + bn(64) + 64  # stem conv, BN, PReLU
    prev = 64
    for depth, count in zip([64, 128, 256, 512], units):
        for _ in range(count):
            total += bn(prev) + conv(3, prev, depth) + depth + conv(3, depth, depth) + bn(depth)
            if prev != depth:
                total += conv(1, prev, depth) + bn(depth)
            prev = depth
    head = bn(512) + dense(512 * spatial * spatial, 512) + bn(512)
    return total + head + dense(512, classes)


def small_cnn_count(cin, classes, spatial, width, feature_dim, batch_norm):
    total, prev = 0, cin
    for mult in (1, 2, 4):
        c = width * mult
        total += conv(3, prev, c, bias=not batch_norm) + (bn(c) if batch_norm else 0)
        prev = c
    flat = prev * (spatial // 8) ** 2
    feature = flat * feature_dim + (bn(feature_dim) if batch_norm else feature_dim)
    return total + feature + dense(feature_dim, classes)


# ---- shapes ----

SHAPE_CASES = [
    ("small_cnn", (32, 32, 1), 128),
    ("small_cnn", (64, 64, 3), 128),
    ("vgg16_bn", (32, 32, 1), 512),
    ("vgg16_bn", (64, 64, 3), 2048),
    ("ir18", (32, 32, 1), 512),
    ("ir18", (64, 64, 3), 512),
    ("facenet64", (32, 32, 1), 512),
    ("facenet64", (64, 64, 3), 512),
    ("ir152", (64, 64, 3), 512),
]


@pytest.mark.parametrize("builder_name,input_shape,feature_dim", SHAPE_CASES)
def test_logits_and_feature_shapes(builder_name, input_shape, feature_dim):
    model = built(builder_name, input_shape, 7)
    images = np.random.default_rng(0).random((2, *input_shape), dtype=np.float32)
    features, logits = features_and_logits(model)(images, training=False)
    assert tuple(logits.shape) == (2, 7)
    assert tuple(features.shape) == (2, feature_dim)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(logits)))
    assert model.layers[-1].name == "logits"


# ---- parameter counts ----


def test_resnet18_formula_matches_torchvision_total():
    assert resnet18(3, 1000) == 11_689_512


def test_vgg16_bn_body_formula_matches_torchvision_total():
    torchvision_classifier = dense(512 * 7 * 7, 4096) + dense(4096, 4096) + dense(4096, 1000)
    assert vgg16_bn_body(3) + torchvision_classifier == 138_365_992


@pytest.mark.parametrize(
    "builder_name,input_shape,classes,expected",
    [
        ("ir18", (32, 32, 3), 1000, resnet18(3, 1000)),
        ("ir18", (32, 32, 1), 7, resnet18(1, 7)),
        ("vgg16_bn", (64, 64, 3), 7, vgg16_bn_target(3, 7, 2048)),
        ("vgg16_bn", (32, 32, 1), 7, vgg16_bn_target(1, 7, 512)),
        ("facenet64", (64, 64, 3), 7, ir_classifier([3, 4, 14, 3], 3, 7, 4)),
        ("facenet64", (32, 32, 1), 7, ir_classifier([3, 4, 14, 3], 1, 7, 2)),
        ("ir152", (64, 64, 3), 7, ir_classifier([3, 8, 36, 3], 3, 7, 4)),
        ("small_cnn", (32, 32, 1), 7, small_cnn_count(1, 7, 32, 32, 128, True)),
    ],
)
def test_trainable_parameter_count(builder_name, input_shape, classes, expected):
    assert trainable_count(built(builder_name, input_shape, classes)) == expected


@pytest.mark.parametrize("batch_norm", [True, False])
def test_small_cnn_width_feature_dim_and_batch_norm(batch_norm):
    model = small_cnn((24, 24, 2), 3, width=4, feature_dim=10, batch_norm=batch_norm)
    assert trainable_count(model) == small_cnn_count(2, 3, 24, 4, 10, batch_norm)
    bn_layers = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bn_layers) == (4 if batch_norm else 0)


def test_pytorch_defaults_for_batch_norm_and_prelu():
    model = built("facenet64", (32, 32, 1), 7)
    bn_layers = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bn_layers and all(l.momentum == 0.9 and l.epsilon == 1e-5 for l in bn_layers)
    prelus = [l for l in model.layers if isinstance(l, keras.layers.PReLU)]
    assert len(prelus) == 1 + sum([3, 4, 14, 3])
    assert all(np.all(keras.ops.convert_to_numpy(l.alpha) == 0.25) for l in prelus)
    assert prelus[0].alpha.shape == (1, 1, 64)  # one slope per channel


def test_vgg_feature_batch_norm_has_no_offset():
    feature_bn = built("vgg16_bn", (32, 32, 1), 7).get_layer("feature_bn")
    assert not feature_bn.center and feature_bn.beta is None


# ---- PyTorch padding convention (porting note 6.2) ----


@pytest.mark.parametrize(
    "builder_name,expected_strided",
    [
        (
            "ir18",
            {"stem_conv"}
            | {f"layer{s}_block0_{c}" for s in (2, 3, 4) for c in ("conv1", "downsample")},
        ),
        (
            "facenet64",
            {f"stage{s}_unit0_conv2" for s in (1, 2, 3, 4)}
            | {f"stage{s}_unit0_shortcut_conv" for s in (2, 3, 4)},
        ),
    ],
)
def test_strided_convs_pad_symmetrically(builder_name, expected_strided):
    model = built(builder_name, (32, 32, 1), 7)
    strided = [
        l for l in model.layers if isinstance(l, keras.layers.Conv2D) and l.strides == (2, 2)
    ]
    assert {l.name for l in strided} == expected_strided
    for conv in strided:
        assert conv.padding == "valid"
        pad = conv.kernel_size[0] // 2
        if pad:
            pad_layer = model.get_layer(f"{conv.name}_pad")
            assert pad_layer.padding == ((pad, pad), (pad, pad))
            assert conv.input is pad_layer.output



def torch_conv2d_reference(x, kernel, stride, padding):
    """PyTorch Conv2d (cross-correlation, symmetric zero padding) in numpy, NHWC/HWIO."""
    x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    k = kernel.shape[0]
    out_h = (x.shape[1] - k) // stride + 1
    out_w = (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, i * stride : i * stride + k, j * stride : j * stride + k, :]
            out[:, i, j, :] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return out


def torch_max_pool_reference(x, size, stride, padding):
    x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-np.inf)
    out_h = (x.shape[1] - size) // stride + 1
    out_w = (x.shape[2] - size) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, x.shape[-1]))
    for i in range(out_h):
        for j in range(out_w):
            window = x[:, i * stride : i * stride + size, j * stride : j * stride + size, :]
            out[:, i, j, :] = window.max(axis=(1, 2))
    return out


@pytest.mark.parametrize(
    "size,kernel_size,stride,padding",
    [(6, 3, 2, 1), (7, 3, 2, 1), (8, 7, 2, 3), (5, 3, 1, 1), (6, 1, 2, 0)],
)
def test_conv2d_matches_pytorch_symmetric_padding(size, kernel_size, stride, padding):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    kernel = rng.normal(size=(kernel_size, kernel_size, 3, 4)).astype(np.float32)
    inputs = keras.Input((size, size, 3))
    outputs = torch_layers.conv2d(
        inputs,
        4,
        kernel_size,
        strides=stride,
        padding=padding,
        use_bias=False,
        kernel_initializer="zeros",
        name="conv",
    )
    model = keras.Model(inputs, outputs)
    model.get_layer("conv").set_weights([kernel])
    ours = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(ours, torch_conv2d_reference(x, kernel, stride, padding), atol=1e-4)


@pytest.mark.parametrize("size,kernel_size", [(6, 3), (8, 7)])
def test_keras_same_padding_differs_at_stride_2(size, kernel_size):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, size, size, 2)).astype(np.float32)
    kernel = rng.normal(size=(kernel_size, kernel_size, 2, 3)).astype(np.float32)
    same = keras.layers.Conv2D(3, kernel_size, strides=2, padding="same", use_bias=False)
    same.build(x.shape)
    same.set_weights([kernel])
    reference = torch_conv2d_reference(x, kernel, 2, kernel_size // 2)
    same_out = keras.ops.convert_to_numpy(same(x))
    assert same_out.shape == reference.shape
    assert np.max(np.abs(same_out - reference)) > 0.1


@pytest.mark.parametrize("size", [6, 7])
def test_max_pool_matches_pytorch_on_non_negative_input(size):
    x = np.abs(np.random.default_rng(3).normal(size=(2, size, size, 3))).astype(np.float32)
    inputs = keras.Input((size, size, 3))
    model = keras.Model(inputs, torch_layers.max_pool_non_negative(inputs, 3, 2, 1, "pool"))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(x)), torch_max_pool_reference(x, 3, 2, 1), atol=1e-6
    )


# ---- weights ----


@pytest.mark.parametrize("filename", ["model.weights.h5", "model.keras"])
def test_weights_round_trip(tmp_path, filename):
    source = small_cnn((16, 16, 1), 3, width=4, feature_dim=8)
    images = np.random.default_rng(4).random((3, 16, 16, 1), dtype=np.float32)
    rng = np.random.default_rng(5)
    for w in source.weights:  # move every weight (incl. BN statistics) off its initial value
        w.assign(w + 0.1 * rng.normal(size=w.shape).astype(np.float32))
    path = tmp_path / filename
    if filename.endswith(".keras"):
        source.save(path)
    else:
        source.save_weights(path)
    loaded = small_cnn((16, 16, 1), 3, weights=path, width=4, feature_dim=8)
    fresh = small_cnn((16, 16, 1), 3, width=4, feature_dim=8)
    expected = keras.ops.convert_to_numpy(source(images))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images)), expected, atol=1e-6)
    assert not np.allclose(keras.ops.convert_to_numpy(fresh(images)), expected, atol=1e-3)


def test_missing_weights_file_says_nothing_is_downloaded(tmp_path):
    path = tmp_path / "absent.weights.h5"
    with pytest.raises(FileNotFoundError, match="never downloads") as info:
        ir18((32, 32, 3), 5, weights=path)
    assert str(path) in str(info.value)


def test_weights_with_unknown_suffix_rejected(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"`weights`.*\.weights\.h5.*weights\.pth"):
        small_cnn((16, 16, 1), 3, weights=path)


# ---- argument checks ----


@pytest.mark.parametrize(
    "builder_name,input_shape",
    [
        ("vgg16_bn", (32, 32)),
        ("vgg16_bn", (16, 32, 3)),
        ("ir18", (16, 16, 3)),
        ("facenet64", (8, 8, 3)),
        ("ir152", (32, 32, 0)),
        ("small_cnn", (4, 4, 1)),
        ("small_cnn", (32.0, 32, 1)),
        ("small_cnn", 32),
    ],
)
def test_bad_input_shape(builder_name, input_shape):
    with pytest.raises(ValueError, match="input_shape") as info:
        BUILDERS[builder_name](input_shape, 3)
    assert repr(input_shape) in str(info.value)
    assert builder_name in str(info.value)


@pytest.mark.parametrize("builder_name", sorted(BUILDERS))
@pytest.mark.parametrize("num_classes", [0, -2, 2.5, True])
def test_bad_num_classes(builder_name, num_classes):
    message = rf"`num_classes` must be an integer >= 1; received {num_classes!r}"
    with pytest.raises(ValueError, match=message):
        BUILDERS[builder_name]((64, 64, 3), num_classes)


@pytest.mark.parametrize("argument", ["width", "feature_dim"])
def test_small_cnn_bad_width_or_feature_dim(argument):
    with pytest.raises(ValueError, match=rf"`{argument}` must be an integer >= 1; received 0"):
        small_cnn((32, 32, 1), 3, **{argument: 0})


# ---- training ----


def quadrant_task(num_samples, size, seed):
    """Class k = a bright square in quadrant k on a noisy background: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, num_samples).astype(np.int32)
    images = rng.random((num_samples, size, size, 1), dtype=np.float32) * 0.3
    half = size // 2
    for image, label in zip(images, labels):
        row, col = divmod(int(label), 2)
        image[row * half : (row + 1) * half, col * half : (col + 1) * half] += 0.7
    return images, labels


def test_small_cnn_fit_reduces_loss():
    keras.utils.set_random_seed(0)
    images, labels = quadrant_task(64, 16, seed=0)
    model = small_cnn((16, 16, 1), 4, width=8, feature_dim=16)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(images, labels, batch_size=16, epochs=6, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0]
