"""MID (Wang et al., AAAI 2021): a variational information bottleneck (VIB) on a classifier.

`MIDModel` replaces a classifier's "logits" Dense by a stochastic code: the penultimate
feature goes through two Dense layers to the mean `mu` and the scale `softplus(s - 5)` of a
Gaussian code of `code_dim` dimensions (the reference's `VGG16_vib`, with its `Linear(d, 2k)`
split into the `mu` and `s` halves), and a new "logits" Dense reads the code. Training samples
the code, `z = mu + std * eps`, and minimises `CE + beta * KL(N(mu, std^2) || N(0, I))`;
inference uses `z = mu`. The module also holds `RegularizedClassifierModel`, the `fit`
machinery shared with `trapmid_tf.defenses.bido.BiDOModel`.
"""

import keras
import tensorflow as tf
from keras import ops

from trapmid_tf.contract import (
    checked_images,
    checked_labels,
    global_batch_mean,
    global_value,
    replica_slot,
)
from trapmid_tf.files import atomic_path
from trapmid_tf.saving import SeedStateMixin
from trapmid_tf.models.common import LOGITS_LAYER_NAME
from trapmid_tf.models.copies import plain_keras_copy
from trapmid_tf.models.features import feature_extractor
from trapmid_tf.models.torch_layers import torch_default_dense
from trapmid_tf.validation import check_model, check_positive_int

_serialize = keras.saving.serialize_keras_object
_deserialize = keras.saving.deserialize_keras_object

# beta of the MID model-inversion benchmarks on faces (VGG16 on CelebA in MIA-ToolBox). The
# BiDO repository's released CelebA VIB model used 0.01.
DEFAULT_BETA = 0.003
SCALE_OFFSET = 5.0  # std = softplus(s - 5), as the reference's VIB head.
MIN_STD = 1e-8  # floor of std inside log(std), so an underflowed std gives a finite KL.


def gaussian_kl(mean, std):
    """KL divergence of `N(mean, diag(std^2))` from `N(0, I)`, per sample.

    Args:
        mean: Code means, shape `(batch, code_dim)`.
        std: Code standard deviations (> 0), same shape.

    Returns:
        Shape `(batch,)`: `0.5 * sum_k(mean_k^2 + std_k^2 - 1 - 2 log std_k)`.
    """
    log_std = ops.log(ops.maximum(std, MIN_STD))
    return 0.5 * ops.sum(ops.square(mean) + ops.square(std) - 1.0 - 2.0 * log_std, axis=-1)


