"""PLG-MI reconstruction: latent search in a pseudo-label-guided cGAN (Yuan et al., AAAI 2023).

The conditional generator, trained on public images pseudo-labelled by the target, already
generates each identity; the reconstruction only searches its latent z with Adam so that two
independent augmentations of G(z, y) both have a large margin for y. There is no prior term
and no clipping.
"""

import keras
from keras import ops

from trapmid_tf.attacks.inversion import (
    InversionAttack,
    InversionProblem,
    latent_variable,
)
from trapmid_tf.attacks.plgmi_prior import margin_loss, plgmi_augment
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

    The loss is the reference's per batch: the two views' mean margins over all images. (The
    reference averages over one restart's identities at a time; Adam's steps do not depend on
    that scale.)

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
    ):
        super().__init__(iterations, chunk_size, jit_compile)
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
        """Returns the loss of a batch of augmented views: PLG-MI's mean margin.

        Subclasses (PLG-MI++) add terms here; `build_problem` calls it once per inversion.

        Args:
            target: The attacked classifier.

        Returns:
            Callable `(views, labels) -> scalar`, the mean over the views.
        """
        return lambda views, labels: margin_loss(target(views, training=False), labels)

    def build_problem(self, target, labels, num_identities, seed_generator):
        initial = keras.random.normal((labels.shape[0], self.z_dim), seed=seed_generator)
        z = latent_variable(initial, "latents")
        view_loss = self.view_loss(target)

        def loss():
            images = self.generator([z, labels], training=False)
            # Both augmented views go through the target in one (inference-mode) batch; the
            # mean loss over both is half the sum of the two views' mean losses.
            views = [self.augment(images, seed_generator) for _ in range(2)]
            return 2.0 * view_loss(ops.concatenate(views, axis=0), ops.tile(labels, [2]))

        def finish():
            return self.generator([z, labels], training=False), z.numpy()

        optimizer = TorchAdam(self.learning_rate)
        return InversionProblem([z], loss, optimizer, finish)
