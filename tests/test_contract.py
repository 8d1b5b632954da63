"""Tests of the replica helpers in `trapmid_tf.contract`."""

import numpy as np
import tensorflow as tf

from trapmid_tf.contract import global_batch_mean, global_value


def _gradient_summed_over_replicas(strategy, values):
    """d/dw of `global_batch_mean(w * values)` on each replica's half, summed by the strategy."""
    weight = tf.Variable(1.0)
    halves = np.split(values, strategy.num_replicas_in_sync)

    @tf.function
    def step():
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        half = tf.gather(tf.constant(np.stack(halves)), replica)
        with tf.GradientTape() as tape:
            share = global_batch_mean(weight * half)
        return tape.gradient(share, weight), global_value(share)

    gradients, logged = strategy.run(step)
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, gradients, axis=None)
    return float(total), [float(v) for v in strategy.experimental_local_results(logged)]


def test_one_device_is_the_plain_mean():
    values = np.array([1.0, 2.0, 4.0, 9.0], np.float32)
    assert float(global_batch_mean(values)) == 4.0
    assert float(global_value(global_batch_mean(values))) == 4.0


def test_two_replicas_sum_to_the_global_mean(two_replicas):
    # d/dw mean(w * v) over the whole batch is mean(v) = 4; each half logs its own mean.
    values = np.array([1.0, 2.0, 4.0, 9.0], np.float32)
    gradient, logged = _gradient_summed_over_replicas(two_replicas, values)
    assert gradient == 4.0  # exact: every term is a small dyadic rational
    assert logged == [1.5, 6.5]
