"""Input validation shared by the metric functions (numpy in, numpy out)."""

import numpy as np


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


def as_positive_int(value, name):
    """Returns `value` as an int >= 1.

    Raises:
        ValueError: If `value` is not an integer >= 1 (booleans are rejected).
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1; received {value!r}.")
    return int(value)


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
