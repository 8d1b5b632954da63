"""`seeded` and the library functions that train from a seed leave the caller's random state alone.

The expected draws are the caller's own: the same seeding and draws with nothing in between.
"""

import random

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.backend.common import global_state
from tensorflow.python.eager import context

from trapmid_tf.attacks import suite
from trapmid_tf.metrics.evaluator import train_evaluation_model
from trapmid_tf.seeding import seeded

SHAPE = (8, 8, 1)


def seed_caller(seed):
    """The caller seeds every global generator, then draws once so that each is mid-sequence."""
    keras.utils.set_random_seed(seed)
    tf.random.set_global_generator(tf.random.Generator.from_seed(seed))
    draws()


def seeded_draws():
    """One draw from each global generator that `keras.utils.set_random_seed` seeds."""
    return [
        random.random(),
        float(np.random.random()),
        float(tf.random.uniform(())),  # op seed drawn from the global seed's sequence
        float(keras.random.uniform(())),  # Keras's global SeedGenerator
    ]


def draws():
    """One draw from each global generator a caller may use without passing a seed."""
    return [*seeded_draws(), float(tf.random.get_global_generator().uniform(()))]


def draws_after(seed, work):
    """The caller's draws after `seed_caller(seed)` and `work()`."""
    seed_caller(seed)
    work()
    return draws()


def test_the_block_draws_as_after_keras_set_random_seed_and_the_caller_draws_on():
    keras.utils.set_random_seed(3)
    expected_inside = seeded_draws()
    inside = []

    def work():
        with seeded(3):
            inside.extend(seeded_draws())

    assert draws_after(11, work) == draws_after(11, lambda: None)
    assert inside == expected_inside


def test_the_state_comes_back_after_an_exception():
    def failing_work():
        with seeded(3):
            seeded_draws()
            raise ZeroDivisionError("inside")

    def work():
        with pytest.raises(ZeroDivisionError, match="inside"):
            failing_work()

    assert draws_after(11, work) == draws_after(11, lambda: None)


def test_a_process_without_a_tensorflow_seed_keeps_none():
    keras.utils.set_random_seed(5)
    tf.random.set_seed(None)
    with seeded(3):
        assert context.global_seed() == 3
    assert context.global_seed() is None


def test_keras_and_tensorflow_state_that_set_random_seed_touches_is_all_restored():
    """Fails if Keras's `set_random_seed` or TensorFlow's seed storage change shape.

    `seeded` restores Keras's global state by name and TensorFlow's op seeds through the
    private `context.context()._rng` (checked against Keras 3.15.1, TensorFlow 2.21.0).
    """
    seed_caller(11)
    keras_state = {key: value for key, value in vars(global_state.GLOBAL_STATE_TRACKER).items()
                   if value is not None}
    op_seeds = context.context()._rng.getstate()
    with seeded(3):
        assert context.context()._rng.getstate() != op_seeds
    assert {key: value for key, value in vars(global_state.GLOBAL_STATE_TRACKER).items()
            if value is not None} == keras_state
    assert context.global_seed() == 11
    assert context.context()._rng.getstate() == op_seeds


def test_bad_seeds_and_graphs_are_refused():
    expected = draws_after(11, lambda: None)
    seed_caller(11)
    with pytest.raises(ValueError, match="Expected `seed` argument to be an integer"):
        with seeded(1.5):
            pass
    assert draws() == expected

    @tf.function
    def graph():
        with seeded(3):
            return tf.constant(0)

    with pytest.raises(RuntimeError, match="`seeded` runs eagerly only"):
        graph()


def gmi_prior(seed):
    rng = np.random.default_rng(0)
    public = tf.data.Dataset.from_tensor_slices(rng.random((16, *SHAPE), dtype=np.float32))
    prior = suite.train_gmi_prior(
        public, 1, n_critic=2, batch_size=8, base_channels=4, seed=seed, verbose=0
    )
    return prior.variables


def evaluation_model(seed):
    rng = np.random.default_rng(0)
    images = rng.random((16, *SHAPE), dtype=np.float32)
    data = tf.data.Dataset.from_tensor_slices((images, np.arange(16, dtype=np.int32) % 3))
    model, _ = train_evaluation_model(data, data, 3, epochs=1, batch_size=8, seed=seed, verbose=0)
    return model.variables


@pytest.mark.parametrize("train", [gmi_prior, evaluation_model])
def test_library_training_restores_the_callers_state_and_depends_on_its_seed_only(train):
    results = []

    def work():
        results.append([variable.numpy() for variable in train(3)])

    assert draws_after(11, work) == draws_after(11, lambda: None)
    seed_caller(12)  # another caller state: the same weights
    results.append([variable.numpy() for variable in train(3)])
    first, second = results
    assert len(first) == len(second)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
