"""PyTorch-matching layers and initialisers of the zoo.

Batch norm defaults, PReLU, symmetric padding, max pooling and PyTorch's default initialisers.
"""

import math

import keras

from trapmid_tf.layers.fast_grad_conv import FastGradConv2D
from trapmid_tf.layers.fused_batch_norm import FusedBatchNorm

BN_MOMENTUM = 0.9  # PyTorch momentum 0.1 expressed the Keras way.
BN_EPSILON = 1e-5
PRELU_INIT = 0.25


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
