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

Under a `tf.distribute` strategy each replica computes the reference losses on its share of
the batch and the gradients are averaged over replicas; batch statistics (the generator's batch
norm, KED-MI's minibatch discrimination and feature means) are per replica. Each replica draws
its own latent vectors.
"""

import keras
import tensorflow as tf
from keras import ops

from trapmid_tf.contract import checked_images, replica_count
from trapmid_tf.models import common
from trapmid_tf.models.features import features_and_logits
from trapmid_tf.models.gan import FEATURES_LAYER_NAME
from trapmid_tf.saving import SeedStateMixin

_serialize = keras.saving.serialize_keras_object
_deserialize = keras.saving.deserialize_keras_object

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
    real, fake, mix = (ops.convert_to_tensor(value) for value in (real, fake, mix))
    interpolated = real + mix * (fake - real)
    with tf.GradientTape() as tape:
        tape.watch(interpolated)
        scores = critic(interpolated, training=True)
    gradients = tape.gradient(scores, interpolated)
    squared_norms = ops.sum(ops.square(gradients), axis=(1, 2, 3))
    return ops.square(ops.sqrt(squared_norms + _SQUARED_NORM_FLOOR) - 1.0)


def _soft_cross_entropy(logits, target_logits):
    """Batch mean of `−Σ softmax(target_logits)·log_softmax(logits)` (the reference softXEnt)."""
    probabilities = ops.softmax(target_logits, axis=-1)
    return -ops.mean(ops.sum(probabilities * ops.log_softmax(logits, axis=-1), axis=-1))


def _unlabeled_loss(real_logits, fake_logits):
    """Semi-supervised GAN loss with the fake class's logit fixed at 0.

    `p(real | x) = sigmoid(lse)` with `lse = logsumexp(logits)`, so `−log p(real) =
    softplus(lse) − lse` and `−log p(fake) = softplus(lse)`; the reference halves their sum.
    """
    real_lse = ops.logsumexp(real_logits, axis=-1)
    fake_lse = ops.logsumexp(fake_logits, axis=-1)
    return 0.5 * (
        ops.mean(ops.softplus(real_lse)) - ops.mean(real_lse) + ops.mean(ops.softplus(fake_lse))
    )


def _feature_matching_loss(real_features, fake_features):
    """Mean absolute difference of the batch-mean features (the reference's L1 form)."""
    return ops.mean(ops.abs(ops.mean(fake_features, axis=0) - ops.mean(real_features, axis=0)))


def _entropy_sum(logits):
    """Entropy of `softmax(logits)` summed over the batch (not averaged), as the reference."""
    return -ops.sum(ops.softmax(logits, axis=-1) * ops.log_softmax(logits, axis=-1))


# === Helpers ===


def _run_if(predicate, step, *args):
    """Runs `step(*args)` only where `predicate()` is true, inside a compiled train step.

    `step` may synchronise replicas (an optimizer update does), which a `tf.cond` in replica
    context cannot hold under a distribution strategy; there the condition moves to the
    cross-replica context and `step` runs on every replica from inside it.

    Returns:
        Whether `step` ran, as a boolean tensor.
    """

    def skip():
        return tf.constant(False)

    def run(call, *call_args):
        call(*call_args)
        return tf.constant(True)

    if not tf.distribute.has_strategy():
        return tf.cond(predicate(), lambda: run(step, *args), skip)

    def cross_replica(strategy, *replica_args):
        on_replicas = strategy.extended.call_for_each_replica
        return tf.cond(predicate(), lambda: run(on_replicas, step, replica_args), skip)

    return tf.distribute.get_replica_context().merge_call(cross_replica, args=args)


def _default_adam():
    """The reference GAN optimizer: Adam(lr 2e-4, betas (0.5, 0.999), eps 1e-8)."""
    return keras.optimizers.Adam(learning_rate=2e-4, beta_1=0.5, beta_2=0.999, epsilon=1e-8)


def _check_model(name, model):
    if not isinstance(model, keras.Model):
        raise ValueError(f"`{name}` must be a keras.Model; received {type(model).__name__}.")


def _check_image_model(name, model, image_shape, outputs):
    """Checks that `model` takes `image_shape` images and outputs `outputs` values per image."""
    _check_model(name, model)
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
    common.check_positive_int("batch_size", batch_size)
    common.check_positive_int("shuffle_buffer", shuffle_buffer)
    if isinstance(public.element_spec, tuple):
        public = public.map(lambda image, *_: image)
    copies = [
        public.shuffle(shuffle_buffer, seed=None if seed is None else seed + offset)
        .batch(batch_size)
        for offset in range(len(KEDMI_BATCH_KEYS))
    ]
    return tf.data.Dataset.zip(dict(zip(KEDMI_BATCH_KEYS, copies)))


# === Shared machinery ===


class _GANPrior(SeedStateMixin, keras.Model):
    """A generator and its opponent network trained with the reference's alternating schedule.

    Subclasses set `_OPPONENT` (the attribute naming the opponent network), `_METRICS` and
    `_NETWORKS` (config keys holding networks), and define `_opponent_step(*batch)`, which
    returns the metrics it logs, and `_generator_step(*batch)`, which logs "generator_loss".
    """

    _OPPONENT = None
    _METRICS = ()
    _NETWORKS = ("generator",)

    def __init__(self, generator, opponent, n_critic, seed, **kwargs):
        super().__init__(**kwargs)
        _check_model("generator", generator)
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
        common.check_positive_int("n_critic", n_critic)
        self.generator = generator
        setattr(self, self._OPPONENT, opponent)
        self.z_dim = int(generator.input_shape[1])
        self.image_shape = tuple(generator.output_shape[1:])
        self.n_critic = int(n_critic)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        self._trackers = {name: keras.metrics.Mean(name=name) for name in self._METRICS}
        self.built = True

    @property
    def _opponent(self):
        return getattr(self, self._OPPONENT)

    # === Compilation ===

    def _compile_players(self, generator_optimizer, opponent_optimizer, **kwargs):
        """Attaches the optimizers (reference Adam by default) and builds both of them.

        The opponent's optimizer is Keras's `self.optimizer`; its `iterations` is the step count.
        """
        for name in ("optimizer", "loss", "metrics", "loss_weights", "weighted_metrics"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"{type(self).__name__}.compile does not take `{name}`; pass "
                    f"`generator_optimizer` and `{self._OPPONENT}_optimizer`. Its losses and "
                    f"metrics ({', '.join(self._METRICS)}) are fixed."
                )
        if generator_optimizer is not None and generator_optimizer is opponent_optimizer:
            raise ValueError(
                f"`generator_optimizer` and `{self._OPPONENT}_optimizer` must be two different "
                "optimizer objects (each keeps its own state); received the same one twice."
            )
        kwargs.setdefault("jit_compile", False)
        super().compile(
            optimizer=keras.optimizers.get(opponent_optimizer or _default_adam()), **kwargs
        )
        self.generator_optimizer = keras.optimizers.get(generator_optimizer or _default_adam())
        # Keras builds only `self.optimizer`, and only lazily; build both now, in scope.
        with self.distribute_strategy.scope():
            self.optimizer.build(self._opponent.trainable_variables)
            self.generator_optimizer.build(self.generator.trainable_variables)

    def get_compile_config(self):
        return {
            "generator_optimizer": _serialize(self.generator_optimizer),
            f"{self._OPPONENT}_optimizer": _serialize(self.optimizer),
            "jit_compile": self.jit_compile,
        }

    def compile_from_config(self, config):
        config = dict(config)
        for key in ("generator_optimizer", f"{self._OPPONENT}_optimizer"):
            config[key] = _deserialize(config[key])
        self.compile(**config)

    # === Training ===

    def call(self, latents, training=False):
        """Generates images from latent vectors.

        Args:
            latents: Float latents, `(batch, z_dim)`.
            training: Whether the generator runs in training mode.

        Returns:
            Images in [0, 1], `(batch, *image_shape)`.
        """
        return self.generator(latents, training=training)

    @property
    def metrics(self):
        return list(self._trackers.values())

    def train_step(self, data):
        """One opponent (critic or discriminator) step, then a generator step when due.

        Args:
            data: A batch as the subclass documents (images, `(images, anything)`, or for
                `KEDMIPrior` a dict keyed by `KEDMI_BATCH_KEYS`).

        Returns:
            The subclass's metrics, means over the epoch so far.
        """
        batch = self._unpack(data)
        logs = self._opponent_step(*batch)
        for name, value in logs.items():
            self._trackers[name].update_state(value)
        _run_if(self._generator_due, self._generator_step, *batch)
        return {name: tracker.result() for name, tracker in self._trackers.items()}

    def _generator_due(self):
        """Whether the opponent's step count (just incremented) is a multiple of n_critic."""
        return ops.equal(ops.mod(self.optimizer.iterations, self.n_critic), 0)

    def _descend(self, optimizer, tape, loss, variables):
        """One optimizer step on `loss`, a mean over this replica's share of the batch."""
        # Replica gradients are summed: scale each by 1/replicas to average them.
        replicas = replica_count()
        gradients = tape.gradient(loss, variables, output_gradients=ops.ones_like(loss) / replicas)
        optimizer.apply(gradients, variables)

    def _seed(self):
        """A fresh stateless seed from the model's seed generator, different on each replica."""
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return tf.random.experimental.stateless_fold_in(self.seed_generator.next(), replica)

    def _latents(self, batch_size):
        """Latent vectors z ~ N(0, I), shape (batch_size, z_dim)."""
        return tf.random.stateless_normal((batch_size, self.z_dim), seed=self._seed())

    # === Input checks ===

    def _unpack(self, data):
        """Returns `(images,)` from a batch of images or of `(images, anything...)`."""
        if isinstance(data, dict):
            raise ValueError(
                f"{type(self).__name__} expects batches of images or (images, labels); received "
                f"a dict with keys {sorted(data)}."
            )
        images = data[0] if isinstance(data, (tuple, list)) else data
        return (self._checked_images(images, "images"),)

    def _checked_images(self, images, name):
        """Checks shape and dtype now and values (finite, in [0, 1]) when the step runs."""
        images, checks = checked_images(images, self.image_shape, name)
        with tf.control_dependencies(checks):
            return tf.identity(images)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            **{key: _serialize(getattr(self, key)) for key in self._NETWORKS},
            "n_critic": self.n_critic,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in cls._NETWORKS:
            config[key] = _deserialize(config[key])
        return cls(**config)


# === The priors ===


@keras.saving.register_keras_serializable(package="trapmid_tf")
class GMIPrior(_GANPrior):
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
            generator_optimizer: Default: Adam(2e-4, beta_1=0.5, beta_2=0.999, epsilon=1e-8).
            critic_optimizer: Default: the same Adam settings, a separate instance. Its
                `iterations` counts the training steps.
            **kwargs: `keras.Model.compile` arguments other than losses and metrics
                (`jit_compile` defaults to False).
        """
        self._compile_players(generator_optimizer, critic_optimizer, **kwargs)

    @property
    def critic_optimizer(self):
        """The critic's optimizer (Keras's `self.optimizer`)."""
        return self.optimizer

    def _opponent_step(self, images):
        batch = ops.shape(images)[0]
        fake = ops.stop_gradient(self.generator(self._latents(batch), training=True))
        mix = tf.random.stateless_uniform((batch, 1, 1, 1), seed=self._seed())
        with tf.GradientTape() as tape:
            wasserstein = ops.mean(self.critic(images, training=True)) - ops.mean(
                self.critic(fake, training=True)
            )
            penalty = ops.mean(gradient_penalty(self.critic, images, fake, mix))
            loss = -wasserstein + self.gradient_penalty_weight * penalty
        self._descend(self.optimizer, tape, loss, self.critic.trainable_variables)
        return {"critic_loss": loss, "wasserstein": wasserstein, "gradient_penalty": penalty}

    def _generator_step(self, images):
        latents = self._latents(ops.shape(images)[0])
        with tf.GradientTape() as tape:
            fake = self.generator(latents, training=True)
            loss = -ops.mean(self.critic(fake, training=True))
        self._descend(self.generator_optimizer, tape, loss, self.generator.trainable_variables)
        self._trackers["generator_loss"].update_state(loss)

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
class KEDMIPrior(_GANPrior):
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
            generator_optimizer: Default: Adam(2e-4, beta_1=0.5, beta_2=0.999, epsilon=1e-8).
            discriminator_optimizer: Default: the same Adam settings, a separate instance.
                Its `iterations` counts the training steps.
            **kwargs: `keras.Model.compile` arguments other than losses and metrics
                (`jit_compile` defaults to False).
        """
        self._compile_players(generator_optimizer, discriminator_optimizer, **kwargs)

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

    def _opponent_step(self, images, unlabeled, _):
        batch = ops.shape(images)[0]
        fake = ops.stop_gradient(self.generator(self._latents(batch), training=True))
        target_logits = ops.stop_gradient(self.target(images, training=False))
        with tf.GradientTape() as tape:
            logits = self.discriminator(images, training=True)
            labeled = _soft_cross_entropy(logits, target_logits)
            unlabeled_loss = _unlabeled_loss(
                self.discriminator(unlabeled, training=True),
                self.discriminator(fake, training=True),
            )
            loss = labeled + unlabeled_loss
        self._descend(self.optimizer, tape, loss, self.discriminator.trainable_variables)
        agreement = ops.equal(ops.argmax(logits, axis=-1), ops.argmax(target_logits, axis=-1))
        return {
            "discriminator_loss": loss,
            "labeled_loss": labeled,
            "unlabeled_loss": unlabeled_loss,
            "accuracy": ops.mean(ops.cast(agreement, "float32")),
        }

    def _generator_step(self, images, unlabeled, matching):
        latents = self._latents(ops.shape(images)[0])
        real_features, _ = self._features_and_logits(matching, training=True)
        real_features = ops.stop_gradient(real_features)
        with tf.GradientTape() as tape:
            fake = self.generator(latents, training=True)
            fake_features, fake_logits = self._features_and_logits(fake, training=True)
            loss = _feature_matching_loss(
                real_features, fake_features
            ) + self.entropy_weight * _entropy_sum(fake_logits)
        self._descend(self.generator_optimizer, tape, loss, self.generator.trainable_variables)
        self._trackers["generator_loss"].update_state(loss)

    def get_config(self):
        return {**super().get_config(), "entropy_weight": self.entropy_weight}
