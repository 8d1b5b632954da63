"""`FastTrapMIDModel`: Trap-MID at a lower cost per step, an algorithm of its own."""

import keras
import tensorflow as tf
from keras import ops

from trapmid_tf.defenses.trapmid import TrapMIDModel
from trapmid_tf.validation import check_positive_int


@keras.saving.register_keras_serializable(package="trapmid_tf")
class FastTrapMIDModel(TrapMIDModel):
    """`TrapMIDModel` with two changes to the reference step that save most of its passes.

    - Shared trigger gradient: no trigger phase. The classifier phase also differentiates
      its loss with respect to the triggers, so the effectiveness term comes from the
      classifier in training mode on the step's augmented batch; the naturalness term is
      added to that loss (no classifier weight depends on it). The triggers take their
      signed step after the classifier's, which therefore sees them before their step.
    - The discriminator phase and the naturalness term run on every k-th step only (the
      first included); on the other steps the triggers follow the effectiveness term alone.

    Args:
        *args: `TrapMIDModel` arguments; `beta` must be > 0 (the triggers' gradient is read
            from the classifier loss, where the trapdoor loss has weight `beta`).
        discriminator_interval: k, an integer >= 1. Above 1, with a discriminator, training
            needs a single replica (a conditional update cannot synchronise replicas), which
            `compile` checks.
        **kwargs: `TrapMIDModel` arguments.
    """

    def __init__(self, *args, discriminator_interval=4, **kwargs):
        super().__init__(*args, **kwargs)
        if self.beta == 0.0:
            raise ValueError(
                "FastTrapMIDModel reads the triggers' gradient from the classifier loss, so "
                "`beta` must be > 0; received beta=0."
            )
        self.discriminator_interval = check_positive_int(
            "discriminator_interval", discriminator_interval
        )

    def compile(self, *args, **kwargs):
        """`TrapMIDModel.compile`, refusing several replicas when k > 1.

        Args:
            *args: `TrapMIDModel.compile` arguments.
            **kwargs: `TrapMIDModel.compile` arguments.

        Raises:
            ValueError: If the model has a discriminator, `discriminator_interval` > 1 and
                it was built under a `tf.distribute` strategy of several replicas.
        """
        replicas = self.distribute_strategy.num_replicas_in_sync
        if self.discriminator is not None and self.discriminator_interval > 1 and replicas > 1:
            raise ValueError(
                f"`discriminator_interval`={self.discriminator_interval} needs a single replica "
                f"(a conditional update cannot synchronise replicas); the model was built "
                f"under a strategy of {replicas} replicas."
            )
        super().compile(*args, **kwargs)

    def _discriminator_phase(self, images, trapdoor_labels):
        """The reference discriminator phase, on every k-th step only."""
        reference_phase = super()._discriminator_phase
        self._on_discriminator_turn(
            lambda: reference_phase(images, trapdoor_labels), lambda: None
        )

    def _trigger_phase(self, images, trapdoor_labels):
        """Nothing: the triggers take their step in the classifier phase."""

    def _classifier_phase(self, images, labels, trapdoor_labels):
        """Classifier step, then the triggers' signed step from the same backward pass.

        The objective is the classifier loss plus `beta * naturalness`, so its gradient with
        respect to the triggers is `beta` times that of effectiveness plus naturalness (times
        the optimiser's loss scale): a positive factor, which the sign step ignores.

        Returns:
            The `_classifier_loss` terms, for the metrics (the naturalness term apart).
        """
        if not self.optimize_triggers:
            return super()._classifier_phase(images, labels, trapdoor_labels)
        variables = self.classifier.trainable_variables
        with tf.GradientTape() as tape:
            triggered = self.trigger(images, trapdoor_labels)
            terms = self._classifier_loss(images, triggered, labels, trapdoor_labels)
            objective = terms["loss"]
            if self.discriminator is not None:
                objective += self.beta * self._on_discriminator_turn(
                    lambda: self._naturalness_loss(triggered), lambda: ops.zeros(())
                )
            scaled = self.optimizer.scale_loss(objective)
        *gradients, trigger_gradient = tape.gradient(scaled, [*variables, self.triggers])
        self.optimizer.apply(gradients, variables)
        self._step_triggers(trigger_gradient)
        return terms

    def _on_discriminator_turn(self, run, skip):
        """`run()` on every `discriminator_interval`-th step (the first included), else `skip()`."""
        if self.discriminator_interval == 1:
            return run()
        turn = ops.equal(self.optimizer.iterations % self.discriminator_interval, 0)
        return tf.cond(turn, run, skip)

    def get_config(self):
        return {**super().get_config(), "discriminator_interval": self.discriminator_interval}
