"""Trap-MID's online augmentation: random resized crop, horizontal flip and rotation.

The reference (kornia) applies, per sample and with independent parameters,
`RandomResizedCrop(scale=(0.8, 1), ratio=(1, 1), p=0.5)`, then `RandomHorizontalFlip(p=0.5)`,
then `RandomRotation(30 degrees, p=0.5)`, all bilinear with zero fill. Here the three maps
are composed into one affine transform per sample, so each image is resampled once.

Coordinates are pixel centres: column `x` in `[0, W - 1]`, row `y` in `[0, H - 1]`. A transform
maps an output pixel to the input point it samples.
"""

import math

import keras
import tensorflow as tf
from keras import ops

from trapmid_tf.contract import replica_slot

_NUM_RANDOM_PARAMETERS = 7  # 3 gates, crop area, 2 crop offsets, angle


def _check_arguments(crop_scale, rotation_degrees, probability):
    if len(crop_scale) != 2 or not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
        raise ValueError(
            "`crop_scale` must be (low, high) with 0 < low <= high <= 1; "
            f"received {crop_scale!r}."
        )
    if not rotation_degrees >= 0.0:
        raise ValueError(f"`rotation_degrees` must be >= 0; received {rotation_degrees!r}.")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"`probability` must be in [0, 1]; received {probability!r}.")


def _image_size(images):
    shape = ops.shape(images)
    return shape[1], shape[2]


def _rotation_map(angle, height, width):
    """Inverse rotation about the image centre, as six per-sample coefficients.

    Returns `(a11, a12, a13, a21, a22, a23)`, each of shape `(batch,)`, with the sampled
    point `q = (a11 x + a12 y + a13, a21 x + a22 y + a23)` for the output pixel `(x, y)`.
    """
    cos, sin = ops.cos(angle), ops.sin(angle)
    centre_x = (ops.cast(width, "float32") - 1.0) / 2.0
    centre_y = (ops.cast(height, "float32") - 1.0) / 2.0
    return (
        cos,
        -sin,
        centre_x - cos * centre_x + sin * centre_y,
        sin,
        cos,
        centre_y - sin * centre_x - cos * centre_y,
    )


def _crop_map(side, room_fraction, size):
    """Per-axis crop map `t -> start + zoom * t` for a crop of `side * size` pixels."""
    size = ops.cast(size, "float32")
    span = ops.maximum(side * size - 1.0, 0.0)  # crop width between its outer pixel centres
    start = room_fraction * (size - 1.0 - span)
    zoom = span / ops.maximum(size - 1.0, 1.0)
    return start, zoom


def _composed_transforms(crop_side, crop_offset, flip, angle, height, width):
    """Flat `(batch, 8)` transforms of crop, then flip, then rotation, for the resampler."""
    a11, a12, a13, a21, a22, a23 = _rotation_map(angle, height, width)
    start_x, zoom_x = _crop_map(crop_side, crop_offset[:, 0], width)
    start_y, zoom_y = _crop_map(crop_side, crop_offset[:, 1], height)
    # The flip maps x to sign * x + flip * (W - 1).
    sign = 1.0 - 2.0 * flip
    flip_shift = flip * (ops.cast(width, "float32") - 1.0)
    zeros = ops.zeros_like(angle)
    return ops.stack(
        [
            zoom_x * sign * a11,
            zoom_x * sign * a12,
            zoom_x * (sign * a13 + flip_shift) + start_x,
            zoom_y * a21,
            zoom_y * a22,
            zoom_y * a23 + start_y,
            zeros,
            zeros,
        ],
        axis=1,
    )


def _in_frame_weight(coordinate, size):
    """Bilinear weight that a point puts on pixels inside `[0, size - 1]` (zero fill)."""
    size = ops.cast(size, "float32")
    return ops.clip(ops.minimum(coordinate + 1.0, size - coordinate), 0.0, 1.0)


def _rotation_frame_mask(angle, height, width):
    """`(batch, H, W, 1)` result of rotating an all-ones image with zero fill.

    The rotation samples the cropped-and-flipped image, so what it brings in from outside
    that image's frame is zero, not the content around the crop.
    """
    a11, a12, a13, a21, a22, a23 = (c[:, None, None] for c in _rotation_map(angle, height, width))
    rows, columns = ops.meshgrid(
        ops.arange(height, dtype="float32"), ops.arange(width, dtype="float32"), indexing="ij"
    )
    sampled_x = a11 * columns + a12 * rows + a13
    sampled_y = a21 * columns + a22 * rows + a23
    mask = _in_frame_weight(sampled_x, width) * _in_frame_weight(sampled_y, height)
    return mask[..., None]


