"""`ValidationMetrics`: evaluates the model on validation batches at each epoch's end."""

import keras


class ValidationMetrics(keras.callbacks.Callback):
    """Evaluates the model at the end of each epoch and adds `val_*` values to the logs.

    Each batch of `validation_data` goes whole to the model's `test_step`, so a
    `TrapMIDModel` reads a third element as the trapdoor labels and logs
    `val_trapdoor_accuracy`. `fit(validation_data=(images, labels, trapdoor_labels))` given
    arrays would read that third element as sample weights instead. The logs are updated in
    place, so callbacks placed after this one (and the `History`) see the values.

    Args:
        validation_data: A dataset of `(images, labels)` or `(images, labels,
            trapdoor_labels)` batches.
    """

    def __init__(self, validation_data):
        super().__init__()
        if validation_data is None:
            raise ValueError(
                "`validation_data` must be a dataset of (images, labels[, trapdoor_labels]) "
                "batches; received None."
            )
        self.validation_data = validation_data

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        results = self.model.evaluate(self.validation_data, verbose=0, return_dict=True)
        logs.update({f"val_{name}": float(value) for name, value in results.items()})
