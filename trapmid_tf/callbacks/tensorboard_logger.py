"""`TensorBoardLogger`: epoch scalars and trigger images in one TensorBoard event folder."""

import os

import keras
import numpy as np
import tensorflow as tf

from trapmid_tf.defenses.trapmid import TrapMIDModel
from trapmid_tf.files import secret_folder

#: Most trigger images written per epoch.
MAX_TRIGGER_IMAGES = 16


class TensorBoardLogger(keras.callbacks.Callback):
    """Writes every scalar of an epoch's logs, and the triggers as images, to TensorBoard.

    The events go to `log_dir/trapmid` (owner-only: the trigger images are secret), one value
    per tag and epoch, the step being the 0-based epoch. Tags are the log names (`loss`,
    `val_accuracy`, ...) and `triggers` for the first 16 triggers of a `TrapMIDModel` (other
    models log scalars only). Place it after the callbacks that add values to the logs.

    Args:
        log_dir: Folder under which the `trapmid` event folder is written.
    """

    def __init__(self, log_dir):
        super().__init__()
        if not log_dir:
            raise ValueError(f"`log_dir` must be a folder path; received {log_dir!r}.")
        self.log_dir = os.fspath(log_dir)
        self._writer = None

    def on_train_begin(self, logs=None):
        folder = secret_folder(os.path.join(self.log_dir, "trapmid"))
        self._writer = tf.summary.create_file_writer(folder)

    def on_epoch_end(self, epoch, logs=None):
        with self._writer.as_default(step=epoch):
            for name, value in (logs or {}).items():
                if np.ndim(value) == 0:
                    tf.summary.scalar(name, float(value))
            if isinstance(self.model, TrapMIDModel):
                triggers = self.model.triggers.numpy()
                tf.summary.image(
                    "triggers", triggers, max_outputs=min(len(triggers), MAX_TRIGGER_IMAGES)
                )
        self._writer.flush()

    def on_train_end(self, logs=None):
        self._writer.close()
        self._writer = None
