"""Pytest session setup: quiet TensorFlow and two logical CPU devices.

Two logical CPUs let the distribution tests run `MirroredStrategy` with two replicas on one
machine. They must be configured before TensorFlow initialises its runtime, hence here.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def pytest_configure(config):
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
