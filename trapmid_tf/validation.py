"""Argument checks shared by the package's modules.

Each raises `ValueError` naming the argument, what it must be and what it received.
"""

import numbers

import keras
import numpy as np


def is_integer(value):
    """Whether `value` is an integer (numpy's included) and not a boolean."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name, value):
    """Returns `value` as an int, raising ValueError unless it is an integer >= 1.

    Args:
        name: Argument name shown in the message.
        value: The value to check (booleans are rejected).

    Raises:
        ValueError: If `value` is not an integer >= 1.
    """
    if not is_integer(value) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1; received {value!r}.")
    return int(value)


def check_non_negative_int(name, value):
    """Raises ValueError unless `value` is an integer >= 0 (booleans are rejected)."""
    if not is_integer(value) or value < 0:
        raise ValueError(f"`{name}` must be an integer >= 0; received {value!r}.")


def check_positive_float(name, value):
    """Raises ValueError unless `value` is a finite real number > 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not np.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"`{name}` must be a finite number > 0; received {value!r}.")


def check_non_negative_float(name, value):
    """Raises ValueError unless `value` is a finite real number >= 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not np.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"`{name}` must be a finite number >= 0; received {value!r}.")


def check_fraction(name, value, include_one=False):
    """Returns `value` as a float, raising ValueError unless it is a real number in [0, 1)
    (in [0, 1] with `include_one`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
        0 <= value <= 1 and (include_one or value < 1)
    ):
        bounds = "[0, 1]" if include_one else "[0, 1)"
        raise ValueError(f"`{name}` must be a number in {bounds}; received {value!r}.")
    return float(value)


def check_open_unit_interval(name, value):
    """Returns `value` as a float, raising ValueError unless it is a real number in (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ValueError(f"`{name}` must be a number in (0, 1); received {value!r}.")
    return float(value)


def check_model(name, model):
    """Raises ValueError unless `model` is a `keras.Model`."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"`{name}` must be a keras.Model; received {type(model).__name__}.")


def as_image_batch(name, images):
    """`images` as a float32 NHWC array in [0, 1], checked.

    Args:
        name: The argument's name, for the error.
        images: Array-like of shape (n, H, W, C), n >= 1, values in [0, 1].

    Returns:
        The images as a float32 numpy array.

    Raises:
        ValueError: If the shape or the value range is another.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or len(images) < 1:
        raise ValueError(
            f"`{name}` must be a non-empty NHWC array (n, H, W, C); received shape "
            f"{images.shape}."
        )
    if images.min() < 0.0 or images.max() > 1.0:
        raise ValueError(
            f"`{name}` must lie in [0, 1]; received values in [{images.min()}, {images.max()}]."
        )
    return images


def check_input_shape(input_shape, min_size, model_name):
    """Checks an NHWC `input_shape` of (height, width, channels) for a network.

    Args:
        input_shape: The shape to check, without the batch axis.
        min_size: Smallest height and width the network accepts (its total downsampling).
        model_name: Network name shown in the message.

    Returns:
        The shape as a tuple of Python ints.

    Raises:
        ValueError: If the shape is not three positive integers with height, width >= min_size.
    """
    expected = (
        f"`input_shape` must be (height, width, channels) with integer height and width >= "
        f"{min_size} and channels >= 1 for {model_name}; received {input_shape!r}."
    )
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ValueError(expected) from None
    if len(shape) != 3 or not all(map(is_integer, shape)) or min(shape[:2]) < min_size or shape[2] < 1:
        raise ValueError(expected)
    return tuple(int(d) for d in shape)


def as_feature_matrix(features, name, min_rows=1):
    """Returns `features` as a finite float64 matrix of shape `(samples, dims)`.

    Args:
        features: Array-like of shape `(samples, dims)`.
        name: Argument name used in error messages.
        min_rows: Smallest accepted number of samples.

    Returns:
        The features as a float64 numpy array.

    Raises:
        ValueError: If `features` is not 2-D, has fewer than `min_rows` rows, has no
            columns, or holds NaN or infinite values.
    """
    matrix = np.asarray(features, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] < min_rows or matrix.shape[1] < 1:
        raise ValueError(
            f"`{name}` must be a 2-D array (samples, dims) with at least {min_rows} "
            f"sample(s) and 1 dim; received shape {matrix.shape}."
        )
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"`{name}` must hold finite values; received NaN or infinity.")
    return matrix


def as_labels(labels, name, num_samples, num_classes=None):
    """Returns `labels` as an int64 vector of length `num_samples`.

    Args:
        labels: Array-like of integer class indices, shape `(num_samples,)`.
        name: Argument name used in error messages.
        num_samples: Required length (>= 1).
        num_classes: If given, every label must lie in `[0, num_classes)`.

    Returns:
        The labels as an int64 numpy array.

    Raises:
        ValueError: If `labels` is not a 1-D integer array of the required length, or a
            label lies outside `[0, num_classes)`.
    """
    vector = np.asarray(labels)
    if vector.ndim != 1 or vector.shape[0] != num_samples:
        raise ValueError(
            f"`{name}` must have shape ({num_samples},); received shape {vector.shape}."
        )
    if not np.issubdtype(vector.dtype, np.integer):
        raise ValueError(
            f"`{name}` must hold integer class indices; received dtype {vector.dtype}."
        )
    vector = vector.astype(np.int64)
    if num_classes is not None and (vector.min() < 0 or vector.max() >= num_classes):
        raise ValueError(
            f"`{name}` must lie in [0, {num_classes}); received values in "
            f"[{vector.min()}, {vector.max()}]."
        )
    return vector


def check_same_dims(first, first_name, second, second_name):
    """Raises ValueError unless two feature matrices have the same number of columns."""
    if first.shape[1] != second.shape[1]:
        raise ValueError(
            f"`{first_name}` and `{second_name}` must have the same feature dims; received "
            f"{first.shape[1]} and {second.shape[1]}."
        )


def as_score_vector(scores, name):
    """Returns `scores` as a finite, non-empty float64 vector.

    Raises:
        ValueError: If `scores` is not 1-D, is empty, or holds NaN or infinite values.
    """
    vector = np.asarray(scores, dtype=np.float64)
    if vector.ndim != 1 or vector.shape[0] < 1:
        raise ValueError(f"`{name}` must be a non-empty 1-D array; received shape {vector.shape}.")
    if not np.all(np.isfinite(vector)):
        raise ValueError(f"`{name}` must hold finite values; received NaN or infinity.")
    return vector
