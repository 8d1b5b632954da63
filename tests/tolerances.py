"""Tolerances for float32 results, derived from the arithmetic that produced them.

A float32 rounding changes a value by at most `FLOAT32_EPS / 2` relative; a sum of n terms
computed in another order (another CPU's kernels, oneDNN on or off, a fused op in place of
separate ones) differs by at most about `n * FLOAT32_EPS` times the sum of the terms'
magnitudes. So an absolute tolerance is `roundings * FLOAT32_EPS * magnitude`, where
`magnitude` bounds the values that were rounded (not the result, which may be near zero
after cancellation) and `roundings` counts the roundings along the longest chain of
operations. Tests say in a comment where both numbers come from.
"""

import numpy as np

FLOAT32_EPS = float(np.finfo(np.float32).eps)  # 2**-23, about 1.19e-7


def float32_atol(magnitude, roundings):
    """The absolute difference that float32 rounding alone can explain.

    Args:
        magnitude: Bound on the magnitude of the values that were rounded (> 0).
        roundings: Number of roundings along the longest chain of operations, or the
            number of terms of the longest re-ordered sum (>= 1).

    Returns:
        `roundings * FLOAT32_EPS * magnitude`.
    """
    if magnitude <= 0 or roundings < 1:
        raise ValueError(
            f"magnitude must be > 0 and roundings >= 1; got {magnitude} and {roundings}."
        )
    return roundings * FLOAT32_EPS * float(magnitude)


def assert_float32_close(actual, expected, magnitude, roundings):
    """`np.testing.assert_allclose` with `atol = float32_atol(magnitude, roundings)`, `rtol=0`.

    Args:
        actual: The float32 result.
        expected: The value derived independently (float64 or another float32 graph).
        magnitude: See `float32_atol`.
        roundings: See `float32_atol`.
    """
    np.testing.assert_allclose(
        actual, expected, rtol=0, atol=float32_atol(magnitude, roundings)
    )


def sum_of_fan_ins(model):
    """The number of terms of every dot product along a Keras model's forward pass, added up.

    A dense or convolution output is a sum of `fan_in` products (plus its bias); the errors
    of successive layers add up (to first order), so two float32 computations of the same
    network differ by at most about this many roundings of the largest intermediate value.

    Args:
        model: A built Keras model.

    Returns:
        An int >= 1: the sum over weight kernels of their fan-in (all kernel dimensions but
        the last), plus one per layer with weights (the bias addition and the activation).
    """
    total = 1
    for layer in model._flatten_layers(include_self=False, recursive=True):
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and len(kernel.shape) >= 2:
            total += int(np.prod(kernel.shape[:-1])) + 1
    return total


def largest_activation(model, inputs):
    """The largest magnitude of any layer output of a functional model on `inputs`.

    Args:
        model: A functional Keras model.
        inputs: A batch for it.

    Returns:
        max |value| over the inputs and every layer's output, as a float.
    """
    import keras

    outputs = [layer.output for layer in model.layers[1:]]
    values = keras.Model(model.input, outputs)(inputs, training=False)
    return max(float(np.max(np.abs(inputs))), *(float(np.max(np.abs(v))) for v in values))
