"""Tests of TrapdoorAugment against a numpy implementation of the three sequential steps."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from trapmid_tf.layers.augment import TrapdoorAugment, augment_with_parameters


def _random_images(shape, seed=0):
    return np.random.default_rng(seed).uniform(size=shape).astype("float32")


def _coordinate_images(batch, height, width):
    """Channel 0 holds the column index, channel 1 the row index."""
    rows, columns = np.mgrid[0:height, 0:width].astype("float32")
    image = np.stack([columns, rows], axis=-1)
    return np.repeat(image[None], batch, axis=0)


def _bilinear_zero_fill(image, xs, ys):
    """Samples a (H, W, C) image at float points; pixels outside the image count as 0."""
    height, width = image.shape[:2]
    left, top = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - left, ys - top
    result = np.zeros(xs.shape + image.shape[2:])
    for dx, wx in ((0, 1 - fx), (1, fx)):
        for dy, wy in ((0, 1 - fy), (1, fy)):
            x, y = left + dx, top + dy
            inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
            values = image[np.clip(y, 0, height - 1), np.clip(x, 0, width - 1)]
            result += (wx * wy * inside)[..., None] * values
    return result


def _rotation_sources(angle, height, width):
    """Where each output pixel of a counter-clockwise rotation (as displayed) samples."""
    rows, columns = np.mgrid[0:height, 0:width].astype(float)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    # Content at offset d from the centre moves to R d, R = [[cos, sin], [-sin, cos]] in
    # (x right, y down) coordinates, so the output at offset e samples R^T e.
    xs = cx + math.cos(angle) * (columns - cx) - math.sin(angle) * (rows - cy)
    ys = cy + math.sin(angle) * (columns - cx) + math.cos(angle) * (rows - cy)
    return xs, ys


def _sequential(image, side, offset, flip, angle):
    """Crop-resize, then flip, then rotate, each resampled separately (the definition)."""
    height, width = image.shape[:2]
    rows, columns = np.mgrid[0:height, 0:width].astype(float)
    span_x, span_y = max(side * width - 1, 0), max(side * height - 1, 0)
    start_x = offset[0] * (width - 1 - span_x)
    start_y = offset[1] * (height - 1 - span_y)
    cropped = _bilinear_zero_fill(
        image,
        start_x + columns * span_x / max(width - 1, 1),
        start_y + rows * span_y / max(height - 1, 1),
    )
    flipped = cropped[:, ::-1] if flip else cropped
    return _bilinear_zero_fill(flipped, *_rotation_sources(angle, height, width))


def _parameters(batch, side, offset, flip, angle):
    """The same crop side, crop offset, flip and angle for every image of a batch."""
    return (
        np.full(batch, side, "float32"),
        np.tile(np.asarray(offset, "float32"), (batch, 1)),
        np.full(batch, flip, "float32"),
        np.full(batch, angle, "float32"),
    )


def _augment(images, side, offset, flip, angle):
    parameters = _parameters(images.shape[0], side, offset, flip, angle)
    return augment_with_parameters(images, *parameters).numpy()


def test_identity_when_not_training_or_probability_zero():
    images = _random_images((4, 6, 5, 3))
    np.testing.assert_array_equal(TrapdoorAugment(seed=0)(images, training=False), images)
    np.testing.assert_array_equal(
        TrapdoorAugment(probability=0.0, seed=0)(images, training=True), images
    )


def test_functional_model_augments_only_in_training():
    inputs = keras.Input((6, 6, 1))
    model = keras.Model(inputs, TrapdoorAugment(probability=1.0, seed=0)(inputs))
    images = _random_images((3, 6, 6, 1))
    np.testing.assert_array_equal(model.predict(images, verbose=0), images)
    assert not np.allclose(model(images, training=True), images)


def test_flip_only_mirrors_every_image_exactly():
    images = _random_images((4, 5, 7, 3))
    layer = TrapdoorAugment(crop_scale=(1.0, 1.0), rotation_degrees=0.0, probability=1.0, seed=1)
    np.testing.assert_array_equal(layer(images), images[:, :, ::-1])


def test_each_image_is_flipped_independently():
    images = np.repeat(_random_images((1, 4, 6, 1)), 256, axis=0)
    layer = TrapdoorAugment(crop_scale=(1.0, 1.0), rotation_degrees=0.0, probability=0.5, seed=2)
    outputs = layer(images).numpy()
    same = np.all(outputs == images, axis=(1, 2, 3))
    mirrored = np.all(outputs == images[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored)
    assert 0.4 < mirrored.mean() < 0.6  # Binomial(256, 0.5): 3 standard deviations


def test_steps_are_skipped_independently_per_image():
    images = np.repeat(_random_images((1, 8, 8, 3)), 256, axis=0)
    outputs = TrapdoorAugment(seed=3)(images).numpy()
    unchanged = np.all(outputs == images, axis=(1, 2, 3))
    only_flipped = np.all(outputs == images[:, :, ::-1], axis=(1, 2, 3))
    # Each has probability 1/8: mean 32, standard deviation 5.3.
    assert 16 <= unchanged.sum() <= 48
    assert 16 <= only_flipped.sum() <= 48
    # A crop or rotation was drawn for the others, with continuous parameters: all distinct.
    others = outputs[~unchanged & ~only_flipped]
    assert len(np.unique(others.round(5), axis=0)) == len(others)


def test_rotation_of_a_constant_image_keeps_the_inscribed_disc_and_darkens_corners():
    size = 15
    images = np.ones((64, size, size, 1), "float32")
    # Crop scale (1, 1): the crop is the whole image; the flip leaves a constant image as is.
    layer = TrapdoorAugment(crop_scale=(1.0, 1.0), rotation_degrees=30.0, probability=1.0, seed=4)
    outputs = layer(images).numpy()[..., 0]
    rows, columns = np.mgrid[0:size, 0:size]
    radius = np.hypot(rows - (size - 1) / 2, columns - (size - 1) / 2)
    np.testing.assert_allclose(outputs[:, radius <= (size - 1) / 2], 1.0, atol=1e-5)
    corners = outputs[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert np.all(corners < 1.0 - 1e-4)
    assert np.all(outputs >= 0.0) and np.all(outputs <= 1.0 + 1e-6)


def test_rotation_by_30_degrees_zeroes_the_corners():
    images = np.ones((1, 15, 15, 1), "float32")
    outputs = _augment(images, 1.0, (0.0, 0.0), 0.0, math.radians(30.0))[0, ..., 0]
    np.testing.assert_array_equal(outputs[[0, 0, -1, -1], [0, -1, 0, -1]], 0.0)
    assert outputs[7, 7] == pytest.approx(1.0, abs=1e-6)


def test_quarter_turn_matches_numpy_rot90():
    images = _random_images((2, 6, 6, 2))
    outputs = _augment(images, 1.0, (0.0, 0.0), 0.0, math.pi / 2)
    np.testing.assert_allclose(outputs, np.rot90(images, axes=(1, 2)), atol=1e-5)


def test_rotation_angles_are_uniform_within_the_range():
    batch, size = 256, 9
    images = _coordinate_images(batch, size, size)
    layer = TrapdoorAugment(crop_scale=(1.0, 1.0), rotation_degrees=30.0, probability=0.5, seed=5)
    outputs = layer(images).numpy()
    # Two pixels right of the centre, the row channel reads centre + 2 sin(angle), flip or not.
    centre = (size - 1) // 2
    angles = np.degrees(np.arcsin((outputs[:, centre, centre + 2, 1] - centre) / 2))
    rotated = np.abs(angles) > 1e-3
    assert 0.4 < rotated.mean() < 0.6
    assert np.all(np.abs(angles) <= 30.0 + 1e-3)
    # |U[-30, 30]| is U[0, 30]: mean 15, standard deviation of the mean over ~128 images 0.8.
    assert 12.5 < np.abs(angles[rotated]).mean() < 17.5


def test_random_crop_is_a_square_zoom_inside_the_image():
    batch, height, width = 256, 12, 16
    images = _coordinate_images(batch, height, width)
    layer = TrapdoorAugment(rotation_degrees=0.0, probability=1.0, seed=6)
    outputs = layer(images).numpy()
    flipped = outputs[:, 0, 0, 0] > outputs[:, 0, -1, 0]
    outputs = np.where(flipped[:, None, None, None], outputs[:, :, ::-1], outputs)
    columns, rows = outputs[:, 0, :, 0], outputs[:, :, 0, 1]
    for values in (columns, rows):  # evenly spaced samples: a bilinear zoom
        np.testing.assert_allclose(np.diff(values, 2), 0.0, atol=1e-4)
    side_x = (columns[:, -1] - columns[:, 0] + 1) / width
    side_y = (rows[:, -1] - rows[:, 0] + 1) / height
    np.testing.assert_allclose(side_x, side_y, atol=1e-4)  # aspect ratio of the image
    area = side_x**2
    assert np.all(area >= 0.8 - 1e-4) and np.all(area <= 1.0 + 1e-4)
    assert 0.88 < area.mean() < 0.92  # U[0.8, 1]: mean 0.9, sd of the mean 0.004
    assert columns.min() >= 0.0 and columns.max() <= width - 1
    assert rows.min() >= 0.0 and rows.max() <= height - 1
    # The position is uniform over the room left: its mean is half the room.
    room = (width - 1) - (columns[:, -1] - columns[:, 0])
    assert 0.4 < np.mean(columns[:, 0] / room) < 0.6


@pytest.mark.parametrize("flip", [0.0, 1.0])
@pytest.mark.parametrize("angle", [0.0, 0.4, -0.5236, 2.0])
def test_without_crop_matches_the_sequential_definition(flip, angle):
    images = _random_images((1, 7, 9, 3), seed=7)
    outputs = _augment(images, 1.0, (0.0, 0.0), flip, angle)
    expected = _sequential(images[0], 1.0, (0.0, 0.0), flip, angle)
    np.testing.assert_allclose(outputs[0], expected, atol=1e-5)


@pytest.mark.parametrize(
    "side, offset", [(0.9, (0.0, 1.0)), (0.95, (0.3, 0.7)), (0.8, (1.0, 0.5))]
)
@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_crop_and_flip_match_the_sequential_definition(side, offset, flip):
    images = _random_images((1, 8, 10, 2), seed=8)
    expected = _sequential(images[0], side, offset, flip, 0.0)
    np.testing.assert_allclose(_augment(images, side, offset, flip, 0.0)[0], expected, atol=1e-5)


@pytest.mark.parametrize("angle", [0.3, -0.5236])
def test_crop_and_rotation_match_the_sequential_definition_on_a_linear_image(angle):
    height, width = 10, 12
    rows, columns = np.mgrid[0:height, 0:width]
    image = np.stack([0.2 + 0.05 * columns, 0.9 - 0.03 * rows - 0.02 * columns], axis=-1)
    side, offset, flip = 0.9, (0.25, 0.6), 1.0
    outputs = _augment(image[None].astype("float32"), side, offset, flip, angle)[0]
    expected = _sequential(image, side, offset, flip, angle)
    xs, ys = _rotation_sources(angle, height, width)
    in_frame = (xs >= 0) & (xs <= width - 1) & (ys >= 0) & (ys <= height - 1)
    off_frame = (xs <= -1) | (xs >= width) | (ys <= -1) | (ys >= height)
    assert in_frame.sum() > 0.6 * in_frame.size and off_frame.any()
    np.testing.assert_allclose(outputs[in_frame], expected[in_frame], atol=1e-4)
    np.testing.assert_array_equal(outputs[off_frame], 0.0)
    # In the fading band the value comes from just outside the crop (at most one pixel of
    # the image's slope, 0.05, away from the crop's edge value).
    np.testing.assert_allclose(outputs, expected, atol=0.06)


def test_gradient_matches_central_differences():
    shape = (5, 6, 2)
    images = _random_images((1, *shape), seed=9)
    weights = _random_images((1, *shape), seed=10)
    parameters = dict(side=0.85, offset=(0.7, 0.2), flip=1.0, angle=0.45)

    def loss(batch):
        return np.sum(_augment(batch, **parameters) * weights, axis=(1, 2, 3))

    images_tensor = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(images_tensor)
        outputs = augment_with_parameters(images_tensor, *_parameters(1, **parameters))
        total = tf.reduce_sum(outputs * weights)
    gradient = tape.gradient(total, images_tensor).numpy()

    step = 0.25
    basis = np.eye(np.prod(shape), dtype="float32").reshape(-1, *shape)
    numeric = (loss(images + step * basis) - loss(images - step * basis)) / (2 * step)
    np.testing.assert_allclose(gradient.reshape(-1), numeric, atol=1e-4)
    assert np.all(np.isfinite(gradient)) and np.abs(gradient).sum() > 0


def test_layer_gradient_is_finite_and_nonzero():
    images = tf.constant(_random_images((8, 16, 16, 3)))
    layer = TrapdoorAugment(probability=1.0, seed=11)
    with tf.GradientTape() as tape:
        tape.watch(images)
        total = tf.reduce_sum(layer(images) ** 2)
    gradient = tape.gradient(total, images).numpy()
    assert np.all(np.isfinite(gradient))
    assert np.all(np.abs(gradient).sum(axis=(1, 2, 3)) > 0)


def test_same_seed_same_outputs_and_consecutive_calls_differ():
    images = _random_images((6, 8, 8, 3))
    first, second = TrapdoorAugment(seed=12), TrapdoorAugment(seed=12)
    np.testing.assert_array_equal(first(images), second(images))
    assert not np.array_equal(first(images), first(images))


def test_works_in_tf_function_with_unknown_batch():
    layer = TrapdoorAugment(probability=1.0, seed=13)
    augment = tf.function(
        lambda images: layer(images, training=True),
        input_signature=[tf.TensorSpec((None, 8, 8, 3), tf.float32)],
    )
    for batch in (3, 5):
        images = _random_images((batch, 8, 8, 3))
        outputs = augment(images)
        assert outputs.shape == images.shape
        assert not np.allclose(outputs, images)


def test_replicas_draw_the_slices_of_the_global_batch(two_replicas):
    images = _random_images((8, 6, 6, 1))
    strategy = two_replicas
    with strategy.scope():
        distributed_layer = TrapdoorAugment(probability=1.0, seed=14)
    local_images = strategy.experimental_distribute_values_from_function(
        lambda context: images[4 * context.replica_id_in_sync_group :][:4]
    )

    @tf.function
    def step(batch):
        return strategy.run(lambda local: distributed_layer(local, training=True), args=(batch,))

    outputs = np.concatenate(strategy.experimental_local_results(step(local_images)))
    expected = TrapdoorAugment(probability=1.0, seed=14)(images).numpy()
    np.testing.assert_allclose(outputs, expected, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(crop_scale=(0.0, 1.0)), "crop_scale"),
        (dict(crop_scale=(0.9, 0.8)), "crop_scale"),
        (dict(crop_scale=(0.8, 1.1)), "crop_scale"),
        (dict(crop_scale=(0.8,)), "crop_scale"),
        (dict(rotation_degrees=-1.0), "rotation_degrees"),
        (dict(probability=1.5), "probability"),
        (dict(probability=-0.1), "probability"),
    ],
)
def test_bad_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TrapdoorAugment(**kwargs)


def test_images_without_batch_axis_raise():
    with pytest.raises(ValueError, match="images"):
        TrapdoorAugment(seed=0)(np.zeros((8, 8, 3), "float32"))


def test_mixed_precision_matches_float32():
    images = tf.constant(_random_images((4, 8, 8, 3)))
    results = []
    for dtype in ("float32", "mixed_float16"):
        layer = TrapdoorAugment(probability=1.0, seed=17, dtype=dtype)
        with tf.GradientTape() as tape:
            tape.watch(images)
            outputs = layer(images)
            total = tf.reduce_sum(tf.cast(outputs, "float32") ** 2)
        results.append((outputs, tape.gradient(total, images)))
    (outputs32, gradient32), (outputs16, gradient16) = results
    assert outputs16.dtype == tf.float16
    np.testing.assert_allclose(tf.cast(outputs16, "float32"), outputs32, atol=2e-3)
    np.testing.assert_allclose(gradient16, gradient32, atol=1e-2)
