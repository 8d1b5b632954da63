"""VGG16-BN classifier (the Trap-MID CelebA target and the MNIST evaluation model)."""

import keras

from trapmid_tf.models import common, torch_layers
from trapmid_tf.validation import check_input_shape, check_positive_int

# (channels, convs) per block; each block ends in a 2x2 max pool (torchvision vgg16_bn.features).
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
MIN_SIZE = 2 ** len(VGG16_BLOCKS)


def vgg16_bn(
    input_shape, num_classes, weights=None, name="vgg16_bn", torch_running_variance=False
):
    """Builds VGG16-BN: 13 conv3x3+BN+ReLU layers in 5 pooled blocks, then a BN feature and logits.

    The feature is the flattened last block (512·(H/32)·(W/32); 2048 at 64x64, 512 at 32x32)
    after a `BatchNormalization(center=False)`, i.e. the reference's BatchNorm1d whose bias is
    frozen at 0. Flattening is in HWC order (PyTorch's is CHW).

    Args:
        input_shape: (height, width, channels), height and width >= 32.
        num_classes: Number of logits, >= 1.
        weights: None, or a local `.weights.h5` / `.keras` file to load after building.
        name: Model name.
        torch_running_variance: Whether the batch norms update their moving variance as
            PyTorch does (`FusedBatchNorm`), e.g. to train as the reference; else as Keras.

    Returns:
        A functional `keras.Model` mapping float32 images in [0, 1] to logits; the final Dense is
        named "logits".

    Raises:
        ValueError: On a bad `input_shape` or `num_classes`.
        FileNotFoundError: If `weights` names a missing file.
    """
    input_shape = check_input_shape(input_shape, MIN_SIZE, "vgg16_bn")
    check_positive_int("num_classes", num_classes)
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for block, (filters, convs) in enumerate(VGG16_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            prefix = f"block{block}_conv{conv}"
            x = torch_layers.conv2d(
                x,
                filters,
                3,
                padding=1,
                use_bias=True,
                kernel_initializer=torch_layers.kaiming_normal_fan_out(),
                name=prefix,
            )
            x = torch_layers.batch_norm(
                f"{prefix}_bn", torch_running_variance=torch_running_variance
            )(x)
            x = keras.layers.ReLU(name=f"{prefix}_relu")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    features = torch_layers.batch_norm(
        "feature_bn", center=False, torch_running_variance=torch_running_variance
    )(x)
    return common.classifier_model(inputs, features, num_classes, weights, name)
