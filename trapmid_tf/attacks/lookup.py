"""The lookup baseline: the public images the target is surest of, scored as reconstructions.

A zero-effort "attack" with no prior and no optimisation: for each attacked class it returns
the attacker's public images to which the target gives the highest softmax probability of
that class. When the public images hold people (or digits) of the private classes, this floor
alone can score a high top-1 by the evaluation model (0.96 on the digits demo), so the report
credits an attack with leakage only above it (`trapmid_tf.report.works`).
"""

from trapmid_tf.attacks.inversion import AttackResult, identity_labels
from trapmid_tf.attacks.plgmi_prior import most_confident
from trapmid_tf.validation import as_image_batch, check_model, check_positive_int


class LookupAttack:
    """Returns, per class, the public images with the highest target confidence for it.

    Same call shape and result as the inversion attacks, so its images are scored exactly
    like reconstructions. Deterministic: ties are broken by the lower public index, and the
    same image may serve several classes (it is then returned once for each).

    Args:
        public_images: Float32 `(n, H, W, C)` attacker's images in [0, 1].
        batch_size: Public images per forward pass of the target (memory).

    Attributes:
        iterations: 0; the lookup runs no optimisation step.

    Example:
        >>> attack = LookupAttack(public_images[:50])
        >>> result = attack.invert(target, classes=[1, 3], per_class=2)
        >>> result.images.shape, result.labels.tolist(), result.latents.shape
        ((4, 32, 32, 1), [1, 1, 3, 3], (4,))
    """

    iterations = 0

    def __init__(self, public_images, batch_size=350):
        check_positive_int("batch_size", batch_size)
        public_images = as_image_batch("public_images", public_images)
        self.public_images = public_images
        self.batch_size = int(batch_size)

    def invert(self, target, classes, per_class=5, seed=0, verbose=0):
        """Picks `per_class` public images for each class in `classes`.

        Args:
            target: A Keras classifier mapping float32 NHWC images in [0, 1] to logits.
            classes: Iterable of class ids.
            per_class: Images per class, >= 1 and at most the number of public images.
            seed: Unused (the lookup draws nothing); taken as every attack takes it.
            verbose: Unused (no loop to show); taken as every attack takes it.

        Returns:
            An `AttackResult`: per class in the order of `classes` its `per_class` most
            confident public images, most confident first; `latents` holds their int64
            indices into `public_images`.

        Raises:
            ValueError: On a bad argument, a target that does not take the public images,
                or `per_class` above the number of public images.
        """
        check_model("target", target)
        image_shape = tuple(self.public_images.shape[1:])
        if tuple(target.input_shape[1:]) != image_shape:
            raise ValueError(
                f"`target` must take the public images of shape {image_shape}; its input shape "
                f"is {target.input_shape}."
            )
        labels = identity_labels(classes, per_class, int(target.output_shape[-1]))
        if per_class > len(self.public_images):
            raise ValueError(
                f"`per_class` must be at most the number of public images, "
                f"{len(self.public_images)}; received {per_class}."
            )
        best = most_confident(target, self.public_images, per_class, self.batch_size)
        indices = best[labels[::per_class]].reshape(-1)
        return AttackResult(images=self.public_images[indices], labels=labels, latents=indices)
