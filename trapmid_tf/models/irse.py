"""IR-50 / IR-152 face classifiers (FaceNet64 and IR152 in the Trap-MID reference).

The body follows face.evoLVe's improved-residual (IR) backbone; the head is
BN2d -> Dropout(0.5) -> Flatten -> Dense(512) -> BN1d (the 512-d feature) -> Dense logits.
At 112x112 input the same network is the FaceNet evaluation model's shape (feature from 512x7x7).
"""

import keras

from trapmid_tf.models import common

STAGE_DEPTHS = (64, 128, 256, 512)
IR50_UNITS = (3, 4, 14, 3)
IR152_UNITS = (3, 8, 36, 3)
FEATURE_DIM = 512
DROPOUT_RATE = 0.5
MIN_SIZE = 2 ** len(STAGE_DEPTHS)


def _conv(x, filters, kernel_size, strides, padding, name):
    return common.conv2d(
        x,
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer=keras.initializers.GlorotUniform(),
        name=name,
    )


def _bottleneck_ir(x, depth, strides, name):
    """IR unit: BN -> conv3x3 -> PReLU -> conv3x3 (stride) -> BN, plus a shortcut; no activation.

    The shortcut subsamples (a 1x1 max pool) when the channel count is kept, else it is a
    strided 1x1 conv + BN.
    """
    if x.shape[-1] == depth:
        shortcut = x
        if strides != 1:
            shortcut = keras.layers.MaxPooling2D(1, strides=strides, name=f"{name}_subsample")(x)
    else:
        shortcut = _conv(x, depth, 1, strides, 0, f"{name}_shortcut_conv")
        shortcut = common.batch_norm(f"{name}_shortcut_bn")(shortcut)
    y = common.batch_norm(f"{name}_bn1")(x)
    y = _conv(y, depth, 3, 1, 1, f"{name}_conv1")
    y = common.prelu(f"{name}_prelu")(y)
    y = _conv(y, depth, 3, strides, 1, f"{name}_conv2")
    y = common.batch_norm(f"{name}_bn2")(y)
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def _ir_body(inputs, units):
    """Stem (conv3x3 + BN + PReLU) and four IR stages; the first unit of each stage has stride 2."""
    x = _conv(inputs, STAGE_DEPTHS[0], 3, 1, 1, "stem_conv")
    x = common.batch_norm("stem_bn")(x)
    x = common.prelu("stem_prelu")(x)
    for stage, (depth, count) in enumerate(zip(STAGE_DEPTHS, units), start=1):
        for unit in range(count):
            x = _bottleneck_ir(x, depth, 2 if unit == 0 else 1, f"stage{stage}_unit{unit}")
    return x


def _ir_classifier(arch, units, input_shape, num_classes, weights, name, dropout_seed):
    input_shape = common.check_input_shape(input_shape, MIN_SIZE, arch)
    common.check_positive_int("num_classes", num_classes)
    inputs = keras.Input(input_shape, name="image")
    x = _ir_body(inputs, units)
    x = common.batch_norm("head_bn2d")(x)
    x = keras.layers.Dropout(DROPOUT_RATE, seed=dropout_seed, name="head_dropout")(x)
    x = keras.layers.Flatten(name="head_flatten")(x)
    x = common.torch_default_dense(FEATURE_DIM, x.shape[-1], "head_dense")(x)
    features = common.batch_norm("feature_bn")(x)
    return common.classifier_model(inputs, features, num_classes, weights, name)


def facenet64(input_shape, num_classes, weights=None, name="facenet64", dropout_seed=None):
    """Builds FaceNet64: an IR-50 body (units 3, 4, 14, 3) and the 512-d BN feature head.

    Body convs use Xavier-uniform initialisation (as face.evoLVe); the head Dense layers use
    PyTorch's `nn.Linear` default. Stride-2 convs pad symmetrically (explicit zero padding).

    Args:
        input_shape: (height, width, channels), height and width >= 16 (64 in the reference).
        num_classes: Number of logits, >= 1.
        weights: None, or a local `.weights.h5` / `.keras` file to load after building.
        name: Model name.
        dropout_seed: Optional int seed of the head dropout, for reproducible training.

    Returns:
        A functional `keras.Model` mapping float32 images in [0, 1] to logits; the final Dense is
        named "logits".

    Raises:
        ValueError: On a bad `input_shape` or `num_classes`.
        FileNotFoundError: If `weights` names a missing file.
    """
    return _ir_classifier(
        "facenet64", IR50_UNITS, input_shape, num_classes, weights, name, dropout_seed
    )


def ir152(input_shape, num_classes, weights=None, name="ir152", dropout_seed=None):
    """Builds IR152: `facenet64` with an IR-152 body (units 3, 8, 36, 3).

    Args:
        input_shape: (height, width, channels), height and width >= 16 (64 in the reference).
        num_classes: Number of logits, >= 1.
        weights: None, or a local `.weights.h5` / `.keras` file to load after building.
        name: Model name.
        dropout_seed: Optional int seed of the head dropout, for reproducible training.

    Returns:
        A functional `keras.Model` mapping float32 images in [0, 1] to logits; the final Dense is
        named "logits".

    Raises:
        ValueError: On a bad `input_shape` or `num_classes`.
        FileNotFoundError: If `weights` names a missing file.
    """
    return _ir_classifier(
        "ir152", IR152_UNITS, input_shape, num_classes, weights, name, dropout_seed
    )
