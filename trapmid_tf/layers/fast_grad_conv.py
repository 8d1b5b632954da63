"""`FastGradConv2D`: Keras's `Conv2D` with faster gradients, and the gradient functions."""

import functools

import keras
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port

# Output positions up to which `conv2d_kernel_gradient` is a matrix product of input patches.
MATMUL_KERNEL_GRADIENT_MAX_POSITIONS = 4
# Input channels from which convs take TensorFlow's input gradient under oneDNN.
NATIVE_INPUT_GRADIENT_MIN_CHANNELS = 16


def _same_padding(size, kernel_size, stride):
    """Returns TensorFlow's (before, after) 'same' padding of one spatial axis."""
    outputs = (size + stride - 1) // stride
    total = tf.maximum((outputs - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


def _phase_kernel(kernel, strides):
    """The kernel of the phase-split input gradient, `(th, tw, out, sh * sw * in)`.

    Output channel `(p * sw + q) * in + c` of the result holds, for input rows `≡ p (mod sh)`
    and columns `≡ q (mod sw)`, the taps `kernel[t * sh + p, u * sw + q, c, :]`, in reverse
    order of `t` and `u` and with in/out channels swapped; taps past the kernel are zero.
    """
    (kh, kw, cin, cout), (sh, sw) = kernel.shape, strides
    th, tw = -(-kh // sh), -(-kw // sw)
    padded = tf.pad(kernel, [[0, th * sh - kh], [0, tw * sw - kw], [0, 0], [0, 0]])
    taps = tf.reverse(tf.reshape(padded, [th, sh, tw, sw, cin, cout]), [0, 2])
    return tf.reshape(tf.transpose(taps, [0, 2, 5, 1, 3, 4]), [th, tw, cout, sh * sw * cin])


def _interleave_phases(phases, strides):
    """Puts phase `(p, q)` of `(n, m, l, sh * sw * c)` at rows `p::sh`, columns `q::sw`."""
    sh, sw = strides
    shape = tf.shape(phases)
    n, m, l = shape[0], shape[1], shape[2]
    c = shape[3] // (sh * sw)
    blocks = tf.reshape(phases, [n, m, l, sh, sw, c])
    return tf.reshape(tf.transpose(blocks, [0, 1, 3, 2, 4, 5]), [n, m * sh, l * sw, c])


def conv2d_input_gradient(upstream, kernel, input_shape, strides, padding):
    """Gradient of a 2-D NHWC convolution with respect to its input, as a forward convolution.

    Input row `i = m * s + p` (phase `p`) receives `sum_t upstream[m - t] * kernel[t * s + p]`,
    a stride-1 correlation of the upstream gradient with the phase's taps. All `s * s` phases
    run as one stride-1 convolution (`_phase_kernel`) and are then interleaved back
    (`_interleave_phases`); only the input's own rows and columns (not its 'same' padding)
    are computed. The result is what `Conv2DBackpropInput` computes, but made of a forward
    convolution, which oneDNN runs far faster on small maps with many channels.

    Args:
        upstream: Gradient of the loss with respect to the conv output, NHWC.
        kernel: The conv kernel, `(kh, kw, in_channels, out_channels)`, of static shape.
        input_shape: Shape of the conv input, a 1-D int tensor `(n, h, w, in_channels)`.
        strides: `(sh, sw)`, Python ints.
        padding: "SAME" or "VALID" (TensorFlow's meaning).

    Returns:
        The input gradient, shape `input_shape`.
    """
    paddings, crops = [[0, 0]], []
    for axis, stride in ((1, strides[0]), (2, strides[1])):
        size, kernel_size = input_shape[axis], kernel.shape[axis - 1]
        before, after = _same_padding(size, kernel_size, stride) if padding == "SAME" else (0, 0)
        taps = -(-kernel_size // stride)
        first, last = before // stride, (before + size + stride - 1) // stride
        outputs = tf.shape(upstream)[axis]
        paddings.append([taps - 1 - first, last - outputs])
        crops.append(before - first * stride)
    paddings.append([0, 0])
    phases = tf.nn.conv2d(tf.pad(upstream, paddings), _phase_kernel(kernel, strides), 1, "VALID")
    gradient = phases if tuple(strides) == (1, 1) else _interleave_phases(phases, strides)
    return gradient[
        :, crops[0] : crops[0] + input_shape[1], crops[1] : crops[1] + input_shape[2]
    ]


def conv2d_kernel_gradient(inputs, upstream, kernel_shape, strides, padding):
    """Gradient of a 2-D NHWC convolution with respect to its kernel.

    On output maps of at most `MATMUL_KERNEL_GRADIENT_MAX_POSITIONS` positions (e.g. the 2x2
    maps of ResNet's last stage on 64x64 images) it is one matrix product,
    `patches^T @ upstream` over every sample and output position, where `patches` are the
    input's `(kh, kw, in)` patches (im2col): oneDNN's backward-weights kernel takes 2 to 9
    times as long there on CPU. Elsewhere, and on maps of unknown size, it is TensorFlow's
    `Conv2DBackpropFilter`. Both compute the same sums (in a different order).

    Args:
        inputs: The conv input, NHWC.
        upstream: Gradient of the loss with respect to the conv output, NHWC.
        kernel_shape: `(kh, kw, in_channels, out_channels)`, Python ints.
        strides: `(sh, sw)`, Python ints.
        padding: "SAME" or "VALID" (TensorFlow's meaning).

    Returns:
        The kernel gradient, shape `kernel_shape`.
    """
    positions = upstream.shape[1:3].num_elements()
    if positions is None or positions > MATMUL_KERNEL_GRADIENT_MAX_POSITIONS:
        return tf.raw_ops.Conv2DBackpropFilter(
            input=inputs,
            filter_sizes=kernel_shape,
            out_backprop=upstream,
            strides=[1, *strides, 1],
            padding=padding,
        )
    kh, kw, in_channels, out_channels = kernel_shape
    patches = tf.image.extract_patches(
        inputs, [1, kh, kw, 1], [1, *strides, 1], [1, 1, 1, 1], padding
    )
    product = tf.matmul(
        tf.reshape(patches, [-1, kh * kw * in_channels]),
        tf.reshape(upstream, [-1, out_channels]),
        transpose_a=True,
    )
    return tf.reshape(product, kernel_shape)


@functools.cache
def _onednn_kernels_on():
    return bool(_pywrap_util_port.IsMklEnabled())


def _input_gradient(upstream, kernel, input_shape, strides, padding):
    """The conv's input gradient, by whichever of two equal computations is faster here.

    TensorFlow's own CPU kernel for `Conv2DBackpropInput` takes up to 50 times as long as the
    forward conv on small, wide maps (ResNet's 2x2x512 stage on 64x64 images), so the input
    gradient is normally `conv2d_input_gradient`, a forward convolution. With oneDNN's CPU
    kernels (on if TensorFlow was imported with them, by its default or after
    `trapmid_tf.startup.import_tensorflow`), `Conv2DBackpropInput` is as fast for stride 1
    and faster for strided convs, where the forward form multiplies the zero taps of its
    phase kernels (16 taps for 9 at 3x3 stride 2), once the conv has
    `NATIVE_INPUT_GRADIENT_MIN_CHANNELS` input channels (not a 3-channel 7x7 stem); those
    convs take TensorFlow's kernel.
    """
    if _onednn_kernels_on() and kernel.shape[2] >= NATIVE_INPUT_GRADIENT_MIN_CHANNELS:
        return tf.raw_ops.Conv2DBackpropInput(
            input_sizes=input_shape,
            filter=kernel,
            out_backprop=upstream,
            strides=[1, *strides, 1],
            padding=padding,
        )
    return conv2d_input_gradient(upstream, kernel, input_shape, strides, padding)


def _conv2d_fast_grad(inputs, kernel, strides, padding):
    """`tf.nn.conv2d` with `_input_gradient` and `conv2d_kernel_gradient` (same values)."""

    @tf.custom_gradient
    def convolve(inputs, kernel):
        def gradient(upstream):
            input_gradient = _input_gradient(
                upstream, kernel, tf.shape(inputs), strides, padding
            )
            kernel_gradient = conv2d_kernel_gradient(
                inputs, upstream, kernel.shape.as_list(), strides, padding
            )
            return input_gradient, kernel_gradient

        return tf.nn.conv2d(inputs, kernel, [1, *strides, 1], padding), gradient

    return convolve(inputs, kernel)


@keras.saving.register_keras_serializable(package="trapmid_tf")
class FastGradConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` (channels-last, no dilation or groups) with a faster backward pass.

    The forward pass and all gradients are those of `Conv2D`. Only how the gradients are
    computed changes, for speed on the small, wide maps of deep networks (e.g. ResNet's
    2x2x512 stage on 64x64 images) on CPU: the input gradient as a forward convolution
    (`conv2d_input_gradient`) where TensorFlow's `Conv2DBackpropInput` is slower
    (`_input_gradient`), and the kernel gradient of maps of at most 4 positions as a matrix
    product (`conv2d_kernel_gradient`). Weights, names and config are those of `Conv2D`.

    Args:
        *args: `keras.layers.Conv2D` arguments.
        **kwargs: `keras.layers.Conv2D` arguments.

    Raises:
        ValueError: If `data_format` is "channels_first", or `dilation_rate` or `groups` is
            not 1.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if (
            self.data_format != "channels_last"
            or tuple(self.dilation_rate) != (1, 1)
            or self.groups != 1
        ):
            raise ValueError(
                "FastGradConv2D supports data_format='channels_last', dilation_rate=1 and "
                f"groups=1; received data_format={self.data_format!r}, "
                f"dilation_rate={self.dilation_rate!r}, groups={self.groups!r}."
            )

    def convolution_op(self, inputs, kernel):
        """The convolution of `Conv2D`, with the faster gradients the class describes.

        Args:
            inputs: NHWC input tensor.
            kernel: The kernel, `(kh, kw, in_channels, filters)`.

        Returns:
            The convolution's output, before bias and activation.
        """
        return _conv2d_fast_grad(
            tf.convert_to_tensor(inputs),
            tf.convert_to_tensor(kernel),
            tuple(self.strides),
            self.padding.upper(),
        )
