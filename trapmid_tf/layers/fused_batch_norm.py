"""`FusedBatchNorm`: Keras's batch normalization computed by TensorFlow's fused kernel."""

import functools

import keras
import tensorflow as tf

# cuDNN refuses an epsilon below 1e-5 (TensorFlow's own wrapper raises smaller ones to this).
CUDNN_MIN_EPSILON = 1.001e-5


@functools.cache
def _has_gpu():
    return bool(tf.config.list_physical_devices("GPU"))


@keras.saving.register_keras_serializable(package="trapmid_tf")
class FusedBatchNorm(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` run as one `FusedBatchNormV3` kernel and its gradient.

    Keras 3 normalizes with separate ops (moments, then scale and shift) and differentiates
    through each; TensorFlow's fused kernel does the forward pass and the backward pass in
    one op each, about twice as fast on CPU. Outputs, gradients and the moving statistics are
    those of `BatchNormalization` (the moving variance is updated with the biased batch
    variance, as Keras does); weights, names and config are the same, plus
    `torch_running_variance`.

    With `torch_running_variance=True` training updates the moving variance as PyTorch's
    BatchNorm updates `running_var`: with the unbiased batch variance, `n / (n - 1)` times the
    biased one, n being the number of values per channel in the batch (batch x height x
    width, or the unmasked values). The batch is still normalized with the biased variance,
    as both libraries do. Models copied from the PyTorch reference use it (docs/
    reference_comparison.md): their moving statistics then follow the reference's, which
    matters where training itself runs layers in inference mode (Trap-MID's trigger step).
    A batch of one value per channel (n = 1), which PyTorch refuses in training, updates the
    moving variance with its biased variance, 0, under either rule (no inf or nan).

    The fused kernel serves channels-last inputs of rank 2 or 4 without a mask, renorm or
    synchronized statistics. Any other call, and layers whose epsilon cuDNN refuses
    (below 1.001e-5) when a GPU is visible, take Keras's own path, where PyTorch's rule
    replaces Keras's moving-variance update after it.

    Args:
        *args: `keras.layers.BatchNormalization` arguments.
        torch_running_variance: Whether training updates the moving variance with the
            unbiased batch variance (PyTorch's rule) instead of the biased one (Keras's).
        **kwargs: `keras.layers.BatchNormalization` arguments.

    Raises:
        ValueError: If `torch_running_variance` is not a bool, or is True together with
            `renorm` or `synchronized` (whose moving statistics PyTorch's rule does not cover).
    """

    def __init__(self, *args, torch_running_variance=False, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(torch_running_variance, bool):
            raise ValueError(
                "`torch_running_variance` must be True or False; received "
                f"{torch_running_variance!r}."
            )
        if torch_running_variance and (self.renorm or self.synchronized):
            raise ValueError(
                "`torch_running_variance=True` needs renorm=False and synchronized=False; "
                f"received renorm={self.renorm!r}, synchronized={self.synchronized!r}."
            )
        self.torch_running_variance = torch_running_variance

    def call(self, inputs, training=None, mask=None):
        """Normalizes `inputs` as `BatchNormalization.call` does.

        Args:
            inputs: The input tensor.
            training: Whether to normalize with batch statistics (and update the moving
                ones) rather than the moving statistics.
            mask: Optional mask, as `BatchNormalization` takes it.

        Returns:
            The normalized tensor, in the layer's compute dtype.
        """
        if not self._fused_kernel_applies(inputs, mask):
            if not (training and self.trainable and self.torch_running_variance):
                return super().call(inputs, training=training, mask=mask)
            return self._keras_call_with_torch_running_variance(inputs, mask)
        x = tf.cast(inputs, "float32")
        if len(x.shape) == 2:
            x = x[:, None, None, :]
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, x.dtype) if self.scale else tf.ones((channels,), x.dtype)
        beta = tf.cast(self.beta, x.dtype) if self.center else tf.zeros((channels,), x.dtype)
        if training and self.trainable:
            outputs, mean, unbiased_variance, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta, mean=tf.zeros((0,)), variance=tf.zeros((0,)),
                epsilon=self.epsilon, is_training=True,
            )
            self._update_moving_statistics(inputs, mean, unbiased_variance)
        else:
            outputs, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta, mean=tf.cast(self.moving_mean, x.dtype),
                variance=tf.cast(self.moving_variance, x.dtype), epsilon=self.epsilon,
                is_training=False,
            )
        if len(inputs.shape) == 2:
            outputs = outputs[:, 0, 0, :]
        return tf.cast(outputs, self.compute_dtype)

    def _fused_kernel_applies(self, inputs, mask):
        rank = len(inputs.shape)
        return (
            mask is None
            and rank in (2, 4)
            and self.axis in (-1, rank - 1)
            and not self.renorm
            and not self.synchronized
            and (self.epsilon >= CUDNN_MIN_EPSILON or not _has_gpu())
        )

    def _keras_call_with_torch_running_variance(self, inputs, mask):
        """Keras's training call, then the moving variance updated by PyTorch's rule instead."""
        previous = tf.identity(self.moving_variance)
        outputs = super().call(inputs, training=True, mask=mask)
        x = tf.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        _, biased_variance = self._moments(x, mask)
        count = self._values_per_channel(inputs, mask, x.dtype)
        unbiased_variance = biased_variance * count / tf.maximum(count - 1.0, 1.0)
        self.moving_variance.assign(
            tf.cast(previous, x.dtype) * self.momentum
            + unbiased_variance * (1.0 - self.momentum)
        )
        return outputs

    def _values_per_channel(self, inputs, mask, dtype):
        """n: the batch's values per channel (the unmasked ones), as `dtype`."""
        if mask is not None:
            return tf.reduce_sum(tf.cast(mask, dtype))
        sizes = tf.gather(tf.shape(inputs), self._reduction_axes)
        return tf.cast(tf.reduce_prod(sizes), dtype)

    def _update_moving_statistics(self, inputs, mean, unbiased_variance):
        """The moving-average update from the kernel's Bessel-corrected variance.

        Keras's rule takes the biased variance back from it; PyTorch's takes it as it is.
        One value per channel has variance 0, whatever the kernel's correction gives there.
        """
        count = self._values_per_channel(inputs, None, mean.dtype)
        variance = unbiased_variance
        if not self.torch_running_variance:
            variance = unbiased_variance * (count - 1.0) / tf.maximum(count, 1.0)
        variance = tf.where(count > 1.0, variance, tf.zeros_like(variance))
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            current = tf.cast(moving, mean.dtype)
            moving.assign(current * self.momentum + batch * (1.0 - self.momentum))

    def get_config(self):
        """The `BatchNormalization` config plus `torch_running_variance`."""
        return {**super().get_config(), "torch_running_variance": self.torch_running_variance}
