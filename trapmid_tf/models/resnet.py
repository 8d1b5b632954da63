"""IR-18: torchvision ResNet-18 (the Trap-MID MNIST target)."""

import keras

from trapmid_tf.models import common, torch_layers
from trapmid_tf.validation import check_input_shape, check_positive_int

STAGE_FILTERS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = 2
MIN_SIZE = 32  # stem stride 2, max pool stride 2, three stride-2 stages


def _conv(x, filters, kernel_size, strides, padding, name):
    return torch_layers.conv2d(
        x,
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer=torch_layers.kaiming_normal_fan_out(),
        name=name,
    )


def _basic_block(x, filters, strides, name, torch_running_variance):
    """ResNet BasicBlock: relu(bn(conv3x3(relu(bn(conv3x3_s(x))))) + shortcut(x))."""
    y = _conv(x, filters, 3, strides, 1, f"{name}_conv1")
    y = torch_layers.batch_norm(f"{name}_bn1", torch_running_variance=torch_running_variance)(y)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(y, filters, 3, 1, 1, f"{name}_conv2")
    y = torch_layers.batch_norm(f"{name}_bn2", torch_running_variance=torch_running_variance)(y)
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv(x, filters, 1, strides, 0, f"{name}_downsample")
        shortcut = torch_layers.batch_norm(
            f"{name}_downsample_bn", torch_running_variance=torch_running_variance
        )(shortcut)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def ir18(input_shape, num_classes, weights=None, name="ir18", torch_running_variance=False):
    """Builds IR-18 (torchvision ResNet-18): a 512-d global-average-pooled feature, then logits.

    Strided convs and the stem max pool use PyTorch's symmetric padding (explicit zero padding
    and 'valid'), not Keras 'same'.

    Args:
        input_shape, num_classes, weights, name, torch_running_variance: As
            `trapmid_tf.models.vgg16_bn`.

    Returns:
        The model, as `vgg16_bn` describes it.

    Raises:
        ValueError, FileNotFoundError: As `vgg16_bn`.
    """
    input_shape = check_input_shape(input_shape, MIN_SIZE, "ir18")
    check_positive_int("num_classes", num_classes)
    inputs = keras.Input(input_shape, name="image")
    x = _conv(inputs, 64, 7, 2, 3, "stem_conv")
    x = torch_layers.batch_norm("stem_bn", torch_running_variance=torch_running_variance)(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = torch_layers.max_pool_non_negative(x, 3, 2, 1, "stem_pool")
    for stage, filters in enumerate(STAGE_FILTERS, start=1):
        for block in range(BLOCKS_PER_STAGE):
            strides = 2 if stage > 1 and block == 0 else 1
            x = _basic_block(
                x, filters, strides, f"layer{stage}_block{block}", torch_running_variance
            )
    features = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return common.classifier_model(inputs, features, num_classes, weights, name)
