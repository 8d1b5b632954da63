"""The data contract, checked inside training steps, and replica helpers.

Images are float32 NHWC in [0, 1] and labels int class indices. The shape and dtype checks
run when a step is traced and raise `ValueError`; the value checks (finite pixels in [0, 1],
labels in range) are assertion ops that a step makes its updates depend on, so a bad batch
stops `fit` with a message naming the problem and changes nothing.
"""

import tensorflow as tf


def checked_images(images, image_shape, name="images"):
    """Checks a batch of images against the contract.

    Args:
        images: The batch, NHWC.
        image_shape: The expected `(height, width, channels)`.
        name: The argument name shown in messages.

    Returns:
        `(images, checks)`: the images as float32 and the assertion ops on their values.

    Raises:
        ValueError: on a wrong shape or a non-floating dtype.
    """
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4 or tuple(images.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"`{name}` must have shape (batch, {', '.join(map(str, image_shape))}); received "
            f"shape {tuple(images.shape)}."
        )
    if not images.dtype.is_floating:
        raise ValueError(
            f"`{name}` must be floating point in [0, 1] (the data contract); received dtype "
            f"{images.dtype.name}."
        )
    images = tf.cast(images, "float32")
    message = f"`{name}` must be in [0, 1] (the data contract);"
    checks = [
        tf.debugging.assert_all_finite(images, f"`{name}` contain NaN or Inf values."),
        tf.debugging.assert_greater_equal(tf.reduce_min(images), 0.0, message=message),
        tf.debugging.assert_less_equal(tf.reduce_max(images), 1.0, message=message),
    ]
    return images, checks


def checked_labels(labels, num_classes, name="labels"):
    """Checks a batch of class labels against the contract.

    Args:
        labels: Integer labels of shape `(batch,)` or `(batch, 1)`.
        num_classes: Labels must be in `[0, num_classes)`.
        name: The argument name shown in messages.

    Returns:
        `(labels, checks)`: the labels as int32 `(batch,)` and the range assertion ops.

    Raises:
        ValueError: on a wrong shape or a non-integer dtype.
    """
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 2 and labels.shape[-1] == 1:
        labels = tf.squeeze(labels, axis=-1)
    if labels.shape.rank != 1 or not labels.dtype.is_integer:
        raise ValueError(
            f"`{name}` must be integer class indices of shape (batch,); received dtype "
            f"{labels.dtype.name} and shape {tuple(labels.shape)}."
        )
    labels = tf.cast(labels, "int32")
    message = f"`{name}` must be in [0, {num_classes}) (num_classes);"
    checks = [
        tf.debugging.assert_greater_equal(tf.reduce_min(labels), 0, message=message),
        tf.debugging.assert_less(tf.reduce_max(labels), num_classes, message=message),
    ]
    return labels, checks


def replica_count():
    """Number of replicas of the current `tf.distribute` strategy (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def global_batch_mean(values):
    """This replica's share of the mean of `values` over the global batch.

    Optimizers sum the replicas' gradients, so each replica contributes the sum of its values
    divided by the global batch size (replicas hold equal batches). On one device it is the
    plain mean. Every model and prior computes its hand-written losses with it.

    Args:
        values: Per-sample values, `(batch, ...)`, or a scalar already averaged over this
            replica's batch.

    Returns:
        A scalar: `mean(values) / replicas`.
    """
    return tf.reduce_mean(values) / replica_count()


def global_value(share):
    """The global-batch value of a replica's share (`share * replicas`), for logs and metrics.

    Args:
        share: A value returned by `global_batch_mean` (or a Keras loss, which already divides
            by the number of replicas).

    Returns:
        The mean over this replica's batch, which Keras metrics then average over replicas.
    """
    return share * replica_count()


def replica_slot():
    """`(number of replicas, this replica's index)` in the current replica context."""
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context: act as the only replica
        return 1, 0
    return context.num_replicas_in_sync, context.replica_id_in_sync_group