def _bilinear_corners(transforms, batch, height, width):
    """Flat input indices and bilinear weights, `(batch, H, W, 4)` each, of edge-clamped samples."""
    rows, columns = tf.meshgrid(
        tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij"
    )
    coefficients = transforms[:, :6, None, None]
    last_x, last_y = tf.cast(width - 1, tf.float32), tf.cast(height - 1, tf.float32)
    sampled_x = coefficients[:, 0] * columns + coefficients[:, 1] * rows + coefficients[:, 2]
    sampled_y = coefficients[:, 3] * columns + coefficients[:, 4] * rows + coefficients[:, 5]
    sampled_x = tf.clip_by_value(sampled_x, 0.0, last_x)
    sampled_y = tf.clip_by_value(sampled_y, 0.0, last_y)
    left, top = tf.floor(sampled_x), tf.floor(sampled_y)
    right_weight, bottom_weight = sampled_x - left, sampled_y - top
    left, top = tf.cast(left, tf.int32), tf.cast(top, tf.int32)
    right, bottom = tf.minimum(left + 1, width - 1), tf.minimum(top + 1, height - 1)
    image_start = (tf.range(batch) * height * width)[:, None, None]
    indices = tf.stack(
        [top * width + left, top * width + right, bottom * width + left, bottom * width + right],
        axis=-1,
    )
    weights = tf.stack(
        [
            (1.0 - right_weight) * (1.0 - bottom_weight),
            right_weight * (1.0 - bottom_weight),
            (1.0 - right_weight) * bottom_weight,
            right_weight * bottom_weight,
        ],
        axis=-1,
    )
    return indices + image_start[..., None], weights


@tf.custom_gradient
def _bilinear_warp(images, transforms):
    """Samples images bilinearly at transformed points clamped to the image frame.

    The forward pass is TensorFlow's fused `ImageProjectiveTransformV3` (fill mode NEAREST,
    which clamps the sample point). Its registered gradient warps the output gradient by the
    inverse transform, which is not the adjoint of bilinear sampling (it is wrong wherever the
    map zooms, and at the borders), so the backward pass instead adds the output gradient
    onto the four pixels each output sampled, with the same weights.
    """
    outputs = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=tf.constant(0.0, tf.float32),
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )

    def gradient(upstream):
        batch, height, width = tf.unstack(tf.shape(images)[:3])
        indices, weights = _bilinear_corners(transforms, batch, height, width)
        indices = tf.reshape(indices, [-1])
        # Accumulate in float32 at least (bincount has no half-precision kernel).
        accumulate_dtype = tf.float64 if upstream.dtype == tf.float64 else tf.float32
        upstream = tf.cast(upstream, accumulate_dtype)
        weights = tf.cast(weights, accumulate_dtype)
        num_pixels = batch * height * width
        # One weighted histogram per channel: faster on CPU than a segment sum over rows.
        per_channel = [
            tf.math.bincount(
                indices,
                weights=tf.reshape(upstream[..., channel, None] * weights, [-1]),
                minlength=num_pixels,
                maxlength=num_pixels,
                dtype=accumulate_dtype,
            )
            for channel in range(images.shape[-1])
        ]
        image_gradient = tf.reshape(tf.stack(per_channel, axis=-1), tf.shape(images))
        return tf.cast(image_gradient, images.dtype), None

    return outputs, gradient


def augment_with_parameters(images, crop_side, crop_offset, flip, angle):
    """Crops and resizes, flips, then rotates each image with the given parameters.

    The three maps are composed into one affine transform per image and the image is
    resampled once, bilinearly, at sample points clamped to the image frame. The result is
    then multiplied by the rotation's frame mask, the rotation of an all-ones image with zero
    fill, so what the rotation brings in from outside the cropped image is zero, as in three
    separate resamplings, and not the content around the crop. Without a crop this equals the
    sequential result exactly. With a crop, two things differ from three resamplings: the
    image is interpolated once instead of twice (slightly sharper; images linear in the pixel
    coordinates give the same values), and in the one-pixel band along the rotated frame's
    edge, the faded value comes from just outside the crop instead of from its edge pixel.
    Gradients with respect to `images` are exact.

    Args:
        images: Float tensor `(batch, height, width, channels)`.
        crop_side: `(batch,)` side of the crop as a fraction of the image side, in (0, 1]; the
            crop spans `crop_side * width` columns and `crop_side * height` rows, and is resized
            back to the image size (its outer pixel centres onto the image's outer ones).
        crop_offset: `(batch, 2)` position `(x, y)` of the crop as a fraction, in [0, 1], of the
            room left between the crop and the image border.
        flip: `(batch,)` 1.0 to mirror left-right, 0.0 not to.
        angle: `(batch,)` rotation angle in radians, counter-clockwise as displayed, about the
            image centre.

    Returns:
        The augmented images, same shape and dtype as `images`.
    """
    images = ops.convert_to_tensor(images)
    height, width = _image_size(images)
    crop_side, flip, angle = (ops.cast(v, "float32") for v in (crop_side, flip, angle))
    transforms = _composed_transforms(
        crop_side, ops.cast(crop_offset, "float32"), flip, angle, height, width
    )
    warped = _bilinear_warp(images, transforms)
    return warped * ops.cast(_rotation_frame_mask(angle, height, width), warped.dtype)


