"""Negative label smoothing (NegLS) with the reference's epoch schedule."""

import keras
from keras import ops


def negls_factor(epoch, num_epochs, start_epoch, full_epoch):
    """Fraction of the full smoothing applied at `epoch` (0-based), as in the reference.

    0 before `start_epoch`; `(epoch + 1 - start_epoch) / (num_epochs - start_epoch)` from
    `start_epoch` until `full_epoch`; 1 from `full_epoch` on.

    Args:
        epoch: The epoch about to start, counted from 0.
        num_epochs: Total number of training epochs.
        start_epoch: First epoch with smoothing.
        full_epoch: First epoch with the full smoothing.

    Returns:
        The factor, a float in [0, 1].
    """
    if epoch >= full_epoch:
        return 1.0
    if epoch < start_epoch:
        return 0.0
    return (epoch + 1 - start_epoch) / (num_epochs - start_epoch)


@keras.saving.register_keras_serializable(package="trapmid_tf")
class NegLSLoss(keras.losses.Loss):
    """Cross-entropy with (negative) label smoothing on a schedule.

    Per sample: `(1 - s) * (-log p_y) + s * mean_k(-log p_k)`, where
    `s = smoothing * negls_factor(epoch, ...)`. A negative `smoothing` (the reference uses
    -0.05) pushes predictions to be over-confident, which hides less-confident directions that
    model-inversion attacks follow. The reference schedules are: CelebA 100 epochs,
    `start_epoch=50, full_epoch=75`; MNIST 10 epochs, `start_epoch=5, full_epoch=7`.
    Advance the schedule with `set_epoch` (the `NegLSScheduler` and `TrapMIDCallback`
    callbacks do it at the start of each epoch).

    Args:
        smoothing: Full smoothing value (negative for NegLS).
        num_epochs: Total number of training epochs.
        start_epoch: First epoch with smoothing (defaults to half of `num_epochs`).
        full_epoch: First epoch with full smoothing (defaults to three quarters of
            `num_epochs`).
        epoch: The epoch the schedule starts at.
        from_logits: Whether predictions are logits (default) or probabilities.
        **kwargs: Standard loss arguments (`reduction`, `name`).
    """

    def __init__(
        self,
        smoothing=-0.05,
        num_epochs=100,
        start_epoch=None,
        full_epoch=None,
        epoch=0,
        from_logits=True,
        **kwargs,
    ):
        kwargs.setdefault("name", "negls")
        super().__init__(**kwargs)
        num_epochs = int(num_epochs)
        if num_epochs < 1:
            raise ValueError(f"`num_epochs` must be >= 1; received {num_epochs!r}.")
        start_epoch = num_epochs // 2 if start_epoch is None else int(start_epoch)
        full_epoch = (3 * num_epochs) // 4 if full_epoch is None else int(full_epoch)
        if not 0 <= start_epoch <= full_epoch:
            raise ValueError(
                "Expected 0 <= `start_epoch` <= `full_epoch`; received "
                f"start_epoch={start_epoch}, full_epoch={full_epoch}."
            )
        self.smoothing = float(smoothing)
        self.num_epochs = num_epochs
        self.start_epoch = start_epoch
        self.full_epoch = full_epoch
        self.from_logits = from_logits
        self.epoch = int(epoch)
        # In the loss's own dtype (floatx unless given): a float64 loss smooths by the float64
        # value, not by its float32 rounding.
        self.current_smoothing = keras.Variable(
            self.smoothing_at(self.epoch), trainable=False, dtype=self.dtype, name="negls_s"
        )

    def smoothing_at(self, epoch):
        """The smoothing value the schedule gives at an epoch.

        Args:
            epoch: 0-based epoch.

        Returns:
            A float: `smoothing * negls_factor(epoch, ...)`.
        """
        factor = negls_factor(epoch, self.num_epochs, self.start_epoch, self.full_epoch)
        return self.smoothing * factor

    def set_epoch(self, epoch):
        """Moves the schedule to an epoch; the loss then uses `smoothing_at(epoch)`.

        Args:
            epoch: 0-based epoch.
        """
        self.epoch = int(epoch)
        self.current_smoothing.assign(self.smoothing_at(self.epoch))

    def call(self, y_true, y_pred):
        """Per-sample smoothed cross-entropy at the current epoch's smoothing.

        Args:
            y_true: Int class indices, `(batch,)` or `(batch, 1)`.
            y_pred: Logits (or probabilities when `from_logits=False`), `(batch, classes)`.

        Returns:
            Losses, `(batch,)`.
        """
        log_probs = (
            ops.log_softmax(y_pred, axis=-1)
            if self.from_logits
            else ops.log(ops.clip(y_pred, 1e-7, 1.0))
        )
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        true_nll = -ops.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
        mean_nll = -ops.mean(log_probs, axis=-1)
        s = ops.cast(self.current_smoothing, log_probs.dtype)
        return (1.0 - s) * true_nll + s * mean_nll

    def get_config(self):
        config = super().get_config()
        config.update(
            smoothing=self.smoothing,
            num_epochs=self.num_epochs,
            start_epoch=self.start_epoch,
            full_epoch=self.full_epoch,
            epoch=self.epoch,
            from_logits=self.from_logits,
            # Keras's `Loss.get_config` leaves the dtype out; a copy (the trapdoor loss
            # `TrapMIDModel.compile` makes) keeps it.
            dtype=self.dtype,
        )
        return config


def negls_losses(model):
    """Returns the `NegLSLoss` objects a compiled model trains with (main and trapdoor)."""
    candidates = (getattr(model, "loss", None), getattr(model, "trapdoor_loss", None))
    return [loss for loss in candidates if isinstance(loss, NegLSLoss)]


class NegLSScheduler(keras.callbacks.Callback):
    """Advances every `NegLSLoss` of the model at the start of each epoch.

    `TrapMIDCallback` runs one first among its parts; use this callback alone when training
    without `TrapMIDCallback`.

    Example:
        >>> classifier.compile(optimizer="adam", loss=NegLSLoss(-0.05, num_epochs=10))
        >>> scheduler = NegLSScheduler()
        >>> classifier.fit(train.batch(64), epochs=10, callbacks=[scheduler])  # doctest: +SKIP
    """

    def on_epoch_begin(self, epoch, logs=None):
        for loss in negls_losses(self.model):
            loss.set_epoch(epoch)
