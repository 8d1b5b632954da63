"""Pytest session setup: quiet TensorFlow and two logical CPU devices.

Two logical CPUs let the distribution tests run `MirroredStrategy` with two replicas on one
machine. They must be configured before TensorFlow initialises its runtime, hence here.
"""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def pytest_configure(config):
    from trapmid_tf.startup import import_tensorflow

    import_tensorflow()  # quietly (its messages are in trapmid_tf.startup_log())
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )


@pytest.fixture(scope="session")
def two_replicas():
    """One `MirroredStrategy` over the two logical CPUs, shared by every test.

    Shared, and reducing on one device: collective all-reduce instance keys restart with
    each new `MirroredStrategy`, and a second strategy's collectives clash with the first's
    in the same process ("Shape mismatch in the collective instance").
    """
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