@keras.saving.register_keras_serializable(package="trapmid_tf")
class TrapdoorAugment(keras.layers.Layer):
    """Trap-MID's online augmentation, with independent random parameters per image.

    Each of the three steps is applied to each image independently with `probability`:
    a random resized crop of side `sqrt(U[crop_scale]) * (H, W)` (its area is that fraction of
    the image's, at a uniform random position inside the image, resized back bilinearly), a
    horizontal flip, and a rotation by `U[-rotation_degrees, rotation_degrees]` about the image
    centre (bilinear, zero fill). The steps are composed into one transform per image and the
    image is resampled once; see `augment_with_parameters`. Gradients flow to the images.

    As with Keras preprocessing layers, the layer augments when `training` is true, which is
    the default of `call`, and returns its input unchanged when `training` is false (as in
    `predict` and `evaluate`).

    Randomness comes from the layer's `keras.random.SeedGenerator`. Under a
    `tf.distribute` strategy every replica draws the parameters of the whole global batch
    (local batch times replicas) and takes its own slice, so replicas do not repeat each
    other's augmentations.

    The layer computes in float32 unless given another `dtype`, also under a mixed-precision
    policy: augmented images are float32 images.

    Args:
        crop_scale: `(low, high)` range of the crop area as a fraction of the image area,
            with 0 < low <= high <= 1.
        rotation_degrees: Largest rotation angle in degrees, >= 0.
        probability: Probability, in [0, 1], that each step is applied to an image.
        seed: Integer seed of the random parameters, or None.
        **kwargs: Standard layer arguments.

    Example:
        >>> augment = TrapdoorAugment(seed=0)
        >>> augment(ops.ones((2, 8, 8, 3)), training=True).shape
        TensorShape([2, 8, 8, 3])
    """

    def __init__(
        self, crop_scale=(0.8, 1.0), rotation_degrees=30.0, probability=0.5, seed=None, **kwargs
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        crop_scale = tuple(float(s) for s in crop_scale)
        _check_arguments(crop_scale, float(rotation_degrees), float(probability))
        self.crop_scale = crop_scale
        self.rotation_degrees = float(rotation_degrees)
        self.probability = float(probability)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_jit = False  # ImageProjectiveTransformV3 has no XLA kernel.

    def call(self, images, training=True):
        """Augments each image with its own random parameters when training.

        Args:
            images: Float images `(batch, height, width, channels)`, channels known.
            training: Whether to augment; False returns `images` unchanged.

        Returns:
            Images of the input's shape.

        Raises:
            ValueError: If `images` is not 4-D with a known channel count.
        """
        if len(images.shape) != 4 or images.shape[-1] is None:
            raise ValueError(
                "`images` must have shape (batch, height, width, channels) with a known "
                f"number of channels; received shape {tuple(images.shape)}."
            )
        if not training:
            return images
        crop_side, crop_offset, flip, angle = self._sample_parameters(ops.shape(images)[0])
        return augment_with_parameters(images, crop_side, crop_offset, flip, angle)

    def _sample_parameters(self, batch_size):
        """Draws `(crop_side, crop_offset, flip, angle)` for a batch, identity where skipped."""
        replicas, replica = replica_slot()
        uniform = keras.random.uniform(
            (batch_size * replicas, _NUM_RANDOM_PARAMETERS), seed=self.seed_generator
        )
        uniform = uniform[replica * batch_size : (replica + 1) * batch_size]
        apply_crop, apply_flip, apply_rotation = (
            uniform[:, i] < self.probability for i in range(3)
        )
        low, high = self.crop_scale
        area = low + (high - low) * uniform[:, 3]
        crop_side = ops.where(apply_crop, ops.sqrt(area), 1.0)
        crop_offset = uniform[:, 4:6]
        flip = ops.cast(apply_flip, "float32")
        max_angle = math.radians(self.rotation_degrees)
        angle = ops.where(apply_rotation, max_angle * (2.0 * uniform[:, 6] - 1.0), 0.0)
        return crop_side, crop_offset, flip, angle

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            crop_scale=self.crop_scale,
            rotation_degrees=self.rotation_degrees,
            probability=self.probability,
            seed=self.seed,
        )
        return config
