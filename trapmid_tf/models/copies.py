"""Copies of a model with swapped layers: standard Keras ones to deploy, fast ones to attack."""

import os

import keras

from trapmid_tf.layers.fast_grad_conv import FastGradConv2D
from trapmid_tf.layers.fused_batch_norm import FusedBatchNorm


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
        The classifier, as `fast_gradient_copy` makes it, not compiled: the file's training
        configuration (optimizer, loss) is not read, so a file compiled with an optimizer or
        loss that is not registered in this process (e.g. `TorchSGD` before
        `trapmid_tf.optimizers` is imported, or a user's own) loads as well.

    Raises:
        FileNotFoundError: If `path` is not a file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Classifier file {os.fspath(path)!r} does not exist.")
    return fast_gradient_copy(keras.models.load_model(path, compile=False))
