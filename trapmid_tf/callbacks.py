"""`TrapMIDCallback`: validation, TensorBoard logging and checkpoints for Trap-MID training."""

import os

import keras
import numpy as np
import tensorflow as tf

from trapmid_tf.defenses.negls import negls_losses
from trapmid_tf.defenses.trapmid import TrapMIDModel
from trapmid_tf.files import atomic_path


class TrapMIDCallback(keras.callbacks.Callback):
    """Tracks trapdoor accuracy, logs triggers and keeps the best epoch of a `TrapMIDModel`.

    It also serves plain Keras classifiers (the undefended and NegLS baselines), for which
    the trigger work is skipped.

    At the start of each epoch it advances any `NegLSLoss` schedule of the model. At the end
    of each epoch it:

    * evaluates clean and trapdoor accuracy on `validation_data` (when given) and adds them
      to the logs as `val_accuracy` and `val_trapdoor_accuracy`;
    * writes every log value as a TensorBoard scalar and the triggers as images under
      `log_dir`;
    * when the validation clean accuracy beats every earlier epoch, as the reference, writes
      the classifier to `best_classifier_path` and the triggers to `trigger_path`. Unlike the
      reference, a tie in clean accuracy goes to the higher trapdoor accuracy (then to the
      earlier epoch): on small test sets clean accuracy saturates early, and the reference's
      rule would keep an epoch from before the trapdoor formed. Without validation data the
      training accuracies are used;
    * every `every` epochs, writes a trigger checkpoint `triggers_epoch{N}.npz` next to
      `trigger_path` (or under `log_dir/triggers`).

    Args:
        validation_data: A dataset of `(images, labels)` or `(images, labels,
            trapdoor_labels)` batches, or None to use `fit`'s own validation logs.
        log_dir: Folder for TensorBoard event files, or None.
        trigger_path: `.npz` file for the best epoch's triggers (owner-only permissions).
        best_classifier_path: `.keras` file for the best epoch's classifier.
        every: Period, in epochs, of the trigger checkpoints.

    Attributes:
        best_epoch: The best epoch so far (0-based), or None.
        best_logs: The logs of that epoch.
    """

    def __init__(
        self,
        validation_data=None,
        log_dir=None,
        trigger_path=None,
        best_classifier_path=None,
        every=10,
    ):
        super().__init__()
        if int(every) < 1:
            raise ValueError(f"`every` must be >= 1; received {every!r}.")
        self.validation_data = validation_data
        self.log_dir = log_dir
        self.trigger_path = trigger_path
        self.best_classifier_path = best_classifier_path
        self.every = int(every)
        self.best_epoch = None
        self.best_logs = None
        self._writer = None

    @property
    def _has_triggers(self):
        return isinstance(self.model, TrapMIDModel)

    def on_train_begin(self, logs=None):
        self.best_epoch = None
        self.best_logs = None
        if self.log_dir is not None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "trapmid"))

    def on_epoch_begin(self, epoch, logs=None):
        for loss in negls_losses(self.model):
            loss.set_epoch(epoch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.validation_data is not None:
            results = self.model.evaluate(self.validation_data, verbose=0, return_dict=True)
            logs.update({f"val_{name}": float(value) for name, value in results.items()})
        score = _selection_score(logs)
        if score is not None and (
            self.best_logs is None or score > _selection_score(self.best_logs)
        ):
            self.best_epoch = epoch
            self.best_logs = dict(logs)
            self._write_best()
        if (epoch + 1) % self.every == 0:
            self._write_checkpoint(epoch + 1)
        self._log_tensorboard(epoch, logs)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write_best(self):
        if self.best_classifier_path is not None:
            if hasattr(self.model, "export_classifier"):  # Trap-MID, MID, BiDO wrappers
                self.model.export_classifier(self.best_classifier_path)
            else:
                with atomic_path(self.best_classifier_path) as temp:
                    self.model.save(temp)
        if self.trigger_path is not None and self._has_triggers:
            self.model.save_triggers(self.trigger_path)

    def _checkpoint_folder(self):
        if self.trigger_path is not None:
            return os.path.dirname(os.path.abspath(self.trigger_path))
        if self.log_dir is not None:
            return os.path.join(self.log_dir, "triggers")
        return None

    def _write_checkpoint(self, epoch_number):
        folder = self._checkpoint_folder()
        if folder is not None and self._has_triggers:
            self.model.save_triggers(os.path.join(folder, f"triggers_epoch{epoch_number}.npz"))

    def _log_tensorboard(self, epoch, logs):
        if self._writer is None:
            return
        with self._writer.as_default(step=epoch):
            for name, value in logs.items():
                if np.ndim(value) == 0:
                    tf.summary.scalar(name, float(value))
            if self._has_triggers:
                triggers = self.model.triggers.numpy()
                tf.summary.image("triggers", triggers, max_outputs=min(len(triggers), 16))
        self._writer.flush()


def _selection_score(logs):
    """`(clean accuracy, trapdoor accuracy)` of an epoch's logs, validation first; None if absent."""
    prefix = "val_" if "val_accuracy" in logs else ""
    if f"{prefix}accuracy" not in logs:
        return None
    return logs[f"{prefix}accuracy"], logs.get(f"{prefix}trapdoor_accuracy", 0.0)
