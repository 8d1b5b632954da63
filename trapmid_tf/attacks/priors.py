"""Image priors of the GMI and KED-MI attacks: GANs trained on public images with `fit`.

    prior = GMIPrior(dcgan_generator((32, 32, 1)), wgan_critic((32, 32, 1)), seed=0)
    prior.compile()                                   # the reference Adam(2e-4, 0.5, 0.999)
    prior.fit(public.batch(64), epochs=120)
    images = prior.generator(z, training=False)       # what the inversion searches over

Both priors follow the reference (spec §3.1): every batch makes one step of the generator's
opponent (GMI's WGAN-GP critic, KED-MI's semi-supervised discriminator), and the generator
takes one step whenever the opponent's step count is a multiple of `n_critic`. The step count
is the opponent optimizer's `iterations`, so saving and reloading resumes the schedule. Both
networks stay in training mode, as in the reference.

Both specialise `trapmid_tf.attacks.gan_prior.GANPrior` by their losses. Under a
`tf.distribute` strategy a step equals the one-device step on the global batch (same latents,
losses over the global batch, KED-MI's feature means all-reduced), except for batch statistics
inside the networks (the generator's batch norm, KED-MI's minibatch discrimination), which are
per replica.
"""

import keras
import tensorflow as tf
from keras import ops

from trapmid_tf.attacks.gan_prior import GANPrior
from trapmid_tf.contract import global_batch_mean
from trapmid_tf.models.features import features_and_logits
from trapmid_tf.models.gan import FEATURES_LAYER_NAME
from trapmid_tf.validation import check_model, check_positive_int

KEDMI_BATCH_KEYS = ("images", "unlabeled", "matching")
_SQUARED_NORM_FLOOR = 1e-12  # keeps the gradient of the norm finite where the gradient is 0


# === Losses ===


def gradient_penalty(critic, real, fake, mix):
    """WGAN-GP penalty terms `(‖∇D(x̂)‖₂ − 1)²` at `x̂ = real + mix·(fake − real)`.

    The input gradient of the summed scores is taken, which is each sample's own gradient
    when the critic scores every image independently (no batch norm or other batch mixing).

    Args:
        critic: Maps images (N, H, W, C) to scores (N, 1); called with `training=True`.
        real: Real images (N, H, W, C).
        fake: Generated images, same shape.
        mix: Interpolation weights broadcastable to the images, e.g. (N, 1, 1, 1) in [0, 1].

    Returns:
        The per-sample penalty terms, shape (N,), differentiable w.r.t. the critic's weights.
    """
    real, fake, mix = (ops.convert_to_tensor(value, "float32") for value in (real, fake, mix))
    interpolated = real + mix * (fake - real)
    with tf.GradientTape() as tape:
        tape.watch(interpolated)
        scores = ops.cast(critic(interpolated, training=True), "float32")
    gradients = tape.gradient(scores, interpolated)
    squared_norms = ops.sum(ops.square(gradients), axis=(1, 2, 3))
    return ops.square(ops.sqrt(squared_norms + _SQUARED_NORM_FLOOR) - 1.0)


def _soft_cross_entropy(logits, target_logits):
    """Batch mean of `−Σ softmax(target_logits)·log_softmax(logits)` (the reference softXEnt)."""
    logits, target_logits = ops.cast(logits, "float32"), ops.cast(target_logits, "float32")
    probabilities = ops.softmax(target_logits, axis=-1)
    return -ops.mean(ops.sum(probabilities * ops.log_softmax(logits, axis=-1), axis=-1))


def _unlabeled_loss(real_logits, fake_logits):
    """Semi-supervised GAN loss with the fake class's logit fixed at 0.

    `p(real | x) = sigmoid(lse)` with `lse = logsumexp(logits)`, so `−log p(real) =
    softplus(lse) − lse` and `−log p(fake) = softplus(lse)`; the reference halves their sum.
    """
    real_lse = ops.logsumexp(ops.cast(real_logits, "float32"), axis=-1)
    fake_lse = ops.logsumexp(ops.cast(fake_logits, "float32"), axis=-1)
    return 0.5 * (
        ops.mean(ops.softplus(real_lse)) - ops.mean(real_lse) + ops.mean(ops.softplus(fake_lse))
    )


