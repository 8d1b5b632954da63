"""PLG-MI's prior: top-n pseudo-labelled public images and a conditional GAN trained on them.

Yuan et al., "Pseudo Label-Guided Model Inversion Attack via Conditional Generative
Adversarial Network", AAAI 2023. The target classifier labels the public images; for each
class the `n` most confident ones become real data of that class, and a conditional GAN
(`trapmid_tf.models.cgan`) learns them while its generator is also pushed to make the target
predict the condition (margin loss on augmented fakes). The GAN specialises
`trapmid_tf.attacks.gan_prior.GANPrior` by its losses.

PLG-MI++ at full strength (an attacker who knows the trapdoor signatures) trains this prior
with `signatures=`: the generator loss then adds PLG-MI++'s penalty (the mean cosine of the
target feature of each augmented fake with its class's signature,
`trapmid_tf.attacks.trapdoor_penalty`), and the top-n selection ranks public images by the
target's confidence minus the same penalty, so neither the real data nor the generator
follows the trapdoor.
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from trapmid_tf.attacks.gan_prior import GANPrior
from trapmid_tf.attacks.trapdoor_penalty import (
    checked_signatures,
    class_signature_cosine,
    signature_cosine,
)
from trapmid_tf.contract import checked_labels, global_batch_mean
from trapmid_tf.layers.augment import augment_with_parameters
from trapmid_tf.metrics.features import batched_predict
from trapmid_tf.models.features import feature_extractor, features_and_logits
from trapmid_tf.validation import check_non_negative_float, check_positive_int

CROP_SCALE = (0.8, 1.0)  # area fraction of the random resized crop
JITTER_STRENGTH = 0.2  # brightness and contrast factors are drawn from U[1 - s, 1 + s]
ROTATION_DEGREES = 5.0
REAL_NOISE = 1.0 / 256.0  # real images get uniform noise in [0, REAL_NOISE)
_GREY_WEIGHTS = (0.299, 0.587, 0.114)  # kornia's rgb_to_grayscale
_NUM_AUGMENT_PARAMETERS = 10
_COSINE_CHUNK = 2**24  # Image-class-feature products per chunk of the penalised top-n ranking.


# === Pseudo-labelled public data ===


def _softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def most_confident(target, images, n, batch_size=350, signatures=None, signature_weight=0.0):
    """The indices of the `n` images the target gives the highest softmax probability, per class.

    With `signatures`, the score of image i for class c is its probability of c minus
    `signature_weight` times the cosine of its target feature with c's signature (PLG-MI++'s
    penalty, `trapmid_tf.attacks.trapdoor_penalty`). Ties are broken by the lower index; an
    image may rank for several classes.

    Args:
        target: Keras classifier mapping float32 NHWC images in [0, 1] to logits (run in
            inference mode, `batch_size` images at a time).
        images: Float32 array `(samples, height, width, channels)` in [0, 1].
        n: Images per class, at most `samples` (the callers check it).
        batch_size: Images per forward pass of the target.
        signatures: `(classes, feature_dims)` trapdoor signatures, or None for the plain
            ranking.
        signature_weight: Weight of the penalty, >= 0.

    Returns:
        int64 array `(classes, n)`: row c holds class c's image indices, best score first.
    """
    scores = _softmax(batched_predict(target, images, batch_size))
    if signatures is not None:
        check_non_negative_float("signature_weight", signature_weight)
        scores = scores - signature_weight * _signature_cosines(
            target, images, checked_signatures(signatures, target), batch_size
        )
    # A stable sort of the negated scores keeps equal ones in index order.
    return np.argsort(-scores, axis=0, kind="stable")[:n].T


def _signature_cosines(target, images, signatures, batch_size):
    """float64 `(samples, classes)`: cosine of each image's target feature with each signature."""
    features = batched_predict(feature_extractor(target), images, batch_size).astype(np.float32)
    rows = max(1, _COSINE_CHUNK // signatures.size)
    return np.concatenate([
        ops.convert_to_numpy(signature_cosine(features[start:start + rows, None], signatures[None]))
        for start in range(0, len(features), rows)
    ]).astype(np.float64)


def select_top_n(
    target, public_images, num_classes, n=30, batch_size=350, signatures=None,
    signature_weight=0.0,
):
    """Pseudo-labels public images with the target: the `n` most confident images per class.

    The target (in inference mode) gives a softmax over all public images; for each class
    the `n` images with the highest probability of that class are kept, ties broken by the
    lower index. An image may be kept for several classes. With `signatures`, the ranking
    subtracts PLG-MI++'s penalty (`most_confident`).

    Args:
        target: Keras classifier mapping float32 NHWC images in [0, 1] to logits.
        public_images: Array of images `(samples, height, width, channels)` in [0, 1], or a
            `tf.data.Dataset` of single images (read whole into memory).
        num_classes: Number of classes; must equal the target's number of logits.
        n: Images kept per class (30 in the reference); at most the number of images.
        batch_size: Images per forward pass of the target.
        signatures, signature_weight: As `most_confident` (None: the plain ranking).

    Returns:
        `(images, pseudo_labels)`: float32 array `(num_classes * n, height, width, channels)`
        and int32 array `(num_classes * n,)`, grouped by class in increasing order (class 0's
        `n` images first), most probable first within a class.

    Raises:
        ValueError: On a bad argument or a target with another number of logits.
    """
    check_positive_int("num_classes", num_classes)
    check_positive_int("n", n)
    outputs = target.output_shape[-1]
    if outputs != num_classes:
        raise ValueError(
            f"`num_classes`={num_classes} disagrees with the target, which outputs {outputs} "
            "logits."
        )
    if isinstance(public_images, tf.data.Dataset):
        public_images = np.stack(list(public_images.as_numpy_iterator()))
    public_images = np.asarray(public_images, dtype=np.float32)
    if n > len(public_images):
        raise ValueError(
            f"`n` must be at most the number of public images, {len(public_images)}; "
            f"received {n}."
        )
    indices = most_confident(
        target, public_images, n, batch_size, signatures, signature_weight
    ).reshape(-1)
    labels = np.repeat(np.arange(num_classes, dtype=np.int32), n)
    return public_images[indices], labels


# === Losses ===


def _true_and_best_other(logits, labels):
    """Per row, `logit_y` and `max_{j != y} logit_j` (float32)."""
    logits = ops.cast(logits, "float32")
    labels = ops.cast(labels, "int32")
    true_logits = ops.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    is_true = ops.one_hot(labels, ops.shape(logits)[-1]) > 0
    return true_logits, ops.max(ops.where(is_true, float("-inf"), logits), axis=1)


def margins(logits, labels):
    """PLG-MI's margin of each row: `max_{j != y} logit_j - logit_y`.

    Args:
        logits: `(batch, classes)` logits, classes >= 2.
        labels: `(batch,)` integer classes.

    Returns:
        A `(batch,)` float32 tensor (lower is better for the attacker).
    """
    true_logits, best_other = _true_and_best_other(logits, labels)
    return best_other - true_logits


def margin_loss(logits, labels):
    """PLG-MI's margin loss: `-mean logit_y + mean max_{j != y} logit_j`.

    Args:
        logits: `(batch, classes)` logits, classes >= 2.
        labels: `(batch,)` integer classes.

    Returns:
        The scalar loss (lower is better for the attacker).
    """
    true_logits, best_other = _true_and_best_other(logits, labels)
    return ops.mean(best_other) - ops.mean(true_logits)


def hinge_discriminator_loss(real_scores, fake_scores):
    """Hinge loss of a discriminator: `mean relu(1 - D(real)) + mean relu(1 + D(fake))`."""
    real_scores, fake_scores = ops.cast(real_scores, "float32"), ops.cast(fake_scores, "float32")
    return ops.mean(ops.relu(1.0 - real_scores)) + ops.mean(ops.relu(1.0 + fake_scores))


# === Augmentation ===


def _per_image(values):
    return ops.reshape(values, (-1, 1, 1, 1))


def _greyscale(images):
    channels = images.shape[-1]
    if channels == 1:
        return images
    if channels == 3:
        return ops.sum(images * ops.convert_to_tensor(_GREY_WEIGHTS, images.dtype), axis=-1)[
            ..., None
        ]
    raise ValueError(
        f"`images` must have 1 or 3 channels for the contrast jitter; received {channels}."
    )


def _adjust_brightness(images, factor):
    return ops.clip(images * _per_image(factor), 0.0, 1.0)


def _adjust_contrast(images, factor):
    grey_mean = ops.mean(_greyscale(images), axis=(1, 2, 3), keepdims=True)
    return ops.clip((images - grey_mean) * _per_image(factor) + grey_mean, 0.0, 1.0)


def color_jitter(images, brightness_factor, contrast_factor, brightness_first):
    """Brightness and contrast jitter with given per-image factors (kornia >= 0.6.5).

    Brightness multiplies by its factor, `x * f`; contrast blends each image with the mean of
    its greyscale version `m` (the image itself for one channel, 0.299 R + 0.587 G + 0.114 B
    for three), `(x - m) * f + m`. Each adjustment clips to [0, 1]; their order is per image.

    Args:
        images: Float tensor `(batch, height, width, channels)` in [0, 1], 1 or 3 channels.
        brightness_factor: `(batch,)` brightness factors.
        contrast_factor: `(batch,)` contrast factors.
        brightness_first: `(batch,)` bool, true to adjust brightness before contrast.

    Returns:
        The jittered images, differentiable with respect to `images`.
    """
    images = ops.convert_to_tensor(images)
    brightness_then_contrast = _adjust_contrast(
        _adjust_brightness(images, brightness_factor), contrast_factor
    )
    contrast_then_brightness = _adjust_brightness(
        _adjust_contrast(images, contrast_factor), brightness_factor
    )
    return ops.where(
        _per_image(brightness_first), brightness_then_contrast, contrast_then_brightness
    )


def plgmi_augment(images, seed_generator, jitter_probability=0.5):
    """PLG-MI's differentiable augmentation of generated images before the target sees them.

    Per image, with independent random parameters, as the reference's kornia pipeline:
    1. random resized crop (always): a square of `U[0.8, 1]` of the image area at a uniform
       position, resized back bilinearly;
    2. colour jitter with probability `jitter_probability`: brightness and contrast factors
       from U[0.8, 1.2] in random order (see `color_jitter`);
    3. horizontal flip with probability 0.5;
    4. rotation by U[-5, 5] degrees about the centre with probability 0.5 (bilinear, zero
       fill).
    The crop and the flip-plus-rotation are resampled separately so the jitter sits between
    them as in the reference. Use `jitter_probability=0.5` to train the prior (stage 1) and
    1.0 for the reconstruction (stage 3).

    Args:
        images: Float tensor `(batch, height, width, channels)` in [0, 1], 1 or 3 channels.
        seed_generator: The `keras.random.SeedGenerator` to draw the parameters from.
        jitter_probability: Probability, in [0, 1], that an image gets the colour jitter.

    Returns:
        The augmented images, same shape; gradients flow to `images`.

    Raises:
        ValueError: If `jitter_probability` is outside [0, 1] or the channels are not 1 or 3.
    """
    if not 0.0 <= jitter_probability <= 1.0:
        raise ValueError(
            f"`jitter_probability` must be in [0, 1]; received {jitter_probability!r}."
        )
    images = ops.convert_to_tensor(images)
    uniform = _augment_parameters(ops.shape(images)[0], seed_generator)
    return _augment(images, uniform, jitter_probability)


def _augment_parameters(batch_size, seed_generator):
    """The U[0, 1) draws that parameterise `plgmi_augment`, `(batch_size, 10)`."""
    return keras.random.uniform((batch_size, _NUM_AUGMENT_PARAMETERS), seed=seed_generator)


def _augment(images, uniform, jitter_probability):
    """`plgmi_augment` with its parameters given: `uniform` from `_augment_parameters`."""
    batch = ops.shape(images)[0]
    low, high = CROP_SCALE
    crop_side = ops.sqrt(low + (high - low) * uniform[:, 0])
    no_move, no_turn = ops.zeros((batch,)), ops.zeros((batch,))
    cropped = augment_with_parameters(images, crop_side, uniform[:, 1:3], no_move, no_turn)
    brightness, contrast = (
        1.0 - JITTER_STRENGTH + 2.0 * JITTER_STRENGTH * uniform[:, i] for i in (3, 4)
    )
    jittered = color_jitter(cropped, brightness, contrast, uniform[:, 5] < 0.5)
    apply_jitter = _per_image(uniform[:, 6] < jitter_probability)
    jittered = ops.where(apply_jitter, jittered, cropped)
    flip = ops.cast(uniform[:, 7] < 0.5, "float32")
    max_angle = math.radians(ROTATION_DEGREES)
    angle = ops.where(uniform[:, 8] < 0.5, max_angle * (2.0 * uniform[:, 9] - 1.0), 0.0)
    return augment_with_parameters(
        jittered, ops.ones((batch,)), ops.zeros((batch, 2)), flip, angle
    )


# === The conditional GAN ===


@keras.saving.register_keras_serializable(package="trapmid_tf")
class PLGMIPrior(GANPrior):
    """PLG-MI's pseudo-label-guided conditional GAN, trained with `fit`.

    Train it on batches `(images, pseudo_labels)` of the `select_top_n` set. Each
    `train_step` is one discriminator step on one real batch; every `n_dis`-th step (the
    first, then every `n_dis` discriminator steps) is preceded by one generator step, which
    is the reference iteration (one G step, then `n_dis` D steps) spread over `n_dis`
    batches:
    - generator step, with `z ~ N(0, I)` and `y ~ U{0..C-1}`:
      `L_G = -mean D(G(z, y), y) + inversion_weight * margin(T(aug(G(z, y))), y)`, where
      `aug` is `plgmi_augment` (jitter probability 0.5) and `T` the frozen target, called in
      inference mode; only the generator is updated. With `signatures`, PLG-MI++'s penalty
      `signature_weight * mean cos(f_T(aug(G(z, y))), s_y)` is added (`f_T` the target's
      penultimate feature of the same augmented fakes, `s_y` the signature of y);
    - discriminator step, with fresh `z, y` and the real batch plus uniform noise in
      [0, 1/256): `L_D = mean relu(1 - D(x_r, y_r)) + mean relu(1 + D(G(z, y), y))`.
    G and D run in training mode throughout (batch-statistics BN), as the reference. Real
    and fake images go through D as one batch (the reference makes two calls; D has no batch
    statistics, so only the number of spectral-norm power iterations differs). Freezing the
    generator (`generator.trainable = False`) skips the generator steps.

    Calling the model generates: `prior([z, y])` is `generator([z, y])`.

    Under a `tf.distribute` strategy a step equals the one-device step on the global batch
    (the same draws, means over the global batch), except for the generator's batch
    statistics, which are per replica.

    Args:
        generator: Conditional generator `[z (batch, z_dim), y (batch,)] -> images in [0, 1]`,
            e.g. `trapmid_tf.models.cgan.resnet_generator`.
        discriminator: `[images, y] -> (batch, 1)` scores, e.g.
            `trapmid_tf.models.cgan.sn_projection_discriminator`.
        target: The attacked classifier (images -> logits); never updated.
        n_dis: Discriminator steps per generator step.
        inversion_weight: Weight of the margin loss in the generator loss (0.2 in the
            reference).
        seed: Integer seed of the latents, labels, noise and augmentation, or None.
        signatures: `(classes, feature_dims)` trapdoor signatures of the target (PLG-MI++ at
            full strength: the defender's, or `estimate_signatures`'), or None for PLG-MI.
        signature_weight: Weight of the signature penalty in the generator loss, >= 0 (used
            only with `signatures`).
        **kwargs: Standard `keras.Model` arguments.

    Raises:
        ValueError: If the three networks do not fit together or an argument is bad.

    Example:
        >>> images, labels = select_top_n(target, public_images, num_classes=5)
        >>> prior = PLGMIPrior(resnet_generator((32, 32, 1), 5),
        ...                    sn_projection_discriminator((32, 32, 1), 5), target, seed=0)
        >>> prior.compile()
        >>> prior.fit(images, labels, batch_size=64, epochs=100)  # doctest: +SKIP
    """

    _OPPONENT = "discriminator"
    _INTERVAL = "n_dis"
    _NETWORKS = ("generator", "discriminator", "target")
    _METRICS = ("discriminator_loss", "generator_loss", "margin_loss")
    _GENERATOR_LEADS = True
    _ADAM_BETAS = (0.0, 0.9)

    def __init__(
        self, generator, discriminator, target, n_dis=5, inversion_weight=0.2, seed=None,
        signatures=None, signature_weight=0.0, **kwargs
    ):
        num_classes = _check_networks(generator, discriminator, target)
        check_non_negative_float("signature_weight", signature_weight)
        signatures = None if signatures is None else checked_signatures(signatures, target)
        super().__init__(generator, discriminator, n_dis, seed, **kwargs)
        self.num_classes = num_classes
        self.target = target
        self.inversion_weight = float(inversion_weight)
        self.signatures = signatures
        self.signature_weight = float(signature_weight)
        self._target_view = None if signatures is None else features_and_logits(target)

    def compile(self, generator_optimizer=None, discriminator_optimizer=None, **kwargs):
        """Configures training.

        Args:
            generator_optimizer: Generator optimiser. Default: PyTorch's Adam (`TorchAdam`),
                learning rate 2e-4, betas (0.0, 0.9), epsilon 1e-8 (the reference).
            discriminator_optimizer: Discriminator optimiser, a different object. Default: the
                same Adam setting. It is also `self.optimizer`; its `iterations` count the
                training steps.
            **kwargs: Other `keras.Model.compile` arguments (`run_eagerly`,
                `steps_per_execution`, `jit_compile`, which defaults to False: the
                augmentation has no XLA kernel). Not `loss` or `metrics`: they are fixed.

        Raises:
            ValueError: On `loss`/`metrics` arguments or one optimizer object passed twice.
        """
        super().compile(generator_optimizer, discriminator_optimizer, **kwargs)

    @property
    def discriminator_optimizer(self):
        """The discriminator's optimiser (`self.optimizer`)."""
        return self.optimizer

    def sample_conditions(self, batch_size):
        """Draws latents `z ~ N(0, I)` and labels `y ~ U{0..C-1}` from the model's seed.

        Args:
            batch_size: Number of pairs.

        Returns:
            `(z, y)`: float32 `(batch_size, z_dim)` and int32 `(batch_size,)`.
        """
        latents = keras.random.normal((batch_size, self.z_dim), seed=self.seed_generator)
        labels = keras.random.randint(
            (batch_size,), 0, self.num_classes, dtype="int32", seed=self.seed_generator
        )
        return latents, labels

    def _generator_losses(self, images, _):
        batch = ops.shape(images)[0]
        latents, labels = self._replica_rows(self.sample_conditions, batch)
        fakes = self.generator([latents, labels], training=True)
        scores = self.discriminator([fakes, labels], training=True)
        adversarial = -global_batch_mean(ops.cast(scores, "float32"))
        uniform = self._replica_rows(
            lambda rows: _augment_parameters(rows, self.seed_generator), batch
        )
        augmented = _augment(fakes, uniform, jitter_probability=0.5)
        if self.signatures is None:
            logits = self.target(augmented, training=False)
            penalty = 0.0
        else:
            features, logits = self._target_view(augmented, training=False)
            signatures = ops.convert_to_tensor(self.signatures)
            penalty = self.signature_weight * global_batch_mean(
                class_signature_cosine(features, labels, signatures)
            )
        margin = global_batch_mean(margin_loss(logits, labels))
        return {
            "generator_loss": adversarial + self.inversion_weight * margin + penalty,
            "margin_loss": margin,
        }

    def _opponent_losses(self, images, labels):
        batch = ops.shape(images)[0]
        noise = self._replica_rows(
            lambda rows: keras.random.uniform(
                (rows, *self.image_shape), maxval=REAL_NOISE, seed=self.seed_generator
            ),
            batch,
        )
        latents, fake_labels = self._replica_rows(self.sample_conditions, batch)
        fakes = ops.stop_gradient(self.generator([latents, fake_labels], training=True))
        scores = self.discriminator(
            [ops.concatenate([images + noise, fakes]), ops.concatenate([labels, fake_labels])],
            training=True,
        )
        return {
            "discriminator_loss": global_batch_mean(
                hinge_discriminator_loss(scores[:batch], scores[batch:])
            )
        }

    def _unpack(self, data):
        """Checks a batch `(images, pseudo_labels)`; returns float32 images, int32 labels."""
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            received = (
                f"{len(data)} elements" if isinstance(data, (tuple, list)) else type(data).__name__
            )
            raise ValueError(
                f"PLGMIPrior expects batches of (images, pseudo_labels); received {received}."
            )
        labels, checks = checked_labels(data[1], self.num_classes, "pseudo_labels")
        with tf.control_dependencies(checks):
            return self._checked_images(data[0]), tf.identity(labels)

    def get_config(self):
        return {
            **super().get_config(),
            "inversion_weight": self.inversion_weight,
            "signatures": None if self.signatures is None else self.signatures.tolist(),
            "signature_weight": self.signature_weight,
        }


def _check_networks(generator, discriminator, target):
    """Checks that the three networks fit together.

    Returns:
        The number of classes: the target's logits.
    """
    for name, model, inputs in (
        ("generator", generator, "[z, y]"),
        ("discriminator", discriminator, "[images, y]"),
    ):
        if not isinstance(model, keras.Model) or len(model.inputs) != 2:
            raise ValueError(
                f"`{name}` must be a keras.Model with inputs {inputs}; received {model!r}."
            )
    if not isinstance(target, keras.Model) or len(target.inputs) != 1:
        raise ValueError(f"`target` must be a single-input keras.Model; received {target!r}.")
    image_shape = tuple(generator.output_shape[1:])
    num_classes = int(target.output_shape[-1])
    shapes = {
        "generator output": image_shape,
        "discriminator image input": tuple(discriminator.input_shape[0][1:]),
        "target input": tuple(target.input_shape[1:]),
    }
    if len(set(shapes.values())) != 1:
        raise ValueError(f"The networks disagree on the image shape: {shapes}.")
    generator_classes = getattr(generator, "num_classes", num_classes)
    if generator_classes != num_classes:
        raise ValueError(
            f"The generator has {generator_classes} classes but the target outputs "
            f"{num_classes} logits."
        )
    if num_classes < 2:
        raise ValueError(
            f"The target must output at least 2 logits (margin loss); it outputs {num_classes}."
        )
    return num_classes
