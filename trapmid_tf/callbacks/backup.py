"""`TrapMIDBackup`: an end-of-epoch backup of the whole training state, and its restore.

It is not built on `keras.callbacks.BackupAndRestore`, whose `_save_model` (Keras 3) writes
`latest.weights.h5` and then `training_metadata.json` in place, one after the other: a kill
between the two writes leaves epoch `k + 1`'s weights with metadata saying epoch `k`, so the
resumed run trains epoch `k + 1` again, from that epoch's end state; a kill while the metadata
file is written leaves it truncated, and the next start fails reading it. It also starts `fit`
at the backed-up epoch through the private `model._initial_epoch`. Here every file is replaced
atomically, the state file last, and the caller passes
`fit(initial_epoch=backup.completed_epochs)`.
"""

import glob
import json
import os

import keras
import numpy as np

from trapmid_tf.files import atomic_path, secret_folder
from trapmid_tf.saving import SeedStateMixin


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
    * the number of completed epochs, `completed_epochs`, to pass as `fit`'s
      `initial_epoch`. A `fit` that starts below it raises `ValueError` at its first epoch,
      before anything is trained or written;
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
        self._restored_epochs = 0

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
        self._restored_epochs = 0 if state is None else state["epoch"]
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

    def on_epoch_begin(self, epoch, logs=None):
        if epoch < self._restored_epochs:
            raise ValueError(
                f"`fit` started at epoch {epoch} (its `initial_epoch`), below the backup's "
                f"completed epochs ({self._restored_epochs}) in {self.backup_dir!r}. Pass "
                "`initial_epoch=backup.completed_epochs` to `fit` to continue the backed-up "
                "run; nothing was trained or written."
            )

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
