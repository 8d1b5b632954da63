"""PLG-MI reconstruction: latent search in a pseudo-label-guided cGAN (Yuan et al., AAAI 2023).

The conditional generator, trained on public images pseudo-labelled by the target, already
generates each identity; the reconstruction only searches its latent z with Adam so that two
independent augmentations of G(z, y) both have a large margin for y. There is no prior term
and no clipping.
"""

import keras
from keras import ops

from trapmid_tf.attacks.inversion import (
    REFERENCE_IDENTITIES_PER_BATCH,
    InversionAttack,
    InversionProblem,
    latent_variable,
    reference_batch_sum,
)
from trapmid_tf.attacks.plgmi_prior import margins, plgmi_augment
from trapmid_tf.optimizers import TorchAdam
from trapmid_tf.validation import check_model, check_positive_float


def reconstruction_augment(images, seed_generator):
    """PLG-MI's reconstruction augmentation: `plgmi_augment` with colour jitter always on."""
    return plgmi_augment(images, seed_generator, jitter_probability=1.0)


def _conditional_latent_size(generator):
    """Returns z_dim of a conditional generator `[z, labels] -> images`."""
    check_model("generator", generator)
    input_shape = generator.input_shape
    if not isinstance(input_shape, list) or len(input_shape) != 2 or len(input_shape[0]) != 2:
        raise ValueError(
            "`generator` must be conditional, taking [latents (batch, z_dim), labels (batch,)]; "
            f"its input shape is {input_shape}."
        )
    if not isinstance(generator.output_shape, tuple) or len(generator.output_shape) != 4:
        raise ValueError(
            f"`generator` must output NHWC images; its output shape is {generator.output_shape}."
        )
    return int(input_shape[0][1])


class PLGMIAttack(InversionAttack):
    """The PLG-MI reconstruction (reference `reconstruct.py`).

    Per restart, z ~ N(0, I) is optimised with PyTorch's Adam (`TorchAdam`, epsilon 1e-8, as
    the reference's `torch.optim.Adam`) for `iterations` steps on
    `margin(T(aug(G(z, y))), y) + margin(T(aug'(G(z, y))), y)`, where aug and aug' are two
    independent draws of the augmentation. The reference evaluates G's raw tanh output in
    [-1, 1]; here the generator outputs images in [0, 1] (see `trapmid_tf.models.cgan`).

    Args:
        generator: Conditional generator `[z, labels] -> images` in [0, 1], inference mode.
        iterations: Optimisation steps (reference 600).
        learning_rate: Adam learning rate (reference 0.1).
        augment: Callable `(images, seed_generator) -> images` drawing its randomness from
            `seed_generator` (a `keras.random.SeedGenerator`); differentiable in the images.
            None for the reference's (`reconstruction_augment`: random resized crop, colour
            jitter, flip, rotation).
        chunk_size: Steps per compiled call.
        jit_compile: Whether to compile the optimisation with XLA.
        identities_per_batch: The reference's identities per inversion batch (60).

    The reference minimises, per restart and batch of 60 identities, the sum of the two views'
    mean margins over the batch. Here all restarts of all identities form one batch, and each
    image's two margins are weighted as in its reference batch (`reference_batch_sum`), so
    every z receives the reference's gradient and takes its Adam step (Adam's epsilon makes
    the step depend on the loss's scale).

    The result's latents are the final z, shape `(images, z_dim)`.
    """

    def __init__(
        self,
        generator,
        iterations=600,
        learning_rate=0.1,
        augment=None,
        *,
        chunk_size=100,
        jit_compile=False,
        identities_per_batch=REFERENCE_IDENTITIES_PER_BATCH,
    ):
        super().__init__(iterations, chunk_size, jit_compile, identities_per_batch)
        self.z_dim = _conditional_latent_size(generator)
        check_positive_float("learning_rate", learning_rate)
        if augment is not None and not callable(augment):
            raise ValueError(f"`augment` must be None or a callable; received {augment!r}.")
        self.generator = generator
        self.learning_rate = float(learning_rate)
        self.augment = augment or reconstruction_augment
        self.image_shape = tuple(generator.output_shape[1:])

    def _check_target(self, target):
        num_classes = super()._check_target(target)
        return min(num_classes, getattr(self.generator, "num_classes", num_classes))

    def view_loss(self, target):
        """Returns the loss of each augmented view: PLG-MI's margin.

        Subclasses (PLG-MI++) add terms here; `build_problem` calls it once per inversion.

        Args:
            target: The attacked classifier.

        Returns:
            Callable `(views, labels) -> (views,)` losses.
        """
        return lambda views, labels: margins(target(views, training=False), labels)

    def build_problem(self, target, labels, num_identities, seed_generator):
        initial = keras.random.normal((labels.shape[0], self.z_dim), seed=seed_generator)
        z = latent_variable(initial, "latents")
        view_loss = self.view_loss(target)

        def loss():
            images = self.generator([z, labels], training=False)
            # Both augmented views go through the target in one (inference-mode) batch.
            views = [self.augment(images, seed_generator) for _ in range(2)]
            per_view = view_loss(ops.concatenate(views, axis=0), ops.tile(labels, [2]))
            count = labels.shape[0]
            return reference_batch_sum(
                per_view[:count] + per_view[count:], num_identities, self.identities_per_batch
            )

        def finish():
            return self.generator([z, labels], training=False), z.numpy()

        optimizer = TorchAdam(self.learning_rate)
        return InversionProblem([z], loss, optimizer, finish)
