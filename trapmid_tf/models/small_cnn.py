"""A small CNN for the embedded 32x32 digits dataset: quick on CPU, accurate on digits."""

import keras

from trapmid_tf.models import common, torch_layers
from trapmid_tf.validation import check_input_shape, check_positive_int

WIDTH_MULTIPLIERS = (1, 2, 4)  # channels of the conv blocks, in units of `width`
MIN_SIZE = 2 ** len(WIDTH_MULTIPLIERS)


def _maybe_batch_norm(x, batch_norm, name, torch_running_variance):
    if not batch_norm:
        return x
    return torch_layers.batch_norm(name, torch_running_variance=torch_running_variance)(x)


def small_cnn(
    input_shape,
    num_classes,
    weights=None,
    name="small_cnn",
    *,
    width=32,
    feature_dim=128,
    batch_norm=True,
    torch_running_variance=False,
):
    """Builds a small CNN: 3 x [conv3x3 + BN + ReLU + 2x2 max pool] -> Dense feature -> logits.

    Conv channels are `width`, 2·`width`, 4·`width`. The feature is
    ReLU(BN(Dense(feature_dim)(flatten))). With `batch_norm=False` no BatchNormalization
    layer is built and the conv/dense layers get biases instead, so the model has no
    batch-dependent state (e.g. for comparing 1 vs 2 replicas exactly).

    Args:
        input_shape: (height, width, channels), height and width >= 8.
        num_classes: Number of logits, >= 1.
        weights: None, or a local `.weights.h5` / `.keras` file to load after building.
        name: Model name.
        width: Channels of the first conv block, >= 1.
        feature_dim: Size of the penultimate feature, >= 1.
        batch_norm: Whether to normalise after every conv and the feature Dense.
        torch_running_variance: Whether the batch norms update their moving variance as
            PyTorch does (`FusedBatchNorm`), as the reference's presets train; else as Keras.

    Returns:
        A functional `keras.Model` mapping float32 images in [0, 1] to logits; the final Dense is
        named "logits".

    Raises:
        ValueError: On a bad `input_shape`, `num_classes`, `width` or `feature_dim`.
        FileNotFoundError: If `weights` names a missing file.

    Example:
        >>> model = small_cnn((32, 32, 1), num_classes=5)
        >>> model.output_shape, model.get_layer("logits").units
        ((None, 5), 5)
    """
    input_shape = check_input_shape(input_shape, MIN_SIZE, "small_cnn")
    check_positive_int("num_classes", num_classes)
    check_positive_int("width", width)
    check_positive_int("feature_dim", feature_dim)
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for block, multiplier in enumerate(WIDTH_MULTIPLIERS, start=1):
        x = torch_layers.conv2d(
            x,
            width * multiplier,
            3,
            padding=1,
            use_bias=not batch_norm,
            kernel_initializer=torch_layers.kaiming_normal_fan_out(),
            name=f"block{block}_conv",
        )
        x = _maybe_batch_norm(x, batch_norm, f"block{block}_bn", torch_running_variance)
        x = keras.layers.ReLU(name=f"block{block}_relu")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(
        feature_dim,
        use_bias=not batch_norm,
        kernel_initializer=keras.initializers.HeNormal(),
        name="feature_dense",
    )(x)
    x = _maybe_batch_norm(x, batch_norm, "feature_bn", torch_running_variance)
    features = keras.layers.ReLU(name="feature_relu")(x)
    return common.classifier_model(inputs, features, num_classes, weights, name)
