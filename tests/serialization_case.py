"""One shared test case for every serializable Keras layer and model of ours.

`check_serializable(case, tmp_path)` runs the checks the house rules ask of each
registered class: its config equals the one a human wrote down, `from_config` rebuilds
it (same config, same outputs once given the same weights), one `fit` step changes the
weights, `model.save` / `keras.models.load_model` keeps the outputs, and a symbolic call
gives the expected output shape.
"""

import dataclasses
from typing import Callable

import keras
import numpy as np

# float32 outputs of the same graph on the same weights: equal up to summation order.
_OUTPUT_TOLERANCE = dict(rtol=1e-5, atol=1e-6)


@dataclasses.dataclass
class SerializableCase:
    """A registered layer or model with what a human expects of it.

    Attributes:
        name: Test id.
        make: Builds a fresh instance with the arguments `config` writes down.
        config: The instance's own config keys and values, written by hand.
        inputs: Fixed numpy inputs (one array per input), batch first.
        output_shape: Expected output shape without the batch dimension.
        apply: Calls the instance on a list of inputs (symbolic or concrete).
        base: The Keras class whose config keys the instance inherits.
        trainable: Whether the instance has weights that a `fit` step must change.
        zero_gradient: Paths of trainable weights whose gradient is zero by construction
            (a bias followed by batch normalisation, which removes any constant shift).
    """

    name: str
    make: Callable[[], keras.layers.Layer]
    config: dict
    inputs: list
    output_shape: tuple
    apply: Callable = lambda layer, inputs: layer(*inputs)
    base: type = keras.layers.Layer
    trainable: bool = True
    zero_gradient: tuple = ()


def _wrap(case, layer):
    """A functional model: `case.inputs` -> the case's call of `layer`."""
    symbolic = [keras.Input(x.shape[1:], dtype=x.dtype) for x in case.inputs]
    outputs = case.apply(layer, symbolic)
    return keras.Model(symbolic, outputs), outputs


def _outputs(model, inputs):
    return keras.ops.convert_to_numpy(model(inputs, training=False))


def check_serializable(case, tmp_path):
    """Runs the shared checks on one case.

    Args:
        case: The `SerializableCase` to check.
        tmp_path: A temporary folder for the saved model.
    """
    keras.utils.set_random_seed(0)  # Initial weights do not depend on which tests ran first.
    layer = case.make()
    config = layer.get_config()
    inherited = set(_base_config(case.base))
    own = {key: config[key] for key in config if key not in inherited or key in case.config}
    assert own == case.config

    model, symbolic_outputs = _wrap(case, layer)
    assert tuple(symbolic_outputs.shape) == (None, *case.output_shape)
    expected = _outputs(model, case.inputs)
    assert expected.shape == (len(case.inputs[0]), *case.output_shape)

    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    clone_model, _ = _wrap(case, clone)
    clone_model.set_weights(model.get_weights())
    np.testing.assert_allclose(_outputs(clone_model, case.inputs), expected, **_OUTPUT_TOLERANCE)

    path = tmp_path / f"{case.name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(_outputs(loaded, case.inputs), expected, **_OUTPUT_TOLERANCE)
    assert [type(x) for x in loaded.layers] == [type(x) for x in model.layers]

    _check_one_fit_step(case, model, layer)


def _check_one_fit_step(case, model, layer):
    """One SGD step on a squared-output loss changes the case's trainable weights."""
    before = [w.numpy().copy() for w in layer.trainable_weights]
    assert bool(before) == case.trainable
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mean_squared_error")
    targets = np.ones_like(_outputs(model, case.inputs)) * 3.0
    model.fit(case.inputs, targets, batch_size=len(case.inputs[0]), epochs=1, verbose=0)
    after = [w.numpy() for w in layer.trainable_weights]
    weights = zip(layer.trainable_weights, before, after)
    unchanged = [w.path for w, b, a in weights if np.array_equal(b, a)]
    assert unchanged == list(case.zero_gradient)


def _base_config(base):
    """The config of a plain `base` instance: the keys every subclass inherits."""
    if issubclass(base, keras.layers.Conv2D):
        return base(filters=1, kernel_size=1).get_config()
    return base().get_config()
