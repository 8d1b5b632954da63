"""Callbacks for Trap-MID training: validation and checkpoints, backups, non-finite stops.

* `TrapMIDCallback`: trapdoor accuracy, TensorBoard logging, the best epoch's artefacts.
* `TrapMIDBackup`: an end-of-epoch backup of the whole training state, so that a run killed
  at any moment continues, with the same command, from its last completed epoch.
* `StopOnNonFiniteLoss`: stops `fit` at the first non-finite loss, before anything is saved.
"""

import glob
import json
import logging
import os
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from trapmid_tf.defenses.negls import negls_losses
from trapmid_tf.defenses.trapmid import TrapMIDModel
from trapmid_tf.files import atomic_path, secret_folder
from trapmid_tf.models.common import plain_keras_copy
from trapmid_tf.saving import SeedStateMixin

_logger = logging.getLogger(__name__)


class TrapdoorNotFormedWarning(UserWarning):
    """Warned by `TrapMIDCallback` when the kept epoch's trapdoor did not form."""


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
      rule would keep an epoch from before the trapdoor formed. With `min_trapdoor_accuracy`,
      an epoch whose trapdoor accuracy is below it counts as best only while no epoch has
      reached it. Without validation data the training accuracies are used;
    * every `every` epochs, writes a trigger checkpoint `triggers_epoch{N}.npz` next to
      `trigger_path` (or under `log_dir/triggers`).

    At the end of training, when the kept epoch's trapdoor accuracy is below
    `trapdoor_warning_threshold`, it warns (`TrapdoorNotFormedWarning`, also logged): such a
    model gives no protection against model inversion (see `trapdoor_formed`).

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

    Its state (the attributes below) is saved and restored by `TrapMIDBackup`.

    Attributes:
        best_epoch: The best epoch so far (0-based), or None.
        best_logs: The logs of that epoch.
        seconds: Wall-clock seconds spent in training epochs (validation included).
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
        if int(every) < 1:
            raise ValueError(f"`every` must be >= 1; received {every!r}.")
        for name, value in (
            ("min_trapdoor_accuracy", min_trapdoor_accuracy),
            ("trapdoor_warning_threshold", trapdoor_warning_threshold),
        ):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1]; received {value!r}.")
        self.min_trapdoor_accuracy = float(min_trapdoor_accuracy)
        self.trapdoor_warning_threshold = float(trapdoor_warning_threshold)
        self.validation_data = validation_data
        self.log_dir = log_dir
        self.trigger_path = trigger_path
        self.best_classifier_path = best_classifier_path
        self.every = int(every)
        self.best_epoch = None
        self.best_logs = None
        self.seconds = 0.0
        self._epoch_start = None
        self._writer = None

    @property
    def _has_triggers(self):
        return isinstance(self.model, TrapMIDModel)

    @property
    def trapdoor_formed(self):
        """Whether the kept epoch's trapdoor accuracy reached `trapdoor_warning_threshold`.

        Validation trapdoor accuracy is used when logged, else the training one.

        Returns:
            True or False; None before any epoch is kept or when the logs hold no trapdoor
            accuracy (a model without triggers).
        """
        accuracy = None if self.best_logs is None else _trapdoor_accuracy(self.best_logs)
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
        if self.log_dir is not None:
            # Owner-only: the trigger images logged there are secret.
            folder = secret_folder(os.path.join(self.log_dir, "trapmid"))
            self._writer = tf.summary.create_file_writer(folder)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        for loss in negls_losses(self.model):
            loss.set_epoch(epoch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.validation_data is not None:
            results = self.model.evaluate(self.validation_data, verbose=0, return_dict=True)
            logs.update({f"val_{name}": float(value) for name, value in results.items()})
        self.seconds += time.perf_counter() - self._epoch_start
        score = _selection_score(logs, self.min_trapdoor_accuracy)
        if score is not None and (
            self.best_logs is None
            or score > _selection_score(self.best_logs, self.min_trapdoor_accuracy)
        ):
            self.best_epoch = epoch
            self.best_logs = {
                name: float(value) for name, value in logs.items() if np.ndim(value) == 0
            }
            self._write_best()
        if (epoch + 1) % self.every == 0:
            self._write_checkpoint(epoch + 1)
        self._log_tensorboard(epoch, logs)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.trapdoor_formed is False:
            message = (
                f"The Trap-MID trapdoor did not form: the kept epoch ({self.best_epoch + 1}) "
                f"has trapdoor accuracy {_trapdoor_accuracy(self.best_logs):.3f}, below "
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


class TrapMIDBackup(keras.callbacks.Callback):
    """Backs up the whole training state after every epoch and restores it when `fit` starts.

    A run killed at any moment (even with SIGKILL, mid-epoch) and started again with the same
    code continues from its last completed epoch and ends as an uninterrupted run would. The
    backup holds:

    * every weight of the model and of its optimisers (for a `TrapMIDModel`: classifier,
      discriminator, triggers, the three optimisers, hence the learning-rate schedule
      position);
    * the state of every `keras.random.SeedGenerator` of the model's layers (augmentation,
      trapdoor-label sampling, dropout);
    * the number of completed epochs, which becomes `fit`'s initial epoch;
    * the `get_state()` of each callback in `stateful` (e.g. the best-epoch bookkeeping of a
      `TrapMIDCallback`), restored with its `set_state(state)`.

    Place it after the callbacks in `stateful` in `fit(callbacks=...)`: it restores them
    after their own `on_train_begin` and backs them up after their `on_epoch_end`.

    Not restored: the data order. Give `fit` data whose epoch `k` is the same whether or not
    the process ran epochs `0..k-1`, e.g. epochs `completed_epochs..epochs-1` each shuffled
    with a seed made of (seed, epoch), with `steps_per_epoch` (see `trapmid-train`);
    `tf.data`'s `reshuffle_each_iteration` starts its sequence again in a new process. Also
    not restored: random numbers drawn without a seed generator of the model.

    Every file is written atomically with owner-only permissions (the weights include the
    secret triggers): `state.json` is replaced last and names the weights file of the same
    epoch, so a crash while writing leaves the previous backup in force. The backup is kept
    after training: a later `fit` with the same settings restores the final state and trains
    no further epoch. Delete `backup_dir` to start again. With a multi-worker strategy only the
    chief writes; every worker restores, so `backup_dir` must be on storage all workers read.

    Args:
        backup_dir: Folder of the backup (created with owner-only permissions).
        settings: JSON-serialisable dict describing the run (hyperparameters, data, seed).
            It is stored with the backup, and restoring a backup made with other settings
            raises `ValueError` instead of mixing two runs.
        stateful: Callbacks with `get_state()` and `set_state(state)` to back up too.

    Example:
        >>> tracker = TrapMIDCallback(trigger_path="out/triggers.npz")
        >>> backup = TrapMIDBackup("out/backup", settings={"seed": 0}, stateful=[tracker])
        >>> start = backup.completed_epochs  # 0 on the first run
        >>> model.fit(data, epochs=10, initial_epoch=start,
        ...           callbacks=[StopOnNonFiniteLoss(), tracker, backup])  # doctest: +SKIP
    """

    STATE_FILE = "state.json"

    def __init__(self, backup_dir, settings=None, stateful=()):
        super().__init__()
        if not backup_dir:
            raise ValueError(f"`backup_dir` must be a folder path; received {backup_dir!r}.")
        for callback in stateful:
            if not (hasattr(callback, "get_state") and hasattr(callback, "set_state")):
                raise ValueError(
                    "`stateful` callbacks must have get_state() and set_state(state); "
                    f"received {type(callback).__name__}."
                )
        self.backup_dir = os.fspath(backup_dir)
        self.settings = json.loads(json.dumps(settings, sort_keys=True))
        self.stateful = list(stateful)

    @property
    def completed_epochs(self):
        """Epochs completed by the backed-up run (0 without a backup).

        Raises:
            ValueError: if the backup was made with other settings or is unreadable.
        """
        state = self._read_state()
        return 0 if state is None else state["epoch"]

    def on_train_begin(self, logs=None):
        self.restore()

    def restore(self):
        """Restores the backed-up state into the model and the `stateful` callbacks.

        `fit` calls it through `on_train_begin`; call it yourself (after `set_model`) to read
        a finished run's state without training.

        Raises:
            ValueError: if the backup was made with other settings, is unreadable or does
                not fit the model.
            FileNotFoundError: if the weights file named by the backup is missing.
        """
        state = self._read_state()
        if state is None:
            return
        self._load_weights(os.path.join(self.backup_dir, state["weights"]))
        generators = _seed_generators(self.model)
        if len(generators) != len(state["seed_states"]) or len(self.stateful) != len(
            state["callbacks"]
        ):
            raise ValueError(
                f"The backup in {self.backup_dir!r} holds {len(state['seed_states'])} seed "
                f"states and {len(state['callbacks'])} callback states; this run has "
                f"{len(generators)} seed generators and {len(self.stateful)} stateful callbacks."
            )
        for generator, value in zip(generators, state["seed_states"]):
            generator.state.assign(np.asarray(value, dtype=generator.state.dtype))
        for callback, callback_state in zip(self.stateful, state["callbacks"]):
            callback.set_state(callback_state)
        self.model._initial_epoch = state["epoch"]  # as keras.callbacks.BackupAndRestore

    def on_epoch_end(self, epoch, logs=None):
        if not self.model.distribute_strategy.extended.should_checkpoint:
            return  # a non-chief worker of a multi-worker strategy
        secret_folder(self.backup_dir)
        weights = f"epoch{epoch + 1}.weights.h5"
        with atomic_path(os.path.join(self.backup_dir, weights), secret=True) as temp:
            self.model.save_weights(temp)
        state = {
            "epoch": epoch + 1,
            "weights": weights,
            "settings": self.settings,
            "seed_states": [
                generator.state.numpy().tolist() for generator in _seed_generators(self.model)
            ],
            "callbacks": [callback.get_state() for callback in self.stateful],
        }
        with atomic_path(os.path.join(self.backup_dir, self.STATE_FILE), secret=True) as temp:
            with open(temp, "w", encoding="utf-8") as stream:
                json.dump(state, stream)
        self._remove_stale_files(keep=weights)

    def on_train_end(self, logs=None):
        self.model._initial_epoch = None

    def _read_state(self):
        path = os.path.join(self.backup_dir, self.STATE_FILE)
        if not os.path.exists(path):
            return None
        try:
            with open(path, encoding="utf-8") as stream:
                state = json.load(stream)
            missing = {"epoch", "weights", "settings", "seed_states", "callbacks"} - set(state)
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(f"Backup state {path!r} is unreadable: {error}") from error
        if missing:
            raise ValueError(f"Backup state {path!r} lacks {sorted(missing)}.")
        differences = _differences(state["settings"], self.settings)
        if differences:
            raise ValueError(
                f"The backup in {self.backup_dir!r} was made with other settings "
                f"({'; '.join(differences)}). Use another backup folder, or delete it to "
                "start again."
            )
        return state

    def _load_weights(self, path):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Backup weights {path!r}, named by {self.STATE_FILE}, are missing."
            )
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)  # so its slots exist to be loaded
        try:
            self.model.load_weights(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"Backup weights {path!r} cannot be loaded: {error}") from error

    def _remove_stale_files(self, keep):
        """Removes older backups' weights and temporary files left by killed writes."""
        for pattern in ("epoch*.weights.h5", ".epoch*.weights.h5.*", f".{self.STATE_FILE}.*"):
            for path in glob.glob(os.path.join(self.backup_dir, pattern)):
                if os.path.basename(path) != keep:
                    os.remove(path)


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


