"""`TriggerCheckpoints`: the triggers of every `every`-th epoch, one `.npz` file each."""

import os

import keras

from trapmid_tf.defenses.trapmid import TrapMIDModel


class TriggerCheckpoints(keras.callbacks.Callback):
    """Saves a `TrapMIDModel`'s triggers every `every` epochs as `triggers_epoch{N}.npz`.

    `N` counts epochs from 1, so with `every=10` the files are `triggers_epoch10.npz`,
    `triggers_epoch20.npz`, ... in `folder`, written atomically with owner-only permissions
    (see `TrapMIDModel.save_triggers`). Models without triggers are skipped.

    Args:
        folder: Folder of the files (created if missing).
        every: Period, in epochs, of the files (>= 1).
    """

    def __init__(self, folder, every=10):
        super().__init__()
        if not folder:
            raise ValueError(f"`folder` must be a folder path; received {folder!r}.")
        self.folder = os.fspath(folder)
        self.every = checked_period(every)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0 and isinstance(self.model, TrapMIDModel):
            self.model.save_triggers(os.path.join(self.folder, f"triggers_epoch{epoch + 1}.npz"))


def checked_period(every):
    """Checks a period in epochs.

    Args:
        every: The period; must be an integer >= 1.

    Returns:
        `every` as an int.

    Raises:
        ValueError: if `every` is below 1.
    """
    if int(every) < 1:
        raise ValueError(f"`every` must be >= 1; received {every!r}.")
    return int(every)
