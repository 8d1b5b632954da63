"""`TrapMIDModel`: trains any Keras classifier with Trap-MID through `model.fit`."""

import os

import numpy as np
import keras
import tensorflow as tf
from keras import ops

from trapmid_tf.contract import (
    checked_images,
    checked_labels,
    global_batch_mean,
    global_value,
)
from trapmid_tf.defenses.sign_step import SignedGradientStep
from trapmid_tf.files import atomic_path
from trapmid_tf.layers.augment import TrapdoorAugment
from trapmid_tf.layers.triggers import BlendTrigger
from trapmid_tf.models.copies import plain_keras_copy
from trapmid_tf.models.features import feature_extractor
from trapmid_tf.saving import SeedStateMixin
from trapmid_tf.validation import check_model

_serialize = keras.saving.serialize_keras_object
_deserialize = keras.saving.deserialize_keras_object


def build_discriminator(classifier):
    """Builds a fresh copy of `classifier`'s architecture with a single real/fake logit.

    Args:
        classifier: A functional or Sequential Keras classifier.

    Returns:
        A new `keras.Model` (new weights) mapping images to one logit per image.

    Raises:
        ValueError: if the architecture cannot be cloned (subclassed models).
    """
    try:
        clone = keras.models.clone_model(classifier)
    except ValueError as error:
        raise ValueError(
            "discriminator='auto' copies the classifier's architecture, which needs a "
            "functional or Sequential classifier; pass `discriminator=` a Keras model with one "
            f"output logit, or None to train without one. Cloning failed with: {error}"
        ) from error
    features = feature_extractor(clone).output
    realness = keras.layers.Dense(1, name="realness")(features)
    return keras.Model(clone.inputs, realness, name=f"{classifier.name}_discriminator")


def _sub_seed(seed, offset):
    return None if seed is None else int(seed) + offset