def _global_feature_mean(features):
    """Mean of `features` over the global batch: this replica's batch mean, all-reduced.

    The all-reduce passes gradients back to every replica's own features.
    """
    features = ops.cast(features, "float32")
    return tf.distribute.get_replica_context().all_reduce("MEAN", ops.mean(features, axis=0))


def _feature_matching_loss(real_features, fake_features):
    """Mean absolute difference of the global-batch-mean features (the reference's L1 form)."""
    difference = _global_feature_mean(fake_features) - _global_feature_mean(real_features)
    return ops.mean(ops.abs(difference))


def _entropy_sum(logits):
    """Entropy of `softmax(logits)` summed over the batch (not averaged), as the reference.

    The global batch's sum is the sum of the replicas' sums: each replica's share of it is
    its own sum.
    """
    logits = ops.cast(logits, "float32")
    return -ops.sum(ops.softmax(logits, axis=-1) * ops.log_softmax(logits, axis=-1))


# === Helpers ===


def _check_image_model(name, model, image_shape, outputs):
    """Checks that `model` takes `image_shape` images and outputs `outputs` values per image."""
    check_model(name, model)
    if tuple(model.input_shape[1:]) != image_shape:
        raise ValueError(
            f"`{name}` must take images of the generator's shape {image_shape}; its input shape "
            f"is {model.input_shape}."
        )
    if outputs is not None and tuple(model.output_shape[1:]) != (outputs,):
        raise ValueError(
            f"`{name}` must output {outputs} value(s) per image; its output shape is "
            f"{model.output_shape}."
        )


