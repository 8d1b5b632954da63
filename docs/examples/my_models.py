"""A classifier of one's own, in plain Keras: docs/your_model_your_data.md trains it.

`trapmid-train --model=my_models:build` (with this folder on PYTHONPATH) calls
`build(input_shape, num_classes)`. The network has the shape of the headline benchmark's target
(`trapmid_tf.models.small_cnn`): three blocks of 3x3 convolution, batch norm, ReLU and 2x2 max
pooling (32, 64, 128 channels), a 128-unit feature, then the logits. It uses Keras's own layers
and initialisers only, so the saved `classifier.keras` loads anywhere Keras does.
"""

import keras


def build(input_shape, num_classes):
    """The classifier: float32 images in [0, 1] -> `num_classes` logits (no softmax).

    Args:
        input_shape: `(height, width, channels)` of the images.
        num_classes: Number of classes.

    Returns:
        An uncompiled functional `keras.Model` whose last layer is the logits Dense (the
        attacks that read the penultimate feature find it there).
    """
    images = keras.Input(input_shape)
    x = images
    for channels in (32, 64, 128):
        x = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    feature = keras.layers.ReLU()(x)
    return keras.Model(images, keras.layers.Dense(num_classes, name="logits")(feature))
