"""GMI: the generative model-inversion attack (Zhang et al., CVPR 2020).

Latents z of a GAN generator trained on public data are optimised so that the generated
images look real to the GAN's critic and are classified as the target identity:
`L = -mean D(G(z)) + identity_weight * CE(T(G(z)), id)`, with the reference's momentum
update and a clip of z to [-1, 1] after every step.
"""

import keras
from keras import ops

from trapmid_tf.attacks.inversion import (
    InversionAttack,
    InversionProblem,
    check_generator,
    cross_entropy_identity_loss,
    latent_variable,
    REFERENCE_IDENTITIES_PER_BATCH,
    reference_batch_sum,
)
from trapmid_tf.validation import check_model, check_non_negative_float, check_positive_float

LATENT_BOUND = 1.0


def clip_latents(z):
    """Clips latents to the box [-1, 1], as the reference does after every GMI step."""
    return ops.clip(z, -LATENT_BOUND, LATENT_BOUND)


def gmi_optimizer(learning_rate=0.02, momentum=0.9):
    """Returns the reference's GMI update as a Keras optimiser.

    The reference updates `v' = m v - lr g; z <- z - m v + (1 + m) v'`. Since
    `-m v + (1 + m) v' = v' + m (v' - v) = m v' - lr g`, this is exactly Keras SGD with
    Nesterov momentum (`v' = m v - lr g; z <- z + m v' - lr g`).

    Args:
        learning_rate: Step size (the reference's 0.02).
        momentum: Momentum (the reference's 0.9).

    Returns:
        A fresh `keras.optimizers.SGD`.
    """
    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum, nesterov=True)


class GMIAttack(InversionAttack):
    """The GMI inversion (reference `recovery.py::inversion`).

    Per restart, z ~ N(0, I) is optimised for `iterations` steps of
    `-mean D(G(z)) + identity_weight * identity_loss` with
    `v' = momentum v - lr grad; z <- z - momentum v + (1 + momentum) v'; z <- clip(z, -1, 1)`.
    The reference runs five seeds with one image per identity each, in batches of 60
    identities; here the `per_class` restarts of all identities form one batch, and each image's
    loss is weighted as in its reference batch (`reference_batch_sum`), so every z moves exactly
    as in a reference run, however many identities are attacked at once.
    Generator, critic and target run in inference mode.

    Args:
        generator: Unconditional generator, `(batch, z_dim)` latents to images in [0, 1].
        critic: WGAN critic, images to a `(batch, 1)` realness score.
        iterations: Optimisation steps (reference 1500).
        learning_rate: Step size of the momentum update (reference 0.02).
        momentum: Momentum of the update (reference 0.9).
        identity_weight: Weight of the identity loss (reference 100).
        identity_loss: None for cross-entropy, or a callable `target -> ((images, labels) ->
            (batch,) losses)` that replaces it (LOMMA uses this).
        chunk_size: Steps per compiled call.
        jit_compile: Whether to compile the optimisation with XLA.
        identities_per_batch: The reference's identities per inversion batch (60).

    The result's latents are the final z, shape `(images, z_dim)`.
    """

    def __init__(
        self,
        generator,
        critic,
        iterations=1500,
        learning_rate=0.02,
        momentum=0.9,
        identity_weight=100.0,
        *,
        identity_loss=None,
        chunk_size=100,
        jit_compile=False,
        identities_per_batch=REFERENCE_IDENTITIES_PER_BATCH,
    ):
        super().__init__(iterations, chunk_size, jit_compile, identities_per_batch)
        self.z_dim = check_generator(generator)
        check_model("critic", critic)
        check_positive_float("learning_rate", learning_rate)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1); received {momentum!r}.")
        check_non_negative_float("identity_weight", identity_weight)
        self.generator = generator
        self.critic = critic
        self.learning_rate = float(learning_rate)
        self.momentum = float(momentum)
        self.identity_weight = float(identity_weight)
        self.identity_loss = identity_loss or cross_entropy_identity_loss
        self.image_shape = tuple(generator.output_shape[1:])

    def build_problem(self, target, labels, num_identities, seed_generator):
        initial = keras.random.normal((labels.shape[0], self.z_dim), seed=seed_generator)
        z = latent_variable(initial, "latents", clip_latents)
        identity = self.identity_loss(target)

        def loss():
            images = self.generator(z, training=False)
            realness = ops.reshape(ops.cast(self.critic(images, training=False), "float32"), (-1,))
            per_image = -realness + self.identity_weight * identity(images, labels)
            return reference_batch_sum(per_image, num_identities, self.identities_per_batch)

        def finish():
            return self.generator(z, training=False), z.numpy()

        return InversionProblem(
            [z], loss, gmi_optimizer(self.learning_rate, self.momentum), finish
        )
