"""KED-MI: the knowledge-enriched distributional inversion (Chen et al., ICCV 2021).

Instead of single latents, KED-MI learns a Gaussian latent distribution N(mu, sigma^2) per
identity, through the reparameterisation z = mu + sigma * eps, against the prior of its
semi-supervised GAN discriminator (whose "fake" logit is implicitly 0) and the identity loss;
the images are then fresh samples of the learnt distributions.
"""

import keras
from keras import ops

from trapmid_tf.attacks import gmi
from trapmid_tf.attacks.inversion import (
    InversionAttack,
    InversionProblem,
    check_generator,
    check_network,
    check_non_negative_float,
    check_positive_float,
    cross_entropy_identity_loss,
    latent_variable,
    sum_over_restarts,
)
from trapmid_tf.models.common import check_positive_int

INITIAL_LOG_VARIANCE = 1.0  # The reference initialises log sigma^2 to 1 (not 0).
ADAM_EPSILON = 1e-8  # PyTorch's Adam default.


def kedmi_prior_loss(logits):
    """Per-image realness loss of KED-MI's discriminator logits, `(batch, classes)`.

    With the fake logit fixed at 0, `p(real) = sigmoid(lse)` for `lse = logsumexp(logits)`, and
    the reference's `softplus(lse) - lse` equals `softplus(-lse) = -log p(real)`.
    """
    return ops.softplus(-ops.logsumexp(logits, axis=-1))


class KEDMIAttack(InversionAttack):
    """The KED-MI distributional inversion (reference `recovery.py::dist_inversion`).

    Each distribution has mu (initialised to 0) and log sigma^2 (initialised to 1), learnt by
    Adam (epsilon 1e-8) for `iterations` steps; each step draws one z = mu + exp(log sigma^2 / 2)
    eps per distribution and minimises
    `mean softplus(lse D(G(z))) - mean lse D(G(z)) + identity_weight * identity_loss`.
    Afterwards every returned image is a fresh sample of its distribution.

    `invert` learns `per_class / samples_per_distribution` distributions per class. The default
    (one distribution per image) treats the `per_class` images as restarts; the reference learns
    one distribution per identity and draws 5 images from it (`samples_per_distribution=5` with
    `per_class=5`). All distributions are optimised in one batch; the discriminator's minibatch
    features therefore see the whole batch rather than the reference's 60 identities.

    Args:
        generator: Unconditional generator, `(batch, z_dim)` latents to images in [0, 1].
        discriminator: KED-MI discriminator, images to `(batch, num_classes)` logits.
        iterations: Optimisation steps (reference 1500; its FFHQ LOMMA config uses 2400).
        learning_rate: Adam learning rate (reference 0.02).
        identity_weight: Weight of the identity loss (reference 100).
        samples_per_distribution: Images drawn from each learnt distribution; must divide
            `per_class`.
        clip_latents: Whether z is clipped to [-1, 1] before the generator (LOMMA's KED-MI
            variant); the original KED-MI does not clip.
        identity_loss: None for cross-entropy, or a callable `target -> ((images, labels) ->
            (batch,) losses)` that replaces it (LOMMA uses this).
        chunk_size: Steps per compiled call.
        jit_compile: Whether to compile the optimisation with XLA.

    The result's latents have shape `(images, 2, z_dim)`: `[:, 0]` is the mu and `[:, 1]` the
    log sigma^2 of the distribution each image was drawn from.
    """

    def __init__(
        self,
        generator,
        discriminator,
        iterations=1500,
        learning_rate=0.02,
        identity_weight=100.0,
        *,
        samples_per_distribution=1,
        clip_latents=False,
        identity_loss=None,
        chunk_size=100,
        jit_compile=False,
    ):
        super().__init__(iterations, chunk_size, jit_compile)
        self.z_dim = check_generator(generator)
        check_network("discriminator", discriminator)
        check_positive_float("learning_rate", learning_rate)
        check_non_negative_float("identity_weight", identity_weight)
        check_positive_int("samples_per_distribution", samples_per_distribution)
        self.generator = generator
        self.discriminator = discriminator
        self.learning_rate = float(learning_rate)
        self.identity_weight = float(identity_weight)
        self.samples_per_distribution = int(samples_per_distribution)
        self.clip_latents = bool(clip_latents)
        self.identity_loss = identity_loss or cross_entropy_identity_loss
        self.image_shape = tuple(generator.output_shape[1:])

    def build_problem(self, target, labels, num_identities, seed_generator):
        draws = self.samples_per_distribution
        per_class = labels.shape[0] // num_identities
        if per_class % draws:
            raise ValueError(
                f"`per_class` must be a multiple of samples_per_distribution={draws}; "
                f"received {per_class}."
            )
        shape = (labels.shape[0] // draws, self.z_dim)
        mean = latent_variable(ops.zeros(shape), "latent_mean")
        log_variance = latent_variable(
            ops.full(shape, INITIAL_LOG_VARIANCE), "latent_log_variance"
        )
        distribution_labels = labels[::draws]
        identity = self.identity_loss(target)

        def generate(mu, log_var):
            epsilon = keras.random.normal(ops.shape(mu), seed=seed_generator)
            z = mu + ops.exp(0.5 * log_var) * epsilon
            if self.clip_latents:
                z = gmi.clip_latents(z)
            return self.generator(z, training=False)

        def loss():
            images = generate(mean, log_variance)
            prior = kedmi_prior_loss(self.discriminator(images, training=False))
            identity_term = identity(images, distribution_labels)
            per_image = prior + self.identity_weight * identity_term
            return sum_over_restarts(per_image, num_identities)

        def finish():
            mu = ops.repeat(mean.value, draws, axis=0)
            log_var = ops.repeat(log_variance.value, draws, axis=0)
            return generate(mu, log_var), ops.stack([mu, log_var], axis=1)

        optimizer = keras.optimizers.Adam(self.learning_rate, epsilon=ADAM_EPSILON)
        return InversionProblem([mean, log_variance], loss, optimizer, finish)
