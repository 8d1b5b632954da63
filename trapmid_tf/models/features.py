"""Views of a classifier that expose its penultimate feature (for attacks and metrics).

Convention: the feature of a classifier is the input of its Dense layer named "logits" (every
builder in `trapmid_tf.models` follows it); failing that, the input of its last layer when that
layer is a Dense. The views share the classifier's layers and weights; nothing is copied.
"""

import keras

from trapmid_tf.models.common import LOGITS_LAYER_NAME
from trapmid_tf.validation import check_model


def _logits_layer(model):
    """Returns the layer whose input is the feature and whose output is the logits."""
    names = [layer.name for layer in model.layers]
    if LOGITS_LAYER_NAME in names:
        return model.get_layer(LOGITS_LAYER_NAME)
    if model.layers and isinstance(model.layers[-1], keras.layers.Dense):
        return model.layers[-1]
    last = f"ends in a {type(model.layers[-1]).__name__}" if model.layers else "has no layers"
    raise ValueError(
        f"`model` must have a Dense layer named {LOGITS_LAYER_NAME!r} (or end in a Dense layer) "
        f"whose input is the feature; received model {model.name!r}, which has no layer named "
        f"{LOGITS_LAYER_NAME!r} and {last}."
    )


def _not_functional_error(model, reason):
    return ValueError(
        f"`model` must be a functional keras.Model (or a Sequential one built from a keras.Input) "
        f"so its feature tensor can be reached; received {type(model).__name__} {model.name!r}: "
        f"{str(reason).rstrip('.')}."
    )


def _feature_and_logits_tensors(model):
    """Returns `(inputs, (features, logits))` symbolic tensors of `model`."""
    check_model("model", model)
    layer = _logits_layer(model)
    try:
        inputs = model.inputs
        tensors = layer.input, layer.output
    except (AttributeError, ValueError) as error:
        raise _not_functional_error(model, error) from None
    if not inputs:
        raise _not_functional_error(model, "it has no symbolic inputs")
    return inputs[0] if len(inputs) == 1 else inputs, tensors


def feature_extractor(model):
    """Returns a model mapping `model`'s inputs to its penultimate feature.

    Args:
        model: A functional (or built Sequential) classifier; see the module convention.

    Returns:
        A `keras.Model` sharing `model`'s layers and weights, outputting the feature.

    Raises:
        ValueError: If `model` does not follow the convention or is not functional.
    """
    inputs, (features, _) = _feature_and_logits_tensors(model)
    return keras.Model(inputs, features, name=f"{model.name}_features")


def feature_layer(model):
    """Returns the layer whose output is `model`'s penultimate feature.

    Args:
        model: A functional (or built Sequential) classifier; see the module convention.

    Returns:
        The layer of `model` whose output is the input of its logits Dense.

    Raises:
        ValueError: If `model` does not follow the convention or is not functional.
    """
    _, (features, _) = _feature_and_logits_tensors(model)
    return next(layer for layer in model.layers if layer.output is features)


def features_and_logits(model):
    """Returns a model mapping `model`'s inputs to `(features, logits)`.

    Args:
        model: A functional (or built Sequential) classifier; see the module convention.

    Returns:
        A `keras.Model` sharing `model`'s layers and weights, outputting `(features, logits)`.

    Raises:
        ValueError: If `model` does not follow the convention or is not functional.
    """
    inputs, (features, logits) = _feature_and_logits_tensors(model)
    return keras.Model(inputs, (features, logits), name=f"{model.name}_features_and_logits")
