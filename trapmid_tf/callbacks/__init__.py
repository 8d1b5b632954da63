"""Callbacks for Trap-MID training, one job each, and `TrapMIDCallback` composing them.

* `ValidationMetrics`: `val_*` values (trapdoor accuracy included) at each epoch's end.
* `BestEpochCheckpoint`: the best epoch's logs, classifier and triggers; the trapdoor bar and
  the "trapdoor not formed" warning.
* `TensorBoardLogger`: epoch scalars and trigger images.
* `TriggerCheckpoints`: the triggers every few epochs.
* `TrapMIDCallback`: the above (and `NegLSScheduler`) in the order a run needs them.
* `TrapMIDBackup`: an end-of-epoch backup of the whole training state, so that a run killed
  at any moment continues, with the same command, from its last completed epoch.
* `StopOnNonFiniteLoss`: stops `fit` at the first non-finite loss, before anything is saved.
"""

from trapmid_tf.callbacks.backup import TrapMIDBackup
from trapmid_tf.callbacks.best_epoch import BestEpochCheckpoint, TrapdoorNotFormedWarning
from trapmid_tf.callbacks.non_finite import NonFiniteLossError, StopOnNonFiniteLoss
from trapmid_tf.callbacks.tensorboard_logger import TensorBoardLogger
from trapmid_tf.callbacks.trapmid_callback import TrapMIDCallback
from trapmid_tf.callbacks.trigger_checkpoints import TriggerCheckpoints
from trapmid_tf.callbacks.validation_metrics import ValidationMetrics

__all__ = [
    "BestEpochCheckpoint",
    "NonFiniteLossError",
    "StopOnNonFiniteLoss",
    "TensorBoardLogger",
    "TrapMIDBackup",
    "TrapMIDCallback",
    "TrapdoorNotFormedWarning",
    "TriggerCheckpoints",
    "ValidationMetrics",
]