def _seed_generators(model):
    """Every seed generator of `model`'s layers, in a fixed order."""
    return SeedStateMixin._all_seed_generators(model)


def _differences(stored, current):
    """Lines `key: stored X, now Y` for the top-level keys where two settings dicts differ."""
    if not (isinstance(stored, dict) and isinstance(current, dict)):
        return [] if stored == current else [f"stored {stored!r}, now {current!r}"]
    return [
        f"{key}: stored {stored.get(key)!r}, now {current.get(key)!r}"
        for key in sorted(set(stored) | set(current))
        if stored.get(key) != current.get(key)
    ]


def _log_prefix(logs):
    """"val_" when an epoch's logs hold validation accuracy, else "" (training values)."""
    return "val_" if "val_accuracy" in logs else ""


def _trapdoor_accuracy(logs):
    """The trapdoor accuracy of an epoch's logs, validation first; None if absent."""
    return logs.get(f"{_log_prefix(logs)}trapdoor_accuracy")


def _selection_score(logs, min_trapdoor_accuracy):
    """`(trapdoor bar met, clean accuracy, trapdoor accuracy)` of an epoch's logs, validation
    first; None if absent. Logs without a trapdoor accuracy meet the bar."""
    prefix = _log_prefix(logs)
    if f"{prefix}accuracy" not in logs:
        return None
    trapdoor = _trapdoor_accuracy(logs)
    meets_bar = trapdoor is None or trapdoor >= min_trapdoor_accuracy
    return meets_bar, logs[f"{prefix}accuracy"], 0.0 if trapdoor is None else trapdoor
