"""The transfer null: targeted adversarial examples of the target, made from public images.

Not an inversion: for each attacked class it takes random public images (drawn with the
seed) and moves each a few signed-gradient steps up the target's log-softmax of that class,
clipped to [0, 1], with no prior. The images keep the look of their public start; only
adversarial features of the target are added. Scored like reconstructions, they show what a
judge makes of such features: a judge that accepts the transfer null's images measures
transfer between the target and itself, not leakage of what the class looks like (Ho et
al. 2025, "Uncovering the Limitations of Model Inversion Evaluation").
"""

import keras
from keras import ops

from trapmid_tf.attacks.inversion import (
    InversionAttack,
    InversionProblem,
    cross_entropy_identity_loss,
    latent_variable,
)
from trapmid_tf.attacks.mi_face import clip_to_pixel_range
from trapmid_tf.defenses.sign_step import SignedGradientStep
from trapmid_tf.validation import as_image_batch, check_positive_float

# The null's default budget: a small targeted attack (10 steps of 2/255, as a PGD-style
# adversarial example), far below any inversion's.
TRANSFER_STEPS = 10
TRANSFER_STEP_SIZE = 2 / 255


class TransferNullAttack(InversionAttack):
    """Targeted signed-gradient steps from random public images toward each class.

    Each image starts as a public image drawn uniformly (with replacement) with the seed and
    takes `iterations` steps `x <- clip(x + step_size * sign(grad log softmax(T(x))_y), 0, 1)`
    (signed descent on the cross-entropy, `SignedGradientStep`, in the shared loop
    `trapmid_tf.attacks.inversion.minimize`).

    Args:
        public_images: Float32 `(n, H, W, C)` attacker's images in [0, 1].
        iterations: Signed-gradient steps, >= 0 (0 returns the drawn public images).
        step_size: The change of a pixel per step, > 0.
        chunk_size: Steps per compiled call.
        jit_compile: Whether to compile the optimisation with XLA.

    The result's latents are the int indices of the starting images in `public_images`.

    Example:
        >>> attack = TransferNullAttack(public_images)
        >>> result = attack.invert(target, classes=[1, 3], per_class=2, verbose=0)
        >>> result.images.shape, result.labels.tolist()
        ((4, 32, 32, 1), [1, 1, 3, 3])
    """

    def __init__(
        self,
        public_images,
        iterations=TRANSFER_STEPS,
        step_size=TRANSFER_STEP_SIZE,
        *,
        chunk_size=100,
        jit_compile=False,
    ):
        super().__init__(iterations, chunk_size, jit_compile)
        check_positive_float("step_size", step_size)
        self.public_images = as_image_batch("public_images", public_images)
        self.image_shape = tuple(self.public_images.shape[1:])
        self.step_size = float(step_size)

    def build_problem(self, target, labels, num_identities, seed_generator):
        indices = keras.random.randint(
            (labels.shape[0],), 0, len(self.public_images), seed=seed_generator, dtype="int32"
        )
        images = latent_variable(
            ops.take(self.public_images, indices, axis=0), "images", clip_to_pixel_range
        )
        identity_loss = cross_entropy_identity_loss(target)

        def loss():
            return ops.sum(identity_loss(images, labels))

        def finish():
            return images.numpy(), indices

        return InversionProblem([images], loss, SignedGradientStep(self.step_size), finish)
