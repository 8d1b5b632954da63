"""`TrapMIDCallback`: the callbacks a Trap-MID (or baseline) training run needs, in order."""

import os

import keras

from trapmid_tf.callbacks.best_epoch import BestEpochCheckpoint
from trapmid_tf.callbacks.tensorboard_logger import TensorBoardLogger
from trapmid_tf.callbacks.trigger_checkpoints import TriggerCheckpoints, checked_period
from trapmid_tf.callbacks.validation_metrics import ValidationMetrics
from trapmid_tf.defenses.negls import NegLSScheduler


def _checkpoint_value(name, doc):
    """A read-only property that reads attribute `name` of the `BestEpochCheckpoint`."""
    return property(lambda self: getattr(self.checkpoint, name), doc=doc)


class TrapMIDCallback(keras.callbacks.Callback):
    """Validation, best-epoch checkpoint, TensorBoard and trigger files for one training run.

    It is a composition of one-job callbacks, called in this order at every hook:

    1. `NegLSScheduler`: advances any `NegLSLoss` schedule of the model at each epoch start;
    2. `ValidationMetrics` (with `validation_data`): adds `val_accuracy`,
       `val_trapdoor_accuracy`, ... to the logs;
    3. `BestEpochCheckpoint`: keeps the best epoch (by clean accuracy, ties to the higher
       trapdoor accuracy, with the `min_trapdoor_accuracy` bar), writes its classifier to
       `best_classifier_path` and its triggers to `trigger_path`, and warns at the end
       (`TrapdoorNotFormedWarning`) when the kept trapdoor is below
       `trapdoor_warning_threshold`;
    4. `TensorBoardLogger` (with `log_dir`): every log value as a scalar, the triggers as
       images, under `log_dir/trapmid`;
    5. `TriggerCheckpoints`: `triggers_epoch{N}.npz` every `every` epochs next to
       `trigger_path` (or under `log_dir/triggers`; neither given: no files).

    It also serves plain Keras classifiers (the undefended and NegLS baselines), for which
    the trigger work is skipped. Use the parts directly for another combination.

    Args:
        validation_data: A dataset of `(images, labels)` or `(images, labels,
            trapdoor_labels)` batches, or None to use `fit`'s own validation logs.
        log_dir: Folder for TensorBoard event files, or None.
        trigger_path: `.npz` file for the best epoch's triggers (owner-only permissions).
        best_classifier_path: `.keras` file for the best epoch's classifier.
        every: Period, in epochs, of the trigger checkpoints.
        min_trapdoor_accuracy: Trapdoor accuracy, in [0, 1], that a best epoch must reach
            once any epoch has reached it (0: the reference's rule).
        trapdoor_warning_threshold: Trapdoor accuracy, in [0, 1], below which the kept
            epoch's trapdoor counts as not formed. The default, 0.9, is 4.5 times chance on
            the 5-class digit datasets (0.2) and far above it on faces (1/1000). Formed
            trapdoors reached 95-100% in the runs measured; failed ones stayed at 20-35%, and
            partly formed ones were at 61-82% (docs/trapdoor_formation.md). 0.9 flags
            the partial ones too and leaves room for the noise of a small test set (180
            digits images: one image is 0.6 points).

    Its state (the checkpoint's `best_epoch`, `best_logs` and `seconds`) is saved and
    restored by `TrapMIDBackup`.

    Attributes:
        checkpoint: The `BestEpochCheckpoint`; `best_epoch`, `best_logs`, `seconds`,
            `trapdoor_formed`, `min_trapdoor_accuracy` and `trapdoor_warning_threshold` read
            from it.
        parts: The callbacks above, in calling order.
    """

    def __init__(
        self,
        validation_data=None,
        log_dir=None,
        trigger_path=None,
        best_classifier_path=None,
        every=10,
        min_trapdoor_accuracy=0.0,
        trapdoor_warning_threshold=0.9,
    ):
        super().__init__()
        self.validation_data = validation_data
        self.log_dir = log_dir
        self.trigger_path = trigger_path
        self.best_classifier_path = best_classifier_path
        self.every = checked_period(every)
        self.checkpoint = BestEpochCheckpoint(
            best_classifier_path, trigger_path, min_trapdoor_accuracy, trapdoor_warning_threshold
        )
        self.parts = [NegLSScheduler()]
        if validation_data is not None:
            self.parts.append(ValidationMetrics(validation_data))
        self.parts.append(self.checkpoint)
        if log_dir is not None:
            self.parts.append(TensorBoardLogger(log_dir))
        if trigger_path is not None:
            trigger_folder = os.path.dirname(os.path.abspath(trigger_path))
        else:
            trigger_folder = None if log_dir is None else os.path.join(log_dir, "triggers")
        if trigger_folder is not None:
            self.parts.append(TriggerCheckpoints(trigger_folder, self.every))

    best_epoch = _checkpoint_value("best_epoch", "The best epoch so far (0-based), or None.")
    best_logs = _checkpoint_value("best_logs", "The scalar logs of the best epoch, or None.")
    seconds = _checkpoint_value(
        "seconds", "Wall-clock seconds spent in training epochs (validation included)."
    )
    trapdoor_formed = _checkpoint_value(
        "trapdoor_formed",
        "Whether the kept epoch's trapdoor formed (see `BestEpochCheckpoint.trapdoor_formed`).",
    )
    min_trapdoor_accuracy = _checkpoint_value(
        "min_trapdoor_accuracy", "The trapdoor bar of the best-epoch selection."
    )
    trapdoor_warning_threshold = _checkpoint_value(
        "trapdoor_warning_threshold",
        "The trapdoor accuracy below which the kept trapdoor counts as not formed.",
    )

    def get_state(self):
        """Returns the bookkeeping that `TrapMIDBackup` saves.

        Returns:
            A JSON-serialisable dict of `best_epoch`, `best_logs` and `seconds`.
        """
        return self.checkpoint.get_state()

    def set_state(self, state):
        """Restores the bookkeeping saved by `TrapMIDBackup`.

        Args:
            state: A dict returned by `get_state`.
        """
        self.checkpoint.set_state(state)

    def set_model(self, model):
        """Sets the model of this callback and of its parts.

        Args:
            model: The model `fit` trains.
        """
        super().set_model(model)
        self._forward("set_model", model)

    def set_params(self, params):
        """Sets `fit`'s parameters on this callback and its parts.

        Args:
            params: The dict `fit` passes (`epochs`, `steps`, `verbose`).
        """
        super().set_params(params)
        self._forward("set_params", params)

    def on_train_begin(self, logs=None):
        self._forward("on_train_begin", logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._forward("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._forward("on_epoch_end", epoch, logs)

    def on_train_end(self, logs=None):
        self._forward("on_train_end", logs)

    def _forward(self, hook, *args):
        """Calls the method named `hook` of every part, in order."""
        for part in self.parts:
            getattr(part, hook)(*args)
