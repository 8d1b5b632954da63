"""`BestEpochCheckpoint`: keeps the best epoch's classifier and triggers, with a trapdoor bar."""

import logging
import time
import warnings

import keras
import numpy as np

from trapmid_tf.defenses.trapmid import TrapMIDModel
from trapmid_tf.files import atomic_path
from trapmid_tf.models.copies import plain_keras_copy

_logger = logging.getLogger(__name__)


class TrapdoorNotFormedWarning(UserWarning):
    """Warned at the end of training when the kept epoch's trapdoor did not form."""


class BestEpochCheckpoint(keras.callbacks.Callback):
    """Keeps the best epoch: its logs, and its classifier and triggers written to files.

    At the end of each epoch it compares the epoch's logs with the best so far. As in the
    reference, the higher clean accuracy wins; unlike it, a tie in clean accuracy goes to the
    higher trapdoor accuracy (then to the earlier epoch): on small test sets clean accuracy
    saturates early, and the reference's rule would keep an epoch from before the trapdoor
    formed. With `min_trapdoor_accuracy`, an epoch whose trapdoor accuracy is below it counts
    as best only while no epoch has reached it. Validation values (`val_accuracy`,
    `val_trapdoor_accuracy`) are used when logged, else the training ones, so place it after
    the callback that adds `val_*` to the logs.

    It serves plain Keras classifiers too (no trapdoor accuracy: clean accuracy alone
    decides, and no triggers are written).

    At the end of training, when the kept epoch's trapdoor accuracy is below
    `trapdoor_warning_threshold`, it warns (`TrapdoorNotFormedWarning`, also logged): such a
    model gives no protection against model inversion (see `trapdoor_formed`).

    Args:
        best_classifier_path: `.keras` file for the best epoch's classifier, or None.
        trigger_path: `.npz` file for the best epoch's triggers (owner-only permissions), or
            None. Written only for a `TrapMIDModel`.
        min_trapdoor_accuracy: Trapdoor accuracy, in [0, 1], that a best epoch must reach
            once any epoch has reached it (0: the reference's rule).
        trapdoor_warning_threshold: Trapdoor accuracy, in [0, 1], below which the kept
            epoch's trapdoor counts as not formed (see `TrapMIDCallback` for the default).

    Attributes:
        best_epoch: The best epoch so far (0-based), or None.
        best_logs: The scalar logs of that epoch.
        seconds: Wall-clock seconds from the start of each epoch to this callback's
            `on_epoch_end` (so validation by an earlier callback is included), summed.
    """

    def __init__(
        self,
        best_classifier_path=None,
        trigger_path=None,
        min_trapdoor_accuracy=0.0,
        trapdoor_warning_threshold=0.9,
    ):
        super().__init__()
        self.best_classifier_path = best_classifier_path
        self.trigger_path = trigger_path
        for name, value in (
            ("min_trapdoor_accuracy", min_trapdoor_accuracy),
            ("trapdoor_warning_threshold", trapdoor_warning_threshold),
        ):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1]; received {value!r}.")
        self.min_trapdoor_accuracy = float(min_trapdoor_accuracy)
        self.trapdoor_warning_threshold = float(trapdoor_warning_threshold)
        self.best_epoch = None
        self.best_logs = None
        self.seconds = 0.0
        self._epoch_start = None

    @property
    def trapdoor_formed(self):
        """Whether the kept epoch's trapdoor accuracy reached `trapdoor_warning_threshold`.

        Validation trapdoor accuracy is used when logged, else the training one.

        Returns:
            True or False; None before any epoch is kept or when the logs hold no trapdoor
            accuracy (a model without triggers).
        """
        accuracy = None if self.best_logs is None else trapdoor_accuracy(self.best_logs)
        return None if accuracy is None else accuracy >= self.trapdoor_warning_threshold

    def get_state(self):
        """Returns the bookkeeping that `TrapMIDBackup` saves.

        Returns:
            A JSON-serialisable dict of `best_epoch`, `best_logs` and `seconds`.
        """
        return {"best_epoch": self.best_epoch, "best_logs": self.best_logs, "seconds": self.seconds}

    def set_state(self, state):
        """Restores the bookkeeping saved by `TrapMIDBackup`.

        Args:
            state: A dict returned by `get_state`.
        """
        self.best_epoch = state["best_epoch"]
        self.best_logs = state["best_logs"]
        self.seconds = state["seconds"]

    def on_train_begin(self, logs=None):
        self.set_state({"best_epoch": None, "best_logs": None, "seconds": 0.0})

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        self.seconds += time.perf_counter() - self._epoch_start
        score = selection_score(logs, self.min_trapdoor_accuracy)
        if score is None:
            return
        if self.best_logs is None or score > selection_score(
            self.best_logs, self.min_trapdoor_accuracy
        ):
            self.best_epoch = epoch
            self.best_logs = {
                name: float(value) for name, value in logs.items() if np.ndim(value) == 0
            }
            self._write_best()

    def on_train_end(self, logs=None):
        if self.trapdoor_formed is False:
            message = (
                f"The Trap-MID trapdoor did not form: the kept epoch ({self.best_epoch + 1}) "
                f"has trapdoor accuracy {trapdoor_accuracy(self.best_logs):.3f}, below "
                f"trapdoor_warning_threshold={self.trapdoor_warning_threshold}. This model "
                "gives no protection against model inversion. Raise alpha or train for more "
                "steps (see docs/trapdoor_formation.md)."
            )
            _logger.warning(message)
            warnings.warn(message, TrapdoorNotFormedWarning, stacklevel=2)

    def _write_best(self):
        if self.best_classifier_path is not None:
            if hasattr(self.model, "export_classifier"):  # Trap-MID, MID, BiDO wrappers
                self.model.export_classifier(self.best_classifier_path)
            else:
                with atomic_path(self.best_classifier_path) as temp:
                    plain_keras_copy(self.model).save(temp)
        if self.trigger_path is not None and isinstance(self.model, TrapMIDModel):
            self.model.save_triggers(self.trigger_path)


def _log_prefix(logs):
    """"val_" when an epoch's logs hold validation accuracy, else "" (training values)."""
    return "val_" if "val_accuracy" in logs else ""


def trapdoor_accuracy(logs):
    """The trapdoor accuracy of an epoch's logs, validation first.

    Args:
        logs: An epoch's logs.

    Returns:
        The accuracy, or None if the logs hold none.
    """
    return logs.get(f"{_log_prefix(logs)}trapdoor_accuracy")


def selection_score(logs, min_trapdoor_accuracy):
    """The key by which `BestEpochCheckpoint` ranks epochs: higher is better.

    Args:
        logs: An epoch's logs (validation values first, else training values).
        min_trapdoor_accuracy: The trapdoor bar; logs without a trapdoor accuracy meet it.

    Returns:
        `(trapdoor bar met, clean accuracy, trapdoor accuracy or 0)`, or None when the logs
        hold no clean accuracy.
    """
    prefix = _log_prefix(logs)
    if f"{prefix}accuracy" not in logs:
        return None
    trapdoor = trapdoor_accuracy(logs)
    meets_bar = trapdoor is None or trapdoor >= min_trapdoor_accuracy
    return meets_bar, logs[f"{prefix}accuracy"], 0.0 if trapdoor is None else trapdoor
