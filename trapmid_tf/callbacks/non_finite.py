"""`StopOnNonFiniteLoss`: stops `fit` at the first NaN or infinite training loss."""

import keras
import numpy as np


class NonFiniteLossError(FloatingPointError):
    """Raised by `StopOnNonFiniteLoss` when a training loss is NaN or infinite."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops `fit` at the first batch whose loss is NaN or infinite, before anything is saved.

    It raises `NonFiniteLossError` from `on_train_batch_end`, so no `on_epoch_end` runs after
    the bad step: the files written by the other callbacks (best classifier, triggers,
    `TrapMIDBackup`) stay those of the last completed epoch. The model in memory holds the
    bad update; restore it from those files. Unlike `keras.callbacks.TerminateOnNaN`, which
    lets the epoch end (and its callbacks save), it checks every logged value whose name
    contains "loss". Keras logs running means over the epoch, which turn non-finite at the
    first non-finite batch loss. With `steps_per_execution > 1` the batch named is the last
    of its execution.

    Raises:
        NonFiniteLossError: naming the epoch and batch (counted from 1) and the loss values.
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        losses = {name: float(value) for name, value in (logs or {}).items() if "loss" in name}
        bad = {name: value for name, value in losses.items() if not np.isfinite(value)}
        if bad:
            values = ", ".join(f"{name}={value}" for name, value in sorted(bad.items()))
            raise NonFiniteLossError(
                f"Non-finite training loss at epoch {self._epoch + 1}, batch {batch + 1} "
                f"(counted from 1): {values}. Training stopped before saving this state; the "
                "files written before are those of the last completed epoch."
            )
