"""Helpers shared by the classifier zoo.

PyTorch-matching layers (batch norm defaults, PReLU, symmetric padding, default initialisers),
the conv layer with fast gradients, the plain-Keras copy for deployment and the fast
copy for attacks, argument checks, the "logits" head convention and local weight loading.
"""

import functools
import math
import numbers
import os

import keras
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port

from trapmid_tf.models.fused_batch_norm import FusedBatchNorm

BN_MOMENTUM = 0.9  # PyTorch momentum 0.1 expressed the Keras way.
BN_EPSILON = 1e-5
PRELU_INIT = 0.25
LOGITS_LAYER_NAME = "logits"
WEIGHTS_SUFFIXES = (".weights.h5", ".keras")
# Output positions up to which `conv2d_kernel_gradient` is a matrix product of input patches.
MATMUL_KERNEL_GRADIENT_MAX_POSITIONS = 4
# Input channels from which convs take TensorFlow's input gradient under oneDNN.
NATIVE_INPUT_GRADIENT_MIN_CHANNELS = 16


def batch_norm(name, center=True, torch_running_variance=False):
    """Returns a `FusedBatchNorm` with PyTorch's defaults (momentum 0.1, epsilon 1e-5).

    Args:
        name: Layer name.
        center: Whether the layer has a learned offset (beta); False for a bias frozen at 0.
        torch_running_variance: Whether training updates the moving variance with the
            unbiased batch variance, as PyTorch does (see `FusedBatchNorm`); else Keras's rule.
    """
    return FusedBatchNorm(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, center=center, name=name,
        torch_running_variance=torch_running_variance,
    )


def prelu(name):
    """Returns a per-channel `PReLU` on NHWC maps, slopes initialised to 0.25 as in PyTorch."""
    return keras.layers.PReLU(
        alpha_initializer=keras.initializers.Constant(PRELU_INIT), shared_axes=[1, 2], name=name
    )


def kaiming_normal_fan_out():
    """Returns a fresh torchvision conv initialiser: `kaiming_normal_(mode="fan_out")` for ReLU."""
    return keras.initializers.VarianceScaling(
        2.0, mode="fan_out", distribution="untruncated_normal"
    )


def conv2d(x, filters, kernel_size, *, strides=1, padding=0, use_bias, kernel_initializer, name):
    """Applies a PyTorch-style `Conv2d(kernel_size, stride, padding)` to `x`.

    Keras 'same' pads stride-2 convs asymmetrically, unlike PyTorch's symmetric `padding`, so
    strided (or unusually padded) convs get an explicit `ZeroPadding2D` and a 'valid' conv. A
    stride-1 conv padded by `(kernel_size - 1) / 2` is identical to 'same' and uses it.

    Args:
        x: NHWC input tensor.
        filters: Output channels.
        kernel_size: Square kernel side.
        strides: Square stride.
        padding: Zeros added on every side, as PyTorch's `padding`.
        use_bias: Whether the conv has a bias.
        kernel_initializer: A fresh initializer instance for this layer.
        name: Conv layer name; the padding layer, if any, is `name + "_pad"`.

    Returns:
        The conv output tensor.
    """
    if strides == 1 and 2 * padding == kernel_size - 1:
        keras_padding = "same"
    else:
        keras_padding = "valid"
        if padding:
            x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    return FastGradConv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=keras_padding,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
        name=name,
    )(x)


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


def plain_keras_copy(model):
    """A copy of `model` made of standard Keras layers, for deployment.

    Every `FastGradConv2D` becomes a `keras.layers.Conv2D` and every `FusedBatchNorm` a
    `keras.layers.BatchNormalization`, of the same config and weights (their forward passes
    agree up to float32 rounding), so `keras.models.load_model` reads the saved copy without
    this package. The copy is not compiled. It is made for inference, which reads the stored
    moving statistics: a `FusedBatchNorm` with `torch_running_variance=True` becomes a
    Keras layer that, if the copy is trained, updates its moving variance by Keras's rule
    (to keep PyTorch's rule, train the original model).

    Args:
        model: A functional or sequential Keras model (nested ones included).

    Returns:
        The copy, or `model` itself when it holds neither.
    """

    def replacement(layer):
        for fast, standard in (
            (FastGradConv2D, keras.layers.Conv2D),
            (FusedBatchNorm, keras.layers.BatchNormalization),
        ):
            if isinstance(layer, fast):
                return standard
        return None

    return _copy_with_layers(model, replacement)