def non_negative_float(name, value, allow_zero=True):
    """Returns `value` as a float after checking it is a number >= 0 (> 0 without zero).

    Args:
        name: Argument name shown in the message.
        value: The value to check.
        allow_zero: Whether 0 is allowed.

    Raises:
        ValueError: If `value` is not such a number (NaN included).
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not (number >= 0.0 if allow_zero else number > 0.0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be a number {bound}; received {value!r}.")
    return number


def _check_classifier(classifier):
    check_model("classifier", classifier)
    try:
        inputs, outputs = classifier.inputs, classifier.outputs
        input_shape, output_shape = classifier.input_shape, classifier.output_shape
    except (AttributeError, ValueError):
        inputs = outputs = None
    if len(inputs or ()) != 1 or len(outputs or ()) != 1:
        raise ValueError(
            "`classifier` must be a functional keras.Model with one image input and one logits "
            f"output; received {type(classifier).__name__} {classifier.name!r}."
        )
    if len(input_shape) != 4 or None in input_shape[1:]:
        raise ValueError(
            "`classifier` must take images of a fixed (height, width, channels); its input "
            f"shape is {input_shape}."
        )
    if len(output_shape) != 2 or output_shape[-1] is None:
        raise ValueError(
            "`classifier` must output logits of shape (batch, num_classes); its output shape "
            f"is {output_shape}."
        )


@keras.saving.register_keras_serializable(package="trapmid_tf")
class RegularizedClassifierModel(SeedStateMixin, keras.Model):
    """Base of the defenses trained by `fit` on `main_loss(y, logits) + regularizer`.

    Subclasses implement `_training_forward` (logits and regularizer in training mode),
    `_trained_variables` and `_deployable_classifier`, and list the names of the regularizer
    terms they log in `regularizer_metrics`. Batches are `(images, labels)`: float images
    NHWC in [0, 1] and integer class labels.

    Args:
        classifier: A functional Keras classifier mapping images to logits.
        **kwargs: Standard `keras.Model` arguments.
    """

    regularizer_metrics = ()

    def __init__(self, classifier, **kwargs):
        super().__init__(**kwargs)
        _check_classifier(classifier)
        self.classifier = classifier
        self.num_classes = int(classifier.output_shape[-1])
        self.image_shape = tuple(classifier.input_shape[1:])
        self._trackers = {
            name: keras.metrics.Mean(name=name)
            for name in ("loss", "main_loss", *self.regularizer_metrics)
        }
        self._accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    # === Hooks for subclasses ===

    def _training_forward(self, images, labels):
        """Returns `(logits, regularizer, terms)` of a training-mode forward pass.

        `regularizer` is added to the main loss and `terms` maps each name of
        `regularizer_metrics` to its value; both are this replica's shares
        (`contract.global_batch_mean`, as Keras losses are), so that summed replica gradients
        are those of the global batch.
        """
        raise NotImplementedError

    def _trained_variables(self):
        """The variables the optimiser updates."""
        raise NotImplementedError

    def _deployable_classifier(self):
        """The plain functional classifier that `export_classifier` writes."""
        raise NotImplementedError

    # === Compilation ===

    def compile(self, optimizer=None, loss=None, **kwargs):
        """Configures training.

        Args:
            optimizer: Optimiser. Default: SGD, learning rate 1e-2, momentum 0.9, weight decay
                1e-4 (the reference's setting).
            loss: Main loss on integer labels and logits. Default: sparse categorical
                cross-entropy from logits.
            **kwargs: Other `keras.Model.compile` arguments (`jit_compile`, `run_eagerly`,
                `steps_per_execution`). `jit_compile` defaults to False.

        Raises:
            ValueError: If `metrics`, `loss_weights` or `weighted_metrics` are given.
        """
        kwargs.setdefault("jit_compile", False)
        for name in ("metrics", "loss_weights", "weighted_metrics"):
            if kwargs.get(name) is not None:
                fixed = ", ".join(("loss", "main_loss", *self.regularizer_metrics, "accuracy"))
                raise ValueError(
                    f"{type(self).__name__}.compile does not take `{name}`; its metrics are "
                    f"fixed ({fixed})."
                )
        optimizer = keras.optimizers.get(
            optimizer
            or keras.optimizers.SGD(learning_rate=1e-2, momentum=0.9, weight_decay=1e-4)
        )
        super().compile(optimizer=optimizer, **kwargs)
        self.loss = keras.losses.get(
            loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        with self.distribute_strategy.scope():
            self.optimizer.build(self._trained_variables())

    def get_compile_config(self):
        return {
            "optimizer": _serialize(self.optimizer),
            "loss": _serialize(self.loss),
            "jit_compile": self.jit_compile,
        }

    def compile_from_config(self, config):
        config = dict(config)
        for key in ("optimizer", "loss"):
            config[key] = _deserialize(config[key])
        self.compile(**config)

    # === Training and evaluation ===

    @property
    def metrics(self):
        return [*self._trackers.values(), self._accuracy]

    def train_step(self, data):
        """One update of the trained variables on `main_loss + regularizer`.

        Args:
            data: A batch `(images, labels)`.

        Returns:
            The metrics: loss, main_loss, the `regularizer_metrics` terms and accuracy,
            means over the epoch so far.
        """
        images, labels, checks = self._unpack(data)
        variables = self._trained_variables()
        with tf.control_dependencies(checks):
            with tf.GradientTape() as tape:
                logits, regularizer, terms = self._training_forward(images, labels)
                main_loss = self.loss(labels, logits)
                loss = main_loss + regularizer
                if self.losses:
                    loss += global_batch_mean(ops.sum(self.losses))
                scaled = self.optimizer.scale_loss(loss)
            gradients = tape.gradient(scaled, variables)
            self.optimizer.apply(gradients, variables)
        self._accuracy.update_state(labels, logits)
        for name, value in {"loss": loss, "main_loss": main_loss, **terms}.items():
            self._trackers[name].update_state(global_value(value))
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        """Measures the main loss and the accuracy of the model in inference mode.

        Args:
            data: A batch `(images, labels)`.

        Returns:
            The metrics `{"loss", "accuracy"}`, means over the evaluation so far.
        """
        images, labels, checks = self._unpack(data)
        with tf.control_dependencies(checks):
            logits = self(images, training=False)
        loss_tracker = self._trackers["loss"]
        # Weighted by batch size, as Keras' own loss tracker: a smaller last batch counts less.
        loss_tracker.update_state(
            global_value(self.loss(labels, logits)), sample_weight=ops.shape(images)[0]
        )
        self._accuracy.update_state(labels, logits)
        return {m.name: m.result() for m in (loss_tracker, self._accuracy)}

    def _unpack(self, data):
        """Returns `(images, labels, checks)`; `checks` assert the values (see `contract`)."""
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            count = len(data) if isinstance(data, (tuple, list)) else 1
            raise ValueError(
                f"{type(self).__name__} expects batches of (images, labels); received "
                f"{type(data).__name__} of {count} element(s)."
            )
        images, checks = checked_images(data[0], self.image_shape)
        labels, label_checks = checked_labels(data[1], self.num_classes)
        return images, labels, checks + label_checks

    # === Artefacts and saving ===

    def export_classifier(self, path):
        """Writes the deployable classifier, a plain functional Keras model, to `path`.

        It maps images to logits with standard Keras layers only, so
        `keras.models.load_model` reads it without this package, and it predicts what this
        model predicts at inference.

        Args:
            path: Destination `.keras` file; written atomically.

        Raises:
            ValueError: If `path` does not end in `.keras`.
        """
        if not str(path).endswith(".keras"):
            raise ValueError(f"`path` must end with '.keras'; received {str(path)!r}.")
        with atomic_path(path) as temp:
            plain_keras_copy(self._deployable_classifier()).save(temp)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "classifier": _serialize(self.classifier),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["classifier"] = _deserialize(config["classifier"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="trapmid_tf")
class MIDModel(RegularizedClassifierModel):
    """Trains a classifier with MID's variational information bottleneck (Wang et al., 2021).

    The classifier's penultimate feature (the input of its "logits" Dense, see
    `trapmid_tf.models.features`) feeds a Gaussian code: `mu = Dense(feature)`,
    `std = softplus(Dense(feature) - 5)`. A new "logits" Dense maps the code to logits; the
    classifier's own "logits" layer is not used. Training samples `z = mu + std * eps`,
    `eps ~ N(0, I)`, and minimises `loss(y, logits) + beta * mean_batch(KL)`, the KL of
    `N(mu, std^2)` from `N(0, I)` summed over the code. Calling the model (and `predict`,
    `evaluate`, the exported classifier) uses `z = mu`, so inference is deterministic; the
    reference's legacy `VGG16_vib` samples at inference as well.

    Metrics: loss, main_loss, kl, accuracy.

    Args:
        classifier: A functional Keras classifier following the "logits" convention.
        beta: Weight of the KL term, >= 0. Default 0.003, the faces (CelebA) setting.
        code_dim: Size of the code; None for half the feature size (the reference's 1024 for
            VGG16's 2048-d feature).
        seed: Seed of the code noise.
        **kwargs: Standard `keras.Model` arguments.

    Raises:
        ValueError: On a bad `beta` or `code_dim`, or a classifier without a flat feature
            feeding a "logits" Dense.

    Example:
        >>> model = MIDModel(classifier, beta=0.01, seed=0)
        >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
        >>> model.fit(train.batch(64), epochs=10)  # doctest: +SKIP
        >>> model.export_classifier("classifier.keras")  # doctest: +SKIP
    """

    regularizer_metrics = ("kl",)

    def __init__(self, classifier, beta=DEFAULT_BETA, code_dim=None, seed=None, **kwargs):
        super().__init__(classifier, **kwargs)
        self.beta = non_negative_float("beta", beta)
        self.seed = seed
        self.features = feature_extractor(classifier)
        feature_shape = self.features.output_shape
        if len(feature_shape) != 2 or feature_shape[-1] is None:
            raise ValueError(
                "`classifier`'s feature (the input of its 'logits' Dense) must be flat, shape "
                f"(batch, dim); received shape {feature_shape}."
            )
        feature_dim = int(feature_shape[-1])
        if code_dim is None:
            code_dim = max(1, feature_dim // 2)
        check_positive_int("code_dim", code_dim)
        self.code_dim = int(code_dim)
        self.code_mean = torch_default_dense(self.code_dim, feature_dim, "code_mean")
        self.code_scale = torch_default_dense(self.code_dim, feature_dim, "code_scale")
        self.code_logits = torch_default_dense(self.num_classes, self.code_dim, LOGITS_LAYER_NAME)
        self.code_mean.build((None, feature_dim))
        self.code_scale.build((None, feature_dim))
        self.code_logits.build((None, self.code_dim))
        self.noise_seed = keras.random.SeedGenerator(seed, name="noise_seed")
        self.built = True

    def code_distribution(self, images, training=False):
        """Returns the code's mean and standard deviation for `images`.

        Args:
            images: Float images, shape `(batch, *image_shape)`.
            training: Whether the classifier body runs in training mode.

        Returns:
            `(mean, std)`, each of shape `(batch, code_dim)`.
        """
        features = self.features(images, training=training)
        std = ops.softplus(self.code_scale(features) - SCALE_OFFSET)
        return self.code_mean(features), std

    def call(self, images, training=False):
        """Classifies images through the code: sampled when training, its mean otherwise.

        Args:
            images: Float32 NHWC images in [0, 1].
            training: Whether to sample the code and run the body in training mode.

        Returns:
            Logits, `(batch, num_classes)`.
        """
        mean, std = self.code_distribution(images, training=training)
        code = self._sample_code(mean, std) if training else mean
        return self.code_logits(code)

    def _sample_code(self, mean, std):
        """Returns `mean + std * eps`, `eps ~ N(0, I)` drawn from the noise seed stream.

        Under `tf.distribute` every replica draws the noise of the whole global batch and
        takes its own slice (as `TrapdoorAugment`), so replicas do not repeat each other's
        noise and a step equals the one-device step.
        """
        replicas, replica = replica_slot()
        batch = ops.shape(mean)[0]
        noise = keras.random.normal(
            (batch * replicas, self.code_dim), dtype=mean.dtype, seed=self.noise_seed
        )
        return mean + std * noise[replica * batch : (replica + 1) * batch]

    def _training_forward(self, images, labels):
        mean, std = self.code_distribution(images, training=True)
        logits = self.code_logits(self._sample_code(mean, std))
        kl = global_batch_mean(gaussian_kl(ops.cast(mean, "float32"), ops.cast(std, "float32")))
        return logits, self.beta * kl, {"kl": kl}

    def _trained_variables(self):
        return [
            *self.features.trainable_variables,
            *self.code_mean.trainable_variables,
            *self.code_scale.trainable_variables,
            *self.code_logits.trainable_variables,
        ]

    def _deployable_classifier(self):
        """Body, mean Dense and logits Dense as one flat functional model (no sampling)."""
        logits = self.code_logits(self.code_mean(self.features.output))
        return keras.Model(self.features.inputs, logits, name=f"{self.classifier.name}_mid")

    def get_config(self):
        return {
            **super().get_config(),
            "beta": self.beta,
            "code_dim": self.code_dim,
            "seed": self.seed,
        }
