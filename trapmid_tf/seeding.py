"""Seeded work that leaves the caller's global random state as it found it.

    with seeded(3):
        model = small_cnn((32, 32, 1), 5)   # initialisers, shuffles, unseeded draws: from 3
    # Python's, NumPy's, TensorFlow's and Keras's global generators: as before the block

Library functions that train from a seed run their body under `seeded(seed)`: inside, every
global generator is seeded exactly as `keras.utils.set_random_seed(seed)` seeds it (so a
seed gives the same weights as it always has); on exit, the caller's state comes back.

Two pieces are read through non-public names, checked against Keras 3.15.1 and TensorFlow
2.21.0 (`tests/test_seeding.py` fails if either changes): Keras's global seed and global
`SeedGenerator` (`keras.src.backend.common.global_state`, the names in
`keras.src.utils.rng_utils` and `keras.src.random.seed_generator`), and the sequence of
TensorFlow's eager op seeds, a `random.Random` held as `context.context()._rng`, read by
`tf.random.uniform` and friends when a global seed is set and no op seed is given.
"""

import contextlib
import random

import keras
import numpy as np
import tensorflow as tf
from keras.src.backend.common import global_state
from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR
from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED
from tensorflow.python.eager import context

# What `keras.utils.set_random_seed` sets in Keras's global state besides the generators of
# Python, NumPy and TensorFlow.
KERAS_GLOBAL_ATTRIBUTES = (GLOBAL_RANDOM_SEED, GLOBAL_SEED_GENERATOR)


@contextlib.contextmanager
def seeded(seed):
    """Runs the block with every global generator seeded by `seed`, then restores them.

    Inside: `keras.utils.set_random_seed(seed)`. On exit, also on an exception: Python's
    `random`, NumPy's global generator, TensorFlow's global seed and the op seeds it would
    draw next, Keras's global seed and global `SeedGenerator` (what `keras.random` draws
    from without a seed) are what they were on entry. `tf.random.get_global_generator()`
    is left alone. As after any `tf.random.set_seed`, TensorFlow's eager kernels are
    rebuilt, so a stateful TensorFlow random op given an explicit op seed (say
    `tf.random.uniform((), seed=1)`) starts its sequence again.

    Args:
        seed: Integer seed.

    Yields:
        None.

    Raises:
        ValueError: If `seed` is not an int (from `keras.utils.set_random_seed`).
        RuntimeError: Outside eager execution (inside a `tf.function` or a graph).
    """
    if not tf.executing_eagerly():
        raise RuntimeError("`seeded` runs eagerly only; it was entered while building a graph.")
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    tf_seed = context.global_seed()
    # The op-seed sequence exists, and is read, only once a global seed has been set.
    tf_op_seeds = None if tf_seed is None else context.context()._rng.getstate()
    keras_state = {name: global_state.get_global_attribute(name)
                   for name in KERAS_GLOBAL_ATTRIBUTES}
    try:
        keras.utils.set_random_seed(seed)
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        tf.random.set_seed(tf_seed)
        if tf_op_seeds is not None:
            context.context()._rng.setstate(tf_op_seeds)
        for name, value in keras_state.items():
            global_state.set_global_attribute(name, value)