@keras.saving.register_keras_serializable(package="trapmid_tf")
class TrapMIDModel(SeedStateMixin, keras.Model):
    """Wraps a classifier and trains it with Trap-MID trapdoors (Liu & Chen, NeurIPS 2024).

    One trigger per class is blended into inputs, `x~ = (1 - alpha) x + alpha t_y`, and the
    classifier learns to predict `y` for `x~`. Model-inversion attacks then fall into this
    shortcut and recover triggers instead of private data. Each `train_step` follows the
    reference iteration:

    1. discriminator step: clean images (real) against triggered images (fake);
    2. trigger step: one signed-gradient step, clipped to [0, 1], on the naturalness loss
       (fool the discriminator) plus the trapdoor loss of the classifier (in inference mode)
       on augmented triggered images;
    3. classifier step on the concatenated batch `[aug(x); aug(x~)]` with the loss
       `(1 - beta) * main_loss(y) + beta * trapdoor_loss(y_trap)`.

    A step costs about six classifier passes of plain training; `FastTrapMIDModel` trades
    this algorithm for speed.

    Data are batches of `(images, labels)`, with trapdoor labels then drawn inside the step
    (balanced within the batch), or `(images, labels, trapdoor_labels)` as produced by
    `trapmid_tf.data.with_trapdoor_labels` (balanced per epoch, as the reference). Images are
    float32 NHWC in [0, 1]. Calling the model runs the classifier alone.

    Args:
        classifier: The Keras classifier to protect; it maps images to logits.
        num_classes: Number of classes (must equal the classifier's output size).
        alpha: Blend weight of the triggers.
        beta: Weight of the trapdoor loss in the classifier loss.
        trigger_step_size: Step size of the signed trigger update.
        optimize_triggers: If false, the random initial triggers stay fixed (no discriminator
            or trigger step).
        discriminator: `"auto"` (a copy of the classifier's architecture with one output),
            a Keras model with one output logit, or None (no naturalness loss).
        augment: True for the reference augmentation (`TrapdoorAugment`), False for none, or
            a Keras layer to use instead (called with `training=True`).
        trigger_channels: Trigger channels, 1 or the image channels (default).
        seed: Seed of the triggers, augmentation and trapdoor-label sampling.
        **kwargs: Standard `keras.Model` arguments.

    Example:
        >>> model = TrapMIDModel(classifier, num_classes=5, alpha=0.1, seed=0)
        >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
        >>> model.fit(train.batch(64), epochs=10)  # doctest: +SKIP
        >>> model.export_classifier("classifier.keras")  # doctest: +SKIP
    """

    def __init__(
        self,
        classifier,
        num_classes,
        alpha=0.02,
        beta=0.2,
        trigger_step_size=0.01,
        optimize_triggers=True,
        discriminator="auto",
        augment=True,
        trigger_channels=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._check_arguments(classifier, num_classes, beta, trigger_step_size)
        self.classifier = classifier
        self.num_classes = int(num_classes)
        self.beta = float(beta)
        self.trigger_step_size = float(trigger_step_size)
        self.optimize_triggers = bool(optimize_triggers)
        self.seed = seed
        self.image_shape = tuple(classifier.input_shape[1:])
        self.trigger = BlendTrigger(
            num_classes, self.image_shape, alpha, trigger_channels, seed=seed, name="trigger"
        )
        self.discriminator = self._resolve_discriminator(discriminator)
        self.augmenter = self._resolve_augment(augment)
        self._custom_augment = isinstance(augment, keras.layers.Layer)
        self.label_seed = keras.random.SeedGenerator(_sub_seed(seed, 2), name="label_seed")
        self._trackers = {
            name: keras.metrics.Mean(name=name)
            for name in ("loss", "main_loss", "trapdoor_loss", "discriminator_loss")
        }
        self._accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self._trapdoor_accuracy = keras.metrics.SparseCategoricalAccuracy(
            name="trapdoor_accuracy"
        )
        self._binary_crossentropy = keras.losses.BinaryCrossentropy(from_logits=True)
        self.built = True

    # === Construction ===

    @staticmethod
    def _check_arguments(classifier, num_classes, beta, trigger_step_size):
        check_model("classifier", classifier)
        if len(classifier.input_shape) != 4 or None in classifier.input_shape[1:]:
            raise ValueError(
                "`classifier` must take images of a fixed (height, width, channels); its input "
                f"shape is {classifier.input_shape}."
            )
        outputs = classifier.output_shape[-1]
        if int(num_classes) != outputs:
            raise ValueError(
                f"`num_classes`={num_classes} disagrees with the classifier, which outputs "
                f"{outputs} logits."
            )
        if not 0.0 <= float(beta) <= 1.0:
            raise ValueError(f"`beta` must be in [0, 1]; received {beta!r}.")
        if float(trigger_step_size) <= 0.0:
            raise ValueError(f"`trigger_step_size` must be > 0; received {trigger_step_size!r}.")

    def _resolve_discriminator(self, discriminator):
        if not self.optimize_triggers or discriminator is None:
            return None
        if isinstance(discriminator, str):
            if discriminator != "auto":
                raise ValueError(
                    "`discriminator` must be 'auto', a keras.Model or None; received "
                    f"{discriminator!r}."
                )
            return build_discriminator(self.classifier)
        if not isinstance(discriminator, keras.Model) or discriminator.output_shape[-1] != 1:
            raise ValueError(
                "`discriminator` must be a keras.Model with one output logit; received "
                f"{discriminator!r}."
            )
        return discriminator

    def _resolve_augment(self, augment):
        if isinstance(augment, keras.layers.Layer):
            return augment
        if augment is True:
            return TrapdoorAugment(seed=_sub_seed(self.seed, 1), name="augment")
        if augment is False or augment is None:
            return None
        raise ValueError(f"`augment` must be a bool or a Keras layer; received {augment!r}.")

    @property
    def alpha(self):
        """Blend weight of the triggers."""
        return self.trigger.alpha

    @property
    def triggers(self):
        """The trigger variable, shape `(num_classes, height, width, channels)`."""
        return self.trigger.triggers

    # === Compilation ===

    def compile(
        self,
        optimizer=None,
        discriminator_optimizer=None,
        loss=None,
        trapdoor_loss=None,
        **kwargs,
    ):
        """Configures training.

        Args:
            optimizer: Classifier optimiser. Default: SGD, learning rate 1e-2, momentum 0.9,
                weight decay 1e-4 (the reference's setting).
            discriminator_optimizer: Discriminator optimiser. Default: a copy of the
                classifier optimiser's configuration.
            loss: Main loss on clean images (a Keras loss on integer labels and logits).
                Default: sparse categorical cross-entropy from logits.
            trapdoor_loss: Loss on triggered images. Default: a new loss of the main loss's
                configuration (so NegLS applies to both, as the reference's Trap-MID + NegLS).
            **kwargs: Other `keras.Model.compile` arguments (`jit_compile`, `run_eagerly`,
                `steps_per_execution`). `jit_compile` defaults to False.
        """
        kwargs.setdefault("jit_compile", False)
        for name in ("metrics", "loss_weights", "weighted_metrics"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"TrapMIDModel.compile does not take `{name}`; its metrics are fixed "
                    "(loss, main_loss, trapdoor_loss, accuracy, trapdoor_accuracy, "
                    "discriminator_loss)."
                )
        optimizer = keras.optimizers.get(
            optimizer
            or keras.optimizers.SGD(learning_rate=1e-2, momentum=0.9, weight_decay=1e-4)
        )
        super().compile(optimizer=optimizer, **kwargs)
        loss = keras.losses.get(
            loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        self.loss = loss
        self.trapdoor_loss = (
            keras.losses.get(trapdoor_loss)
            if trapdoor_loss is not None
            else loss.__class__.from_config(loss.get_config())
        )
        self.trigger_optimizer = SignedGradientStep(self.trigger_step_size)
        self.discriminator_optimizer = None
        if self.discriminator is not None:
            self.discriminator_optimizer = (
                keras.optimizers.get(discriminator_optimizer)
                if discriminator_optimizer is not None
                else optimizer.__class__.from_config(optimizer.get_config())
            )
        self._build_optimizers()

    def _build_optimizers(self):
        with self.distribute_strategy.scope():
            self.optimizer.build(self.classifier.trainable_variables)
            self.trigger_optimizer.build([self.triggers])
            if self.discriminator_optimizer is not None:
                self.discriminator_optimizer.build(self.discriminator.trainable_variables)

    def get_compile_config(self):
        config = {
            "optimizer": _serialize(self.optimizer),
            "loss": _serialize(self.loss),
            "trapdoor_loss": _serialize(self.trapdoor_loss),
            "jit_compile": self.jit_compile,
        }
        if self.discriminator_optimizer is not None:
            config["discriminator_optimizer"] = _serialize(self.discriminator_optimizer)
        return config

    def compile_from_config(self, config):
        config = dict(config)
        for key in ("optimizer", "discriminator_optimizer", "loss", "trapdoor_loss"):
            if key in config:
                config[key] = _deserialize(config[key])
        self.compile(**config)

    # === Training and evaluation ===

    def call(self, images, training=False):
        """Runs the classifier alone (no trigger): what the deployed model computes.

        Args:
            images: Float32 NHWC images in [0, 1].
            training: Whether the classifier runs in training mode.

        Returns:
            Logits, `(batch, num_classes)`.
        """
        return self.classifier(images, training=training)

    @property
    def metrics(self):
        trackers = [
            tracker
            for name, tracker in self._trackers.items()
            if name != "discriminator_loss" or self.discriminator is not None
        ]
        return [*trackers, self._accuracy, self._trapdoor_accuracy]

    def train_step(self, data):
        """One reference Trap-MID step: discriminator, triggers, then classifier.

        Each phase updates its part; the discriminator phase records its loss in the metrics,
        and the step records the classifier phase's losses and accuracies.

        Args:
            data: A batch `(images, labels)` or `(images, labels, trapdoor_labels)`.

        Returns:
            The metrics: loss, main_loss, trapdoor_loss, discriminator_loss (with a
            discriminator), accuracy and trapdoor_accuracy, means over the epoch so far.
        """
        images, labels, trapdoor_labels, checks = self._unpack(data)
        # Every update depends on the input checks, so a bad batch changes nothing.
        with tf.control_dependencies(checks):
            if self.discriminator is not None:
                self._discriminator_phase(images, trapdoor_labels)
            if self.optimize_triggers:
                self._trigger_phase(images, trapdoor_labels)
            terms = self._classifier_phase(images, labels, trapdoor_labels)
        for name in ("loss", "main_loss", "trapdoor_loss"):
            self._trackers[name].update_state(global_value(terms[name]))
        self._accuracy.update_state(labels, terms["clean_logits"])
        self._trapdoor_accuracy.update_state(trapdoor_labels, terms["trap_logits"])
        return {metric.name: metric.result() for metric in self.metrics}

    def _discriminator_phase(self, images, trapdoor_labels):
        """Discriminator step: clean images are real, triggered images (held fixed) fake."""
        triggered = ops.stop_gradient(self.trigger(images, trapdoor_labels))
        batch = ops.shape(images)[0]
        targets = ops.concatenate([ops.ones((batch, 1)), ops.zeros((batch, 1))], axis=0)
        variables = self.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            realness = self.discriminator(
                ops.concatenate([images, triggered], axis=0), training=True
            )
            loss = self._binary_crossentropy(targets, realness)
            scaled = self.discriminator_optimizer.scale_loss(loss)
        self.discriminator_optimizer.apply(tape.gradient(scaled, variables), variables)
        self._trackers["discriminator_loss"].update_state(global_value(loss))

    def _trigger_phase(self, images, trapdoor_labels):
        """Signed trigger step on effectiveness plus naturalness.

        Effectiveness: the trapdoor loss of the classifier (inference mode) on the augmented
        triggered images. Naturalness: the triggered images should fool the discriminator.
        """
        with tf.GradientTape() as tape:
            triggered = self.trigger(images, trapdoor_labels)
            logits = self.classifier(self._augment(triggered), training=False)
            loss = self.trapdoor_loss(trapdoor_labels, logits)
            if self.discriminator is not None:
                loss += self._naturalness_loss(triggered)
        self._step_triggers(tape.gradient(loss, self.triggers))

    def _classifier_phase(self, images, labels, trapdoor_labels):
        """Classifier step on `[aug(x); aug(x~)]` with the triggers held fixed.

        Returns:
            The `_classifier_loss` terms, for the metrics.
        """
        triggered = ops.stop_gradient(self.trigger(images, trapdoor_labels))
        variables = self.classifier.trainable_variables
        with tf.GradientTape() as tape:
            terms = self._classifier_loss(images, triggered, labels, trapdoor_labels)
            scaled = self.optimizer.scale_loss(terms["loss"])
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        return terms

    def _classifier_loss(self, images, triggered, labels, trapdoor_labels):
        """`(1 - beta) * main_loss + beta * trapdoor_loss` on one concatenated batch.

        The classifier runs in training mode on `[aug(x); aug(x~)]` (batch statistics over
        both halves, independent augmentations); its own regularisation losses are added.

        Returns:
            A dict of `loss`, `main_loss`, `trapdoor_loss` and the logits of both halves,
            `clean_logits` and `trap_logits`.
        """
        batch = ops.shape(images)[0]
        inputs = self._augment(ops.concatenate([images, triggered], axis=0))
        logits = self.classifier(inputs, training=True)
        clean_logits, trap_logits = logits[:batch], logits[batch:]
        main_loss = self.loss(labels, clean_logits)
        trapdoor_loss = self.trapdoor_loss(trapdoor_labels, trap_logits)
        loss = (1.0 - self.beta) * main_loss + self.beta * trapdoor_loss
        if self.classifier.losses:
            loss += global_batch_mean(ops.sum(self.classifier.losses))
        return {"loss": loss, "main_loss": main_loss, "trapdoor_loss": trapdoor_loss,
                "clean_logits": clean_logits, "trap_logits": trap_logits}

    def _naturalness_loss(self, triggered):
        """How far the discriminator (inference mode) is from calling `triggered` real."""
        realness = self.discriminator(triggered, training=False)
        return self._binary_crossentropy(ops.ones_like(realness), realness)

    def _step_triggers(self, gradient):
        """Applies the signed step, clipped to [0, 1], to the triggers."""
        # Densify: the gather's sparse gradient has one row per sample, and the sign must be
        # taken of their sum per trigger (repeated labels add up, as in the reference).
        self.trigger_optimizer.apply([tf.convert_to_tensor(gradient)], [self.triggers])

    def _augment(self, images):
        if self.augmenter is None:
            return images
        return self.augmenter(images, training=True)

    def test_step(self, data):
        """Scores clean images and their triggered copies (no update).

        Args:
            data: A batch `(images, labels)` or `(images, labels, trapdoor_labels)`.

        Returns:
            The metrics: loss, accuracy on the clean images and trapdoor_accuracy on the
            triggered ones, means over the evaluation so far.
        """
        images, labels, trapdoor_labels, checks = self._unpack(data)
        with tf.control_dependencies(checks):
            clean_logits = self.classifier(images, training=False)
            trap_logits = self.classifier(self.trigger(images, trapdoor_labels), training=False)
        # Weighted by batch size, as Keras' own loss tracker: a smaller last batch counts less.
        self._trackers["loss"].update_state(
            global_value(self.loss(labels, clean_logits)), sample_weight=ops.shape(images)[0]
        )
        self._accuracy.update_state(labels, clean_logits)
        self._trapdoor_accuracy.update_state(trapdoor_labels, trap_logits)
        return {
            m.name: m.result()
            for m in (self._trackers["loss"], self._accuracy, self._trapdoor_accuracy)
        }

    # === Input checks ===

    def _unpack(self, data):
        """Splits a batch, checks it and draws trapdoor labels if it has none.

        Returns:
            `(images, labels, trapdoor_labels, checks)`, where `checks` are the assertion ops
            (pixels finite and in [0, 1], labels in range) that the step must depend on.
        """
        if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
            raise ValueError(
                "TrapMIDModel expects batches of (images, labels) or (images, labels, "
                f"trapdoor_labels); received {type(data).__name__} of "
                f"{len(data) if isinstance(data, (tuple, list)) else 1} element(s)."
            )
        images, checks = checked_images(data[0], self.image_shape)
        labels, label_checks = checked_labels(data[1], self.num_classes)
        checks += label_checks
        if len(data) == 3 and data[2] is not None:  # `train_on_batch` passes (x, y, None)
            trapdoor_labels, label_checks = checked_labels(
                data[2], self.num_classes, "trapdoor_labels"
            )
            checks += label_checks
        else:
            trapdoor_labels = self._sample_trapdoor_labels(ops.shape(images)[0])
        return images, labels, trapdoor_labels, checks

    def _sample_trapdoor_labels(self, batch):
        """Draws trapdoor labels balanced within the batch (counts differ by at most one)."""
        offset = keras.random.randint((), 0, self.num_classes, seed=self.label_seed)
        labels = (ops.arange(batch, dtype="int32") + offset) % self.num_classes
        return keras.random.shuffle(labels, seed=self.label_seed)

    # === Artefacts ===

    def export_classifier(self, path):
        """Writes the deployable classifier alone (no triggers, no discriminator) to `path`.

        Args:
            path: Destination `.keras` file; written atomically.
        """
        _check_suffix(path, ".keras", "path")
        with atomic_path(path) as temp:
            plain_keras_copy(self.classifier).save(temp)

    def save_triggers(self, path):
        """Writes the triggers to a `.npz` file readable by the owner only (they are secret).

        Args:
            path: Destination `.npz` file; written atomically with permissions 0600.
        """
        _check_suffix(path, ".npz", "path")
        with atomic_path(path, secret=True) as temp:
            with open(temp, "wb") as stream:
                np.savez(
                    stream,
                    triggers=ops.convert_to_numpy(self.triggers),
                    alpha=np.float32(self.alpha),
                )

    def load_triggers(self, path):
        """Loads triggers written by `save_triggers`.

        Args:
            path: A `.npz` file with a `triggers` array of this model's trigger shape.

        Raises:
            FileNotFoundError: if `path` does not exist.
            ValueError: if the stored triggers do not fit this model.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Trigger file not found: {path!r}.")
        with np.load(path) as stored:
            if "triggers" not in stored:
                raise ValueError(f"{path!r} holds no `triggers` array.")
            triggers = stored["triggers"]
        expected = tuple(self.triggers.shape)
        if triggers.shape != expected:
            raise ValueError(
                f"Triggers in {path!r} have shape {triggers.shape}; this model expects {expected}."
            )
        self.triggers.assign(triggers.astype("float32"))

    # === Saving ===

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "classifier": _serialize(self.classifier),
            "num_classes": self.num_classes,
            "alpha": self.alpha,
            "beta": self.beta,
            "trigger_step_size": self.trigger_step_size,
            "optimize_triggers": self.optimize_triggers,
            "discriminator": _serialize(self.discriminator) if self.discriminator else None,
            "augment": (
                _serialize(self.augmenter) if self._custom_augment else self.augmenter is not None
            ),
            "trigger_channels": self.trigger.channels,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("classifier", "discriminator", "augment"):
            if isinstance(config.get(key), dict):
                config[key] = _deserialize(config[key])
        return cls(**config)


def _check_suffix(path, suffix, name):
    if not str(path).endswith(suffix):
        raise ValueError(f"`{name}` must end with {suffix!r}; received {str(path)!r}.")
