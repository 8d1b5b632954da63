"""KED-MI: the knowledge-enriched distributional inversion (Chen et al., ICCV 2021).

Instead of single latents, KED-MI learns a Gaussian latent distribution N(mu, sigma^2) per
identity, through the reparameterisation z = mu + sigma * eps, against the prior of its
semi-supervised GAN discriminator (whose "fake" logit is implicitly 0) and the identity loss;
the images are then fresh samples of the learnt distributions.
"""

import keras
import numpy as np
from keras import ops

from trapmid_tf.attacks import gmi
from trapmid_tf.attacks.inversion import (
    InversionAttack,
    InversionProblem,
    check_generator,
    cross_entropy_identity_loss,
    latent_variable,
    REFERENCE_IDENTITIES_PER_BATCH,
    reference_batch_sum,
)
from trapmid_tf.optimizers import TorchAdam
from trapmid_tf.validation import (
    check_model,
    check_non_negative_float,
    check_positive_float,
    check_positive_int,
)

REFERENCE_BATCH_SIZE = 64  # the batch the reference trains KED-MI's discriminator with
INITIAL_LOG_VARIANCE = 1.0  # The reference initialises log sigma^2 to 1 (not 0).


def kedmi_prior_loss(logits):
    """Per-image realness loss of KED-MI's discriminator logits, `(batch, classes)`.

    With the fake logit fixed at 0, `p(real) = sigmoid(lse)` for `lse = logsumexp(logits)`, and
    the reference's `softplus(lse) - lse` equals `softplus(-lse) = -log p(real)`.
    """
    return ops.softplus(-ops.logsumexp(logits, axis=-1))


def discriminator_groups(num_images, per_class, group_size):
    """Index groups in which KED-MI's discriminator sees an inversion batch.

    Minibatch discrimination compares each image with the others of its batch, so the
    discriminator must see batches of the size it was trained with, holding different
    identities as the reference's batches do. The identity-major batch is read restart by
    restart (identities interleaved) and cut into groups of `group_size`; a short last group is
    filled with the first images of that order. A batch smaller than `group_size` is one group
    (the reference's 60 identities are likewise one batch, not padded).

    Args:
        num_images: Images in the identity-major batch.
        per_class: Images per identity.
        group_size: The discriminator's training batch size, >= 1.

    Returns:
        `(groups, inverse)`: int arrays; `groups` has shape `(num_groups, size)` (image indices
        per group); the discriminator outputs of the flattened groups, taken at `inverse`, are
        in the batch's order.

    Example:
        >>> groups, inverse = discriminator_groups(6, per_class=2, group_size=4)
        >>> groups.tolist(), inverse.tolist()
        ([[0, 2, 4, 1], [3, 5, 0, 2]], [0, 3, 1, 4, 2, 5])
    """
    check_positive_int("group_size", group_size)
    order = np.arange(num_images).reshape(-1, per_class).T.reshape(-1)
    size = min(group_size, num_images)
    num_groups = -(-num_images // size)
    groups = order[np.arange(num_groups * size) % num_images].reshape(num_groups, size)
    inverse = np.argsort(order)
    return groups, inverse


def grouped_logits(discriminator, images, groups, inverse):
    """The discriminator's logits of `images`, computed group by group (`discriminator_groups`).

    Args:
        discriminator: Maps a batch of images to `(batch, classes)` logits.
        images: The batch `(num_images, H, W, C)`.
        groups, inverse: What `discriminator_groups` returned for this batch.

    Returns:
        float32 logits `(num_images, classes)` in the batch's order.
    """
    outputs = [
        discriminator(ops.take(images, group, axis=0), training=False) for group in groups
    ]
    return ops.cast(ops.take(ops.concatenate(outputs, axis=0), inverse, axis=0), "float32")


class KEDMIAttack(InversionAttack):
    """The KED-MI distributional inversion (reference `recovery.py::dist_inversion`).

    Each distribution has mu (initialised to 0) and log sigma^2 (initialised to 1), learnt by
    PyTorch's Adam (`TorchAdam`, epsilon 1e-8, as the reference's `torch.optim.Adam`) for
    `iterations` steps; each step draws one z = mu + exp(log sigma^2 / 2)
    eps per distribution and minimises
    `mean softplus(lse D(G(z))) - mean lse D(G(z)) + identity_weight * identity_loss`.
    Afterwards every returned image is a fresh sample of its distribution.

    `invert` learns `per_class / samples_per_distribution` distributions per class. The default
    (one distribution per image) treats the `per_class` images as restarts; the reference learns
    one distribution per identity and draws 5 images from it (`samples_per_distribution=5` with
    `per_class=5`). All distributions are optimised in one batch, each weighted as in its
    reference batch of 60 identities (`reference_batch_sum`); the discriminator sees that batch
    in groups of the size it was trained with (`discriminator_groups`), so its minibatch
    features compare the same number of images as in training.

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
        discriminator_batch_size: The batch size the discriminator was trained with
            (reference 64).
        identities_per_batch: The reference's identities per inversion batch (60).

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
        discriminator_batch_size=REFERENCE_BATCH_SIZE,
        identities_per_batch=REFERENCE_IDENTITIES_PER_BATCH,
    ):
        super().__init__(iterations, chunk_size, jit_compile, identities_per_batch)
        check_positive_int("discriminator_batch_size", discriminator_batch_size)
        self.discriminator_batch_size = int(discriminator_batch_size)
        self.z_dim = check_generator(generator)
        check_model("discriminator", discriminator)
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
        groups, inverse = discriminator_groups(
            shape[0], per_class // draws, self.discriminator_batch_size
        )

        def generate(mu, log_var):
            epsilon = keras.random.normal(ops.shape(mu), seed=seed_generator)
            z = mu + ops.exp(0.5 * log_var) * epsilon
            if self.clip_latents:
                z = gmi.clip_latents(z)
            return self.generator(z, training=False)

        def loss():
            images = generate(mean, log_variance)
            logits = grouped_logits(self.discriminator, images, groups, inverse)
            prior = kedmi_prior_loss(logits)
            identity_term = identity(images, distribution_labels)
            per_image = prior + self.identity_weight * identity_term
            return reference_batch_sum(per_image, num_identities, self.identities_per_batch)

        def finish():
            mu = ops.repeat(mean.value, draws, axis=0)
            log_var = ops.repeat(log_variance.value, draws, axis=0)
            return generate(mu, log_var), ops.stack([mu, log_var], axis=1)

        optimizer = TorchAdam(self.learning_rate)
        return InversionProblem([mean, log_variance], loss, optimizer, finish)
