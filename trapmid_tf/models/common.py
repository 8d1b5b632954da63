"""The zoo's "logits" head convention and local weight loading."""

import os

import keras

from trapmid_tf.models.torch_layers import torch_default_dense

LOGITS_LAYER_NAME = "logits"
WEIGHTS_SUFFIXES = (".weights.h5", ".keras")


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
