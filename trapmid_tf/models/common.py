"""Helpers shared by the classifier zoo.

PyTorch-matching layers (batch norm defaults, PReLU, symmetric padding, default initialisers),
argument checks, the "logits" head convention and local weight loading.
"""

import math
import numbers
import os

import keras

BN_MOMENTUM = 0.9  # PyTorch momentum 0.1 expressed the Keras way.
BN_EPSILON = 1e-5
PRELU_INIT = 0.25
LOGITS_LAYER_NAME = "logits"
WEIGHTS_SUFFIXES = (".weights.h5", ".keras")


def batch_norm(name, center=True):
    """Returns a `BatchNormalization` with PyTorch's defaults (momentum 0.1, epsilon 1e-5).

    Args:
        name: Layer name.
        center: Whether the layer has a learned offset (beta); False for a bias frozen at 0.
    """
    return keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, center=center, name=name
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
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=keras_padding,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
        name=name,
    )(x)


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
