"""Tests of the face evaluation classifier `facenet_eval` and its `BilinearResize`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trapmid_tf.models import irse
from trapmid_tf.models.features import features_and_logits
from tests.models.test_classifiers import ir_classifier, quadrant_task, trainable_count
from tests.numpy_reference import to_numpy
from tests.tolerances import assert_float32_close


@pytest.fixture(scope="module")
def full_size():
    return irse.facenet_eval((64, 64, 3), 7)


@pytest.fixture
def narrow(monkeypatch):
    """facenet_eval with the IR-50 layout at small widths (fast to run and fit).

    Not narrower: with oneDNN on, TF 2.21 crashes (free(): invalid size / segfault) in the
    training step of this IR net when its stem has 4 or 8 channels, plain Conv2D included.
    """
    monkeypatch.setattr(irse, "STAGE_DEPTHS", (16, 16, 32, 32))
    monkeypatch.setattr(irse, "FEATURE_DIM", 8)
    monkeypatch.setattr(irse, "IR50_UNITS", (1, 1, 1, 1))
    return irse.facenet_eval


def test_shapes_and_body_at_112(full_size):
    images = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)
    features, logits = features_and_logits(full_size)(images, training=False)
    assert tuple(features.shape) == (2, 512) and tuple(logits.shape) == (2, 7)
    assert tuple(full_size.get_layer("resize").output.shape) == (None, 112, 112, 3)
    assert tuple(full_size.get_layer("head_flatten").input.shape) == (None, 7, 7, 512)
    assert full_size.layers[-1].name == "logits"


def test_parameter_count_is_ir50_with_the_7x7_head(full_size):
    # Reference FaceNet: IR-50 body, BN2d(512), Linear(512*7*7, 512), BN1d(512), Linear(512, C).
    assert trainable_count(full_size) == ir_classifier([3, 4, 14, 3], 3, 7, 7)


def test_head_dense_is_xavier_with_zero_bias(full_size):
    dense = full_size.get_layer("head_dense")
    assert isinstance(dense.kernel_initializer, keras.initializers.VarianceScaling)
    assert dense.kernel_initializer.mode == "fan_avg"
    assert not np.any(to_numpy(dense.bias))


def test_any_input_size_is_resized(narrow):
    model = narrow((32, 48, 1), 3)
    assert tuple(model.get_layer("resize").output.shape) == (None, 112, 112, 1)
    assert tuple(model(np.zeros((1, 32, 48, 1), np.float32)).shape) == (1, 3)


def corner_aligned_weights(size, n):
    """(size, n) bilinear weights with aligned corners, by definition: output pixel i samples
    the input at position i·(n−1)/(size−1)."""
    positions = np.arange(size) * (n - 1) / (size - 1)
    low = np.minimum(np.floor(positions).astype(int), n - 2)
    matrix = np.zeros((size, n))
    matrix[np.arange(size), low] = 1 - (positions - low)
    matrix[np.arange(size), low + 1] = positions - low
    return matrix


def test_corner_aligned_resize_matches_its_definition():
    image = np.random.default_rng(1).random((5, 4, 2))
    expected = np.einsum(
        "ih,jw,hwc->ijc", corner_aligned_weights(9, 5), corner_aligned_weights(7, 4), image
    )
    resized = to_numpy(irse.BilinearResize(9, 7, align_corners=True)(image[None].astype(np.float32)))
    np.testing.assert_allclose(resized[0], expected, atol=1e-6)


def test_half_pixel_resize_is_tf_image_resize():
    image = np.random.default_rng(2).random((2, 6, 5, 3), dtype=np.float32)
    resized = to_numpy(irse.BilinearResize(11, 8, align_corners=False)(image))
    expected = tf.image.resize(image, (11, 8), method="bilinear", antialias=False).numpy()
    np.testing.assert_allclose(resized, expected, atol=1e-6)


def test_resize_passes_gradients():
    image = tf.Variable(np.random.default_rng(3).random((1, 4, 4, 1), dtype=np.float32))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(irse.BilinearResize(7, 7, align_corners=True)(image))
    gradient = tape.gradient(total, image).numpy()
    # The gradient of the sum is the outer product of the column sums of the row and column
    # interpolation matrices (how much each input pixel contributes to the output).
    rows = corner_aligned_weights(7, 4).sum(axis=0)
    # Each input pixel's gradient sums its weights over the 7 x 7 outputs (products of two
    # interpolation weights <= 1): at most 49 + 2 roundings of values up to the largest sum.
    expected = np.outer(rows, rows)
    assert_float32_close(gradient[0, :, :, 0], expected, expected.max(), roundings=51)


@pytest.mark.parametrize("argument,value", [("height", 0), ("width", 2.5)])
def test_resize_bad_size(argument, value):
    sizes = {"height": 4, "width": 4, argument: value}
    with pytest.raises(ValueError, match=rf"`{argument}` must be an integer >= 1; received {value}"):
        irse.BilinearResize(sizes["height"], sizes["width"], align_corners=True)


def test_bad_align_corners():
    with pytest.raises(ValueError, match=r"`align_corners` must be True or False; received 'yes'"):
        irse.facenet_eval((64, 64, 3), 3, align_corners="yes")


def test_bad_num_classes():
    with pytest.raises(ValueError, match=r"`num_classes` must be an integer >= 1; received 0"):
        irse.facenet_eval((64, 64, 3), 0)


def test_save_and_load_round_trip(narrow, tmp_path):
    model = narrow((64, 64, 3), 4, align_corners=False)
    rng = np.random.default_rng(4)
    for weight in model.weights:
        weight.assign(weight + 0.05 * rng.normal(size=weight.shape).astype(np.float32))
    images = rng.random((2, 64, 64, 3), dtype=np.float32)
    path = tmp_path / "facenet_eval.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("resize").get_config()["align_corners"] is False
    np.testing.assert_allclose(
        to_numpy(loaded(images, training=False)), to_numpy(model(images, training=False)), atol=1e-6
    )


@pytest.mark.large  # a fit step of the IR-50 judge at 112x112 (about 20 s)
def test_one_fit_step_changes_weights_and_loss_falls(narrow):
    keras.utils.set_random_seed(0)
    images, labels = quadrant_task(16, 16, seed=0)
    images = np.repeat(images, 3, axis=-1)
    model = narrow((16, 16, 3), 4, dropout_seed=0)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = to_numpy(model.get_layer("stem_conv").kernel).copy()
    history = model.fit(images, labels, batch_size=16, epochs=2, verbose=0)
    assert not np.allclose(before, to_numpy(model.get_layer("stem_conv").kernel))
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
