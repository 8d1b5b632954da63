"""NumPy versions of the functions the tests compute expected values with."""

import keras
import numpy as np


def to_numpy(tensor):
    """A backend tensor (or anything array-like) as a NumPy array."""
    return keras.ops.convert_to_numpy(tensor)


def log_softmax(logits):
    """Log-softmax over the last axis, shifted by the maximum for stability."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits):
    """Softmax over the last axis."""
    return np.exp(log_softmax(logits))
