"""Pairs a dataset with trapdoor target labels that are balanced in every epoch."""

import tensorflow as tf

from trapmid_tf.validation import is_integer


def with_trapdoor_labels(dataset, num_classes, seed=None, reshuffle_each_iteration=True):
    """Adds a balanced random trapdoor label to every element of a dataset.

    With N elements and C classes, one pass over the result carries each class
    floor(N/C) times, plus the first N mod C classes of a random permutation once
    more, in a random order. Every new iteration (epoch) draws a new order and a new
    remainder, unless `reshuffle_each_iteration` is False. The trapdoor labels do not
    depend on the true labels.

    Args:
        dataset: an **unbatched** `tf.data.Dataset` of `(x, y)` with the same number
            of elements in every pass. Batch the result, not the input.
        num_classes: number of classes C, an int >= 1.
        seed: optional int; the same seed gives the same sequence of epochs.
        reshuffle_each_iteration: if False, every iteration repeats the labels of the
            first, for pipelines built per epoch with a seed of their own.

    Returns:
        A `tf.data.Dataset` of `(x, y, y_trap)` with `x` and `y` unchanged and `y_trap`
        an int32 scalar in [0, C).

    Raises:
        ValueError: if `num_classes` is not an int >= 1, `seed` is not None or an int,
            the elements are not `(x, y)` pairs, or the dataset is infinite.

    Example:
        >>> (train, _), _ = trapmid_tf.data.load("digits")
        >>> batches = with_trapdoor_labels(train.shuffle(720, seed=0), 5, seed=0).batch(64)
        >>> images, labels, trapdoor_labels = next(iter(batches))
        >>> images.shape, labels.shape, trapdoor_labels.shape
        (TensorShape([64, 32, 32, 1]), TensorShape([64]), TensorShape([64]))
    """
    if not is_integer(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}.")
    if seed is not None and not is_integer(seed):
        raise ValueError(f"seed must be None or an int, got {seed!r}.")
    if not isinstance(dataset.element_spec, tuple) or len(dataset.element_spec) != 2:
        raise ValueError(
            "dataset must yield (x, y) pairs, got elements with spec "
            f"{dataset.element_spec!r}."
        )
    num_elements = _count_elements(dataset)
    seed = None if seed is None else int(seed)
    labels = _balanced_labels(num_elements, int(num_classes), seed, reshuffle_each_iteration)
    paired = tf.data.Dataset.zip(dataset, labels).map(
        lambda pair, trapdoor_label: (*pair, trapdoor_label)
    )
    return paired.apply(tf.data.experimental.assert_cardinality(num_elements))


def _balanced_labels(num_elements, num_classes, seed, reshuffle_each_iteration):
    """A dataset of `num_elements` int32 labels, balanced (and reshuffled every pass if asked)."""
    whole, remainder = divmod(num_elements, num_classes)
    repeated = tf.data.Dataset.range(whole * num_classes).map(lambda i: i % num_classes)
    extra = (
        tf.data.Dataset.range(num_classes)
        .shuffle(num_classes, seed=seed, reshuffle_each_iteration=reshuffle_each_iteration)
        .take(remainder)
    )
    order_seed = None if seed is None else seed + 1
    return (
        repeated.concatenate(extra)
        .shuffle(
            max(num_elements, 1), seed=order_seed,
            reshuffle_each_iteration=reshuffle_each_iteration,
        )
        .map(lambda label: tf.cast(label, tf.int32))
    )


def _count_elements(dataset):
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ValueError("dataset must be finite, got one with infinite cardinality.")
    if cardinality == tf.data.UNKNOWN_CARDINALITY:
        return int(dataset.reduce(0, lambda count, _: count + 1))
    return cardinality