def fast_gradient_copy(model):
    """A copy of `model` with fast input gradients, for attacking it.

    Every plain `keras.layers.Conv2D` that `FastGradConv2D` supports becomes one, and every
    plain `keras.layers.BatchNormalization` a `FusedBatchNorm`, with the same config and
    weights: outputs and gradients are unchanged up to float32 rounding, but inversion
    attacks, which backpropagate to the input at every step, run faster on deep models (e.g.
    a classifier read from a `.keras` file written by `export_classifier`). The copy is not
    compiled.

    Args:
        model: A functional or sequential Keras model (nested ones included).

    Returns:
        The copy, or `model` itself when none of its layers can be replaced.
    """

    def replacement(layer):
        if type(layer) is keras.layers.BatchNormalization:
            return FusedBatchNorm
        supported = (
            type(layer) is keras.layers.Conv2D
            and layer.data_format == "channels_last"
            and tuple(layer.dilation_rate) == (1, 1)
            and layer.groups == 1
        )
        return FastGradConv2D if supported else None

    return _copy_with_layers(model, replacement)


def _copy_with_layers(model, replacement):
    """Clones `model`, building each layer as `replacement(layer)` (a class) or its own class."""
    if not any(replacement(layer) for layer in model._flatten_layers()):
        return model

    def clone(layer):
        new_class = replacement(layer) or type(layer)
        config = layer.get_config()
        if isinstance(layer, FusedBatchNorm) and not issubclass(new_class, FusedBatchNorm):
            del config["torch_running_variance"]  # Keras's layer has Keras's rule only
        return new_class.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def load_classifier(path):
    """Loads a `.keras` classifier to attack or audit, with fast input gradients.

    Args:
        path: A `.keras` file, e.g. written by `export_classifier`.

    Returns:
        The classifier, as `fast_gradient_copy` makes it.

    Raises:
        FileNotFoundError: If `path` is not a file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Classifier file {os.fspath(path)!r} does not exist.")
    return fast_gradient_copy(keras.models.load_model(path))


def max_pool_non_negative(x, pool_size, strides, padding, name):
    """PyTorch `MaxPool2d(pool_size, strides, padding)` for non-negative input (e.g. after ReLU).

    PyTorch pads max pooling with -inf; on non-negative input zero padding gives the same result.
    """
    x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    return keras.layers.MaxPooling2D(pool_size, strides=strides, name=name)(x)


def torch_default_kernel():
    """Returns a fresh PyTorch default conv/linear weight initialiser, U(±1/√fan_in).

    Keras's fan_in of a `Conv2DTranspose` kernel (out·k·k) is the one PyTorch uses for
    `ConvTranspose2d` too, so the same initialiser fits every layer.
    """
    return keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform")


def torch_default_bias(fan_in):
    """Returns a fresh PyTorch default bias initialiser, U(±1/√fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def xavier_uniform(gain=1.0):
    """Returns a fresh Xavier-uniform initialiser with PyTorch's `gain`."""
    return keras.initializers.VarianceScaling(gain**2, mode="fan_avg", distribution="uniform")


def torch_default_dense(units, fan_in, name):
    """Returns a `Dense` initialised like PyTorch's `nn.Linear` (weights and bias U(±1/√fan_in))."""
    return keras.layers.Dense(
        units,
        kernel_initializer=torch_default_kernel(),
        bias_initializer=torch_default_bias(fan_in),
        name=name,
    )


def check_positive_int(name, value):
    """Raises ValueError unless `value` is an integer >= 1.

    Args:
        name: Argument name shown in the message.
        value: The value to check.

    Raises:
        ValueError: If `value` is not an integer >= 1.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1; received {value!r}.")


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
    integral = all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in shape)
    if len(shape) != 3 or not integral or min(shape[:2]) < min_size or shape[2] < 1:
        raise ValueError(expected)
    return tuple(int(d) for d in shape)


def load_weights(model, weights):
    """Loads weights from a local Keras file into `model`; nothing is ever downloaded.

    Args:
        model: The freshly built model.
        weights: None (keep the initialisation) or the path of a `.weights.h5` or `.keras` file
            saved from a model of the same architecture.

    Raises:
        ValueError: If the path does not end in `.weights.h5` or `.keras`.
        FileNotFoundError: If the file does not exist.
    """
    if weights is None:
        return
    path = os.fspath(weights)
    if not path.endswith(WEIGHTS_SUFFIXES):
        raise ValueError(
            f"`weights` must be None or a path ending in {' or '.join(WEIGHTS_SUFFIXES)}; "
            f"received {path!r}."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Weights file not found: {path!r}. trapmid_tf never downloads weights; pass the path "
            f"of a local `.weights.h5` (from `model.save_weights`) or `.keras` (from `model.save`) "
            f"file of the same architecture, or `weights=None` for a random initialisation."
        )
    model.load_weights(path)


def classifier_model(inputs, features, num_classes, weights, name):
    """Adds the "logits" Dense head on `features` and returns the functional model.

    Args:
        inputs: The model's `keras.Input`.
        features: The penultimate feature tensor, shape (batch, dim).
        num_classes: Number of logits.
        weights: None or a local weights path, see `load_weights`.
        name: Model name.

    Returns:
        A `keras.Model` mapping images to logits (no softmax).
    """
    logits = torch_default_dense(num_classes, features.shape[-1], LOGITS_LAYER_NAME)(features)
    model = keras.Model(inputs, logits, name=name)
    load_weights(model, weights)
    return model