def kedmi_batches(public, batch_size, seed=None, shuffle_buffer=10_000):
    """Batches three independently shuffled copies of `public`, as the reference feeds KED-MI.

    The reference draws the labelled batch, the unlabelled batch of the discriminator step and
    the batch whose features the generator matches from three separate shuffles of the public
    data; `KEDMIPrior` reads them from the keys of `KEDMI_BATCH_KEYS`.

    Args:
        public: Unbatched dataset of images, or of `(image, ...)` tuples.
        batch_size: Images per batch, >= 1.
        seed: Shuffle seed (the copies use `seed`, `seed + 1`, `seed + 2`), or None.
        shuffle_buffer: Shuffle buffer size, >= 1.

    Returns:
        A dataset of dicts `{"images": x, "unlabeled": x_u, "matching": x_u2}`; one pass of it
        is one pass over `public`.
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("shuffle_buffer", shuffle_buffer)
    if isinstance(public.element_spec, tuple):
        public = public.map(lambda image, *_: image)
    copies = [
        public.shuffle(shuffle_buffer, seed=None if seed is None else seed + offset)
        .batch(batch_size)
        for offset in range(len(KEDMI_BATCH_KEYS))
    ]
    return tf.data.Dataset.zip(dict(zip(KEDMI_BATCH_KEYS, copies)))


# === Shared machinery ===


class _LatentPrior(GANPrior):
    """A GAN prior whose generator maps latent vectors to images: the GMI and KED-MI priors.

    Both players default to the reference's PyTorch Adam, `TorchAdam(2e-4, betas (0.5, 0.999),
    epsilon 1e-8)`; the generator steps after each `n_critic`-th opponent step.
    """

    _INTERVAL = "n_critic"

    def __init__(self, generator, opponent, n_critic, seed, **kwargs):
        check_model("generator", generator)
        if len(generator.input_shape) != 2 or generator.input_shape[1] is None:
            raise ValueError(
                "`generator` must map latent vectors (batch, z_dim) to images; its input shape "
                f"is {generator.input_shape}."
            )
        if len(generator.output_shape) != 4 or None in generator.output_shape[1:]:
            raise ValueError(
                "`generator` must output images of a fixed (height, width, channels); its "
                f"output shape is {generator.output_shape}."
            )
        super().__init__(generator, opponent, n_critic, seed, **kwargs)

    def _seed(self):
        """A fresh stateless seed from the model's seed generator, the same on every replica.

        (Folding in 0 keeps the streams that replica 0 drew before the draws were shared.)
        """
        return tf.random.experimental.stateless_fold_in(self.seed_generator.next(), 0)

    def _latents(self, batch_size):
        """This replica's latent vectors z ~ N(0, I), shape (batch_size, z_dim)."""
        return self._replica_rows(
            lambda rows: tf.random.stateless_normal((rows, self.z_dim), seed=self._seed()),
            batch_size,
        )

    def _unpack(self, data):
        """Returns `(images,)` from a batch of images or of `(images, anything...)`."""
        if isinstance(data, dict):
            raise ValueError(
                f"{type(self).__name__} expects batches of images or (images, labels); received "
                f"a dict with keys {sorted(data)}."
            )
        images = data[0] if isinstance(data, (tuple, list)) else data
        return (self._checked_images(images, "images"),)


# === The priors ===


@keras.saving.register_keras_serializable(package="trapmid_tf")
class GMIPrior(_LatentPrior):
    """GMI's image prior: a WGAN-GP (Zhang et al., CVPR 2020; reference spec §3.1).

    Per batch of public images x, one critic step on
    `L_D = −(mean D(x) − mean D(G(z))) + λ·mean (‖∇D(x̂)‖₂ − 1)²`, with
    `x̂ = x + u·(G(z) − x)`, u ~ U[0, 1] per sample and z ~ N(0, I); then, when the critic's
    step count is a multiple of `n_critic`, one generator step on `L_G = −mean D(G(z'))` with
    fresh z'. Batches are images or `(images, anything)` (labels are ignored), float32 in
    [0, 1] of the generator's output shape. Calling the prior runs the generator.

    Metrics: critic_loss, wasserstein (the estimate mean D(x) − mean D(G(z))),
    gradient_penalty (unweighted) and generator_loss (mean over the generator steps so far in
    the epoch; 0 before the first).

    Args:
        generator: Maps latents (batch, z_dim) to images, e.g. `dcgan_generator`.
        critic: Maps those images to scores (batch, 1), e.g. `wgan_critic`; it must score
            each image independently (no batch norm) for the gradient penalty to hold.
        n_critic: Critic steps per generator step.
        gradient_penalty_weight: λ.
        seed: Seed of the latents and interpolation weights (None: random).
        **kwargs: Standard `keras.Model` arguments.

    Raises:
        ValueError: If the networks do not fit together or an argument is out of range.
    """

    _OPPONENT = "critic"
    _METRICS = ("critic_loss", "wasserstein", "gradient_penalty", "generator_loss")
    _NETWORKS = ("generator", "critic")

    def __init__(
        self, generator, critic, n_critic=5, gradient_penalty_weight=10.0, seed=None, **kwargs
    ):
        super().__init__(generator, critic, n_critic, seed, **kwargs)
        _check_image_model("critic", critic, self.image_shape, 1)
        if float(gradient_penalty_weight) < 0.0:
            raise ValueError(
                f"`gradient_penalty_weight` must be >= 0; received {gradient_penalty_weight!r}."
            )
        self.gradient_penalty_weight = float(gradient_penalty_weight)

    def compile(self, generator_optimizer=None, critic_optimizer=None, **kwargs):
        """Configures training.

        Args:
            generator_optimizer: Default: `TorchAdam(2e-4, beta_1=0.5, beta_2=0.999,
                epsilon=1e-8)`, PyTorch's Adam as in the reference.
            critic_optimizer: Default: the same Adam settings, a separate instance. Its
                `iterations` counts the training steps.
            **kwargs: `keras.Model.compile` arguments other than losses and metrics
                (`jit_compile` defaults to False).
        """
        super().compile(generator_optimizer, critic_optimizer, **kwargs)

    @property
    def critic_optimizer(self):
        """The critic's optimizer (Keras's `self.optimizer`)."""
        return self.optimizer

    def _opponent_losses(self, images):
        batch = ops.shape(images)[0]
        fake = ops.stop_gradient(self.generator(self._latents(batch), training=True))
        mix = self._replica_rows(
            lambda rows: tf.random.stateless_uniform((rows, 1, 1, 1), seed=self._seed()), batch
        )
        wasserstein = self._mean_score(images) - self._mean_score(fake)
        penalty = global_batch_mean(gradient_penalty(self.critic, images, fake, mix))
        return {
            "critic_loss": -wasserstein + self.gradient_penalty_weight * penalty,
            "wasserstein": wasserstein,
            "gradient_penalty": penalty,
        }

    def _generator_losses(self, images):
        fake = self.generator(self._latents(ops.shape(images)[0]), training=True)
        return {"generator_loss": -self._mean_score(fake)}

    def _mean_score(self, images):
        """This replica's share of the critic's mean score of `images` (float32)."""
        return global_batch_mean(ops.cast(self.critic(images, training=True), "float32"))

    def get_config(self):
        return {**super().get_config(), "gradient_penalty_weight": self.gradient_penalty_weight}


def _discriminator_view(discriminator):
    """A model sharing `discriminator`'s weights that returns `(features, logits)`.

    The features are the output of the layer named "features" (`minibatch_discriminator`'s
    flattened conv map, the reference's `feat`), or else the input of the logits layer.
    """
    if FEATURES_LAYER_NAME not in [layer.name for layer in discriminator.layers]:
        return features_and_logits(discriminator)
    features = discriminator.get_layer(FEATURES_LAYER_NAME).output
    return keras.Model(
        discriminator.input, (features, discriminator.output), name="discriminator_view"
    )


@keras.saving.register_keras_serializable(package="trapmid_tf")
class KEDMIPrior(_LatentPrior):
    """KED-MI's inversion-specific semi-supervised GAN (Chen et al., ICCV 2021; spec §3.1).

    The discriminator D outputs K logits over the target's classes; the "fake" class has an
    implicit logit 0. Per batch, one D step on

        L_D = softXEnt(D(x), T(x))
              + ½ [mean softplus(lse D(x_u)) − mean lse D(x_u) + mean softplus(lse D(G(z)))]

    (softXEnt(a, b) = batch mean of −Σ softmax(b)·log_softmax(a); lse = logsumexp over the K
    logits; T is the target), then, when D's step count is a multiple of `n_critic`, one
    generator step on

        L_G = mean_k |mean_batch f(G(z'))_k − mean_batch f(x_u2)_k| + entropy_weight · H,

    with f D's feature (the output of its "features" layer), and H = −Σ_{i,k} p log p the
    entropy of softmax(D(G(z'))) summed over the batch. These are the reference's forms: the
    feature matching is an L1 distance, not a squared one, and minimising H makes D's class
    predictions on fakes confident.

    x, x_u and x_u2 are three independently shuffled public batches in the reference: pass
    dict batches with the keys `KEDMI_BATCH_KEYS` (see `kedmi_batches`). A batch of images
    (or `(images, anything)`) serves as all three. Each role goes through D separately, since
    minibatch discrimination compares the images of one call.

    The target is called with `training=False` and never updated. (The reference leaves it in
    training mode, a quirk: its batch norm then uses batch statistics and updates its running
    ones, and dropout is on. We keep the target as deployed.)

    Metrics: discriminator_loss, labeled_loss (softXEnt), unlabeled_loss, accuracy (D's top-1
    agreement with the target's on x) and generator_loss (mean over generator steps so far in
    the epoch; 0 before the first).

    Args:
        generator: Maps latents (batch, z_dim) to images, e.g. `dcgan_generator`.
        discriminator: Maps those images to K logits, e.g. `minibatch_discriminator`; a
            functional model whose feature is its "features" layer (else, the input of its
            final Dense, see `trapmid_tf.models.features_and_logits`).
        target: The attacked classifier, images -> K logits.
        n_critic: Discriminator steps per generator step.
        entropy_weight: Weight of H in L_G.
        seed: Seed of the latents (None: random).
        **kwargs: Standard `keras.Model` arguments.

    Raises:
        ValueError: If the networks do not fit together or an argument is out of range.
    """

    _OPPONENT = "discriminator"
    _METRICS = (
        "discriminator_loss",
        "labeled_loss",
        "unlabeled_loss",
        "accuracy",
        "generator_loss",
    )
    _NETWORKS = ("generator", "discriminator", "target")

    def __init__(
        self, generator, discriminator, target, n_critic=5, entropy_weight=1e-4, seed=None,
        **kwargs
    ):
        super().__init__(generator, discriminator, n_critic, seed, **kwargs)
        _check_image_model("discriminator", discriminator, self.image_shape, None)
        classes = discriminator.output_shape[-1]
        _check_image_model("target", target, self.image_shape, classes)
        if float(entropy_weight) < 0.0:
            raise ValueError(f"`entropy_weight` must be >= 0; received {entropy_weight!r}.")
        self.target = target
        self.entropy_weight = float(entropy_weight)
        self._features_and_logits = _discriminator_view(discriminator)

    def compile(self, generator_optimizer=None, discriminator_optimizer=None, **kwargs):
        """Configures training.

        Args:
            generator_optimizer: Default: `TorchAdam(2e-4, beta_1=0.5, beta_2=0.999,
                epsilon=1e-8)`, PyTorch's Adam as in the reference.
            discriminator_optimizer: Default: the same Adam settings, a separate instance.
                Its `iterations` counts the training steps.
            **kwargs: `keras.Model.compile` arguments other than losses and metrics
                (`jit_compile` defaults to False).
        """
        super().compile(generator_optimizer, discriminator_optimizer, **kwargs)

    @property
    def discriminator_optimizer(self):
        """The discriminator's optimizer (Keras's `self.optimizer`)."""
        return self.optimizer

    def _unpack(self, data):
        """Returns `(x, x_u, x_u2)` from a dict batch, or one image batch used three times."""
        if not isinstance(data, dict):
            return super()._unpack(data) * len(KEDMI_BATCH_KEYS)
        missing = [key for key in KEDMI_BATCH_KEYS if key not in data]
        if missing:
            raise ValueError(
                f"KEDMIPrior dict batches must have the keys {list(KEDMI_BATCH_KEYS)}; received "
                f"keys {sorted(data)}, missing {missing}."
            )
        return tuple(self._checked_images(data[key], key) for key in KEDMI_BATCH_KEYS)

    def _opponent_losses(self, images, unlabeled, _):
        fake = ops.stop_gradient(
            self.generator(self._latents(ops.shape(images)[0]), training=True)
        )
        target_logits = ops.stop_gradient(self.target(images, training=False))
        logits = self.discriminator(images, training=True)
        labeled = global_batch_mean(_soft_cross_entropy(logits, target_logits))
        unlabeled_loss = global_batch_mean(
            _unlabeled_loss(
                self.discriminator(unlabeled, training=True),
                self.discriminator(fake, training=True),
            )
        )
        agreement = ops.equal(ops.argmax(logits, axis=-1), ops.argmax(target_logits, axis=-1))
        return {
            "discriminator_loss": labeled + unlabeled_loss,
            "labeled_loss": labeled,
            "unlabeled_loss": unlabeled_loss,
            "accuracy": global_batch_mean(ops.cast(agreement, "float32")),
        }

    def _generator_losses(self, images, unlabeled, matching):
        latents = self._latents(ops.shape(images)[0])
        real_features = ops.stop_gradient(self._features_and_logits(matching, training=True)[0])
        fake_features, fake_logits = self._features_and_logits(
            self.generator(latents, training=True), training=True
        )
        # The feature matching is one global value on every replica; the entropy is a sum.
        matching_loss = global_batch_mean(_feature_matching_loss(real_features, fake_features))
        return {"generator_loss": matching_loss + self.entropy_weight * _entropy_sum(fake_logits)}

    def get_config(self):
        return {**super().get_config(), "entropy_weight": self.entropy_weight}
