"""LOMMA: logit loss and model augmentation for GMI and KED-MI (Nguyen et al., CVPR 2023).

LOMMA keeps the GMI or KED-MI prior and loop and replaces the identity cross-entropy by
`(1/M) sum_m (-mean_i logit_m[i, id_i]) + reg_weight * mean((f_T(x) - p_reg)^2)`: the raw
logit of the identity, averaged over the target and M - 1 surrogate ("augmented") models
distilled from it, plus a pull of the target's penultimate feature `f_T` towards `p_reg`, the
target's mean feature on public images.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from trapmid_tf.attacks.gmi import GMIAttack
from trapmid_tf.attacks.kedmi import KEDMIAttack
from trapmid_tf.contract import global_batch_mean, global_value
from trapmid_tf.metrics.features import batched_predict
from trapmid_tf.models.features import feature_extractor, features_and_logits
from trapmid_tf.validation import (
    check_model,
    check_non_negative_float,
    check_positive_float,
    check_positive_int,
)

_serialize = keras.saving.serialize_keras_object
_deserialize = keras.saving.deserialize_keras_object

BASES = ("gmi", "kedmi")


def logit_loss(logits_per_model, labels):
    """Per-image logit loss: minus the label's raw logit, averaged over the models.

    Args:
        logits_per_model: Sequence of `(batch, classes)` logits, one per model.
        labels: `(batch,)` integer labels.

    Returns:
        `(batch,)` losses; their batch mean is the reference's `(1/M) sum_m NLL(logits_m, y)`.
    """
    labels = ops.cast(labels, "int32")[:, None]
    label_logits = [
        ops.take_along_axis(ops.cast(logits, "float32"), labels, axis=-1)
        for logits in logits_per_model
    ]
    return -ops.mean(ops.concatenate(label_logits, axis=-1), axis=-1)


def feature_regularizer(features, p_reg):
    """Per-image mean squared distance of `(batch, dim)` features to the `(dim,)` `p_reg`."""
    return ops.mean(ops.square(ops.cast(features, "float32") - p_reg), axis=-1)


def compute_p_reg(target, public_images, batch_size=50):
    """Returns LOMMA's `p_reg`: the target's mean penultimate feature over public images.

    Recompute it for every target (a defended target has other features). The reference
    averages about 5,050 public images; pass e.g. `public.take(5050)`.

    Args:
        target: A classifier following the `trapmid_tf.models.features` convention.
        public_images: Float32 NHWC images in [0, 1], as an array or a `tf.data.Dataset`
            of single images or of image batches.
        batch_size: Images per forward pass (unbatched datasets are batched by this).

    Returns:
        A float32 numpy vector of the feature size.

    Raises:
        ValueError: If `target` does not expose its feature, `public_images` is empty or not
            images, or `batch_size` is not a positive integer.
    """
    check_positive_int("batch_size", batch_size)
    extractor = feature_extractor(target)
    if not isinstance(public_images, tf.data.Dataset):
        features = batched_predict(extractor, public_images, batch_size)
        return features.mean(axis=0, dtype=np.float64).astype(np.float32)
    spec = public_images.element_spec
    if not isinstance(spec, tf.TensorSpec) or spec.shape.rank not in (3, 4):
        raise ValueError(
            "`public_images` must yield images (height, width, channels) or image batches; "
            f"received elements {spec}."
        )
    batches = public_images.batch(batch_size) if spec.shape.rank == 3 else public_images
    total, count = 0.0, 0
    for batch in batches:
        features = ops.convert_to_numpy(extractor(batch, training=False)).astype(np.float64)
        total, count = total + features.sum(axis=0), count + features.shape[0]
    if count == 0:
        raise ValueError("`public_images` must hold at least one image; the dataset is empty.")
    return (total / count).astype(np.float32)


class LOMMAAttack:
    """GMI or KED-MI with LOMMA's logit loss, feature regulariser and surrogate models.

    The loop, prior and update are those of the base attack (`GMIAttack`, or `KEDMIAttack`
    with z clipped to [-1, 1] before the generator, as LOMMA's KED-MI variant); the loss is
    `prior + identity_weight * (logit_loss + reg_weight * feature_regularizer)`, with the
    logit loss over `[target, *surrogates]` and the regulariser on the target alone. The
    reference's "L_logit" variant has no surrogates; its "ours" adds three distilled ones (see
    `SurrogateDistiller`).

    Args:
        base: "gmi" or "kedmi".
        generator: The base attack's generator.
        discriminator: The GMI critic or the KED-MI discriminator.
        surrogates: Classifiers distilled from the target, with the target's classes.
        p_reg: The target's mean public feature (`compute_p_reg`), or None for no
            regulariser.
        reg_weight: Weight of the regulariser (reference 1).
        iterations: Optimisation steps (reference 1500; the FFHQ KED-MI config uses 2400).
        learning_rate: The base attack's learning rate (reference 0.02).
        identity_weight: Weight of the identity loss (reference 100).
        **base_kwargs: Other arguments of the base attack (`momentum`, `chunk_size`,
            `jit_compile`; for KED-MI `samples_per_distribution`: the reference learns one
            distribution per identity and draws 5 images from it).

    Raises:
        ValueError: On an unknown `base` or a bad argument.
    """

    def __init__(
        self,
        base,
        generator,
        discriminator,
        surrogates=(),
        p_reg=None,
        reg_weight=1.0,
        iterations=1500,
        learning_rate=0.02,
        identity_weight=100.0,
        **base_kwargs,
    ):
        if base not in BASES:
            raise ValueError(f"`base` must be one of {BASES}; received {base!r}.")
        surrogates = list(surrogates)
        for surrogate in surrogates:
            if not isinstance(surrogate, keras.Model):
                raise ValueError(
                    "`surrogates` must hold keras.Model classifiers; received "
                    f"{type(surrogate).__name__}."
                )
        check_non_negative_float("reg_weight", reg_weight)
        self.surrogates = surrogates
        self.p_reg = None if p_reg is None else np.asarray(p_reg, dtype=np.float32)
        self.reg_weight = float(reg_weight)
        common = dict(
            iterations=iterations,
            learning_rate=learning_rate,
            identity_weight=identity_weight,
            identity_loss=self.identity_loss,
            **base_kwargs,
        )
        if base == "gmi":
            self.attack = GMIAttack(generator, discriminator, **common)
        else:
            self.attack = KEDMIAttack(generator, discriminator, clip_latents=True, **common)
        self.base = base

    @property
    def iterations(self):
        """The optimisation steps of the inversion."""
        return self.attack.iterations

    def identity_loss(self, target):
        """Returns LOMMA's per-image identity loss for `target`.

        Args:
            target: The attacked classifier.

        Returns:
            Callable `(images, labels) -> (batch,)` losses.

        Raises:
            ValueError: If a surrogate's classes differ from the target's, or `p_reg` does
                not match the target's feature size.
        """
        num_classes = target.output_shape[-1]
        for surrogate in self.surrogates:
            if surrogate.output_shape[-1] != num_classes:
                raise ValueError(
                    f"Every surrogate must output the target's {num_classes} logits; "
                    f"{surrogate.name!r} outputs {surrogate.output_shape[-1]}."
                )
        if self.p_reg is None:
            return self._logit_only_loss(target)
        view = features_and_logits(target)
        feature_shape = tuple(view.output_shape[0][1:])
        if self.p_reg.shape != feature_shape:
            raise ValueError(
                f"`p_reg` must match the target's feature shape {feature_shape}; received "
                f"shape {self.p_reg.shape}. Recompute it with compute_p_reg(target, ...)."
            )

        def loss(images, labels):
            features, logits = view(images, training=False)
            logit_term = logit_loss([logits, *self._surrogate_logits(images)], labels)
            return logit_term + self.reg_weight * feature_regularizer(features, self.p_reg)

        return loss

    def _logit_only_loss(self, target):
        def loss(images, labels):
            logits = target(images, training=False)
            return logit_loss([logits, *self._surrogate_logits(images)], labels)

        return loss

    def _surrogate_logits(self, images):
        return [surrogate(images, training=False) for surrogate in self.surrogates]

    def invert(self, target, classes, per_class=5, seed=0, verbose=1):
        """Runs the base attack's `invert` with LOMMA's identity loss.

        Args:
            target: A Keras classifier mapping float32 NHWC images in [0, 1] to logits,
                with the surrogates' classes.
            classes: Iterable of class ids to invert.
            per_class: Restarts (images) per class, >= 1.
            seed: Integer seed; the same seed gives the same result.
            verbose: 0 silent, 1 progress bar, 2 one line per chunk.

        Returns:
            The base attack's `AttackResult`, images grouped by class in the order of
            `classes`.

        Raises:
            ValueError: On a bad argument, or if `target` does not take the prior's images.
        """
        return self.attack.invert(target, classes, per_class, seed, verbose)


@keras.saving.register_keras_serializable(package="trapmid_tf")
class SurrogateDistiller(keras.Model):
    """Distils a target (teacher) into a surrogate (student) on public images, through `fit`.

    The loss is `tau^2 * KL(softmax(T(x) / tau) || softmax(S(x) / tau))`, averaged over the
    batch; the teacher runs in inference mode, the student in training mode. (The reference
    divides by tau^2 instead; the two agree at its tau = 1.) Batches are images, or tuples
    whose first element is the images (labels are ignored). Calling the model runs the student.
    Metrics: `loss` and `agreement` (student top-1 equals teacher top-1).

    Args:
        student: Classifier to train, with the teacher's input shape and classes.
        teacher: The target classifier; never updated.
        temperature: Distillation temperature tau (reference 1).
        **kwargs: Standard `keras.Model` arguments.

    Example:
        >>> distiller = SurrogateDistiller(small_cnn((32, 32, 1), 5), target)
        >>> distiller.compile()
        >>> distiller.fit(public.batch(64), epochs=20)  # doctest: +SKIP
        >>> surrogate = distiller.student
    """

    def __init__(self, student, teacher, temperature=1.0, **kwargs):
        super().__init__(**kwargs)
        for name, network in (("student", student), ("teacher", teacher)):
            check_model(name, network)
        if student.output_shape[-1] != teacher.output_shape[-1]:
            raise ValueError(
                f"`student` must output the teacher's {teacher.output_shape[-1]} logits; it "
                f"outputs {student.output_shape[-1]}."
            )
        check_positive_float("temperature", temperature)
        self.student = student
        self.teacher = teacher
        self.temperature = float(temperature)
        self._loss_tracker = keras.metrics.Mean(name="loss")
        self._agreement = keras.metrics.SparseCategoricalAccuracy(name="agreement")
        self.built = True

    def compile(self, optimizer=None, **kwargs):
        """Configures training.

        Args:
            optimizer: Student optimiser. Default: SGD, learning rate 0.02, momentum 0.9,
                weight decay 1e-4 (the reference's CelebA setting; it uses 0.01 for FFHQ).
            **kwargs: Other `keras.Model.compile` arguments (`jit_compile`, ...); no losses
                or metrics, which are fixed.
        """
        for name in ("loss", "metrics", "loss_weights", "weighted_metrics"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"SurrogateDistiller.compile does not take `{name}`; its loss and metrics "
                    "are fixed (distillation KL; loss, agreement)."
                )
        optimizer = keras.optimizers.get(
            optimizer
            or keras.optimizers.SGD(learning_rate=0.02, momentum=0.9, weight_decay=1e-4)
        )
        super().compile(optimizer=optimizer, **kwargs)

    def get_compile_config(self):
        return {"optimizer": _serialize(self.optimizer), "jit_compile": self.jit_compile}

    def compile_from_config(self, config):
        config = dict(config)
        config["optimizer"] = _deserialize(config["optimizer"])
        self.compile(**config)
        with self.distribute_strategy.scope():
            self.optimizer.build(self.student.trainable_variables)

    def call(self, images, training=False):
        """Runs the student.

        Args:
            images: Float32 NHWC images in [0, 1].
            training: Whether the student runs in training mode.

        Returns:
            The student's logits, `(batch, num_classes)`.
        """
        return self.student(images, training=training)

    @property
    def metrics(self):
        return [self._loss_tracker, self._agreement]

    def distillation_loss(self, teacher_logits, student_logits):
        """Batch mean of `tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))`.

        Args:
            teacher_logits: The target's logits, `(batch, num_classes)`.
            student_logits: The surrogate's logits, same shape.

        Returns:
            A scalar tensor.
        """
        teacher_logits, student_logits = (
            ops.cast(logits, "float32") for logits in (teacher_logits, student_logits)
        )
        teacher_log_probs = ops.log_softmax(teacher_logits / self.temperature, axis=-1)
        student_log_probs = ops.log_softmax(student_logits / self.temperature, axis=-1)
        divergence = ops.sum(
            ops.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1
        )
        return self.temperature**2 * ops.mean(divergence)

    def train_step(self, data):
        """One student update on `distillation_loss` (plus the student's own losses).

        Args:
            data: A batch of images, or a tuple whose first element is the images.

        Returns:
            The metrics `{"loss", "agreement"}`, averaged over the epoch so far.
        """
        images = self._images(data)
        teacher_logits = self.teacher(images, training=False)
        variables = self.student.trainable_variables
        with tf.GradientTape() as tape:
            student_logits = self.student(images, training=True)
            loss = global_batch_mean(self.distillation_loss(teacher_logits, student_logits))
            total = loss
            if self.student.losses:
                total += global_batch_mean(ops.sum(self.student.losses))
            scaled = self.optimizer.scale_loss(total)
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        return self._update_metrics(global_value(loss), teacher_logits, student_logits)

    def test_step(self, data):
        """Measures the distillation loss and the top-1 agreement, both in inference mode.

        Args:
            data: A batch of images, or a tuple whose first element is the images.

        Returns:
            The metrics `{"loss", "agreement"}`, averaged over the evaluation so far.
        """
        images = self._images(data)
        teacher_logits = self.teacher(images, training=False)
        student_logits = self.student(images, training=False)
        loss = self.distillation_loss(teacher_logits, student_logits)
        return self._update_metrics(loss, teacher_logits, student_logits)

    def _update_metrics(self, loss, teacher_logits, student_logits):
        self._loss_tracker.update_state(loss)
        self._agreement.update_state(ops.argmax(teacher_logits, axis=-1), student_logits)
        return {metric.name: metric.result() for metric in self.metrics}

    @staticmethod
    def _images(data):
        images, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return images

    def get_config(self):
        config = super().get_config()
        config.update(
            student=_serialize(self.student),
            teacher=_serialize(self.teacher),
            temperature=self.temperature,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = _deserialize(config["student"])
        config["teacher"] = _deserialize(config["teacher"])
        return cls(**config)
