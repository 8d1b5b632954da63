"""MI-Face: prior-free gradient inversion in pixel space (Fredrikson et al., CCS 2015).

The images themselves are optimised, by projected gradient descent in the box [0, 1], to
minimise `1 - softmax(T(x))_y` (or the cross-entropy), optionally with a total-variation
smoothness term. Without an image prior the results on deep networks look like noise or
adversarial patterns (ART#2042), but the attack needs nothing besides the target, so it is
the fastest smoke test of a classifier.

Defaults follow ART's `MIFace` where they apply: learning rate 0.1 on the class-probability
loss, per-image gradients (the loss is summed, not averaged, over the batch). ART runs up to
`max_iter=10000` iterations under an early-stopping rule (`window_length=100`,
`threshold=0.99`); the compiled loop here runs a fixed number, 1,000 by default. The gradient
of the class probability vanishes where that probability is near 0 (e.g. with many classes)
or 1; `loss="cross_entropy"` keeps a strong gradient in the first case.
"""

import keras
from keras import ops

from trapmid_tf.attacks.inversion import InversionAttack, InversionProblem, latent_variable
from trapmid_tf.validation import check_non_negative_float, check_positive_float

LOSSES = ("probability", "cross_entropy")


def clip_to_pixel_range(images):
    """Projects images onto [0, 1]."""
    return ops.clip(images, 0.0, 1.0)


def total_variation(images):
    """Per-image anisotropic total variation: mean absolute neighbour differences, both axes."""
    vertical = ops.mean(ops.abs(images[:, 1:] - images[:, :-1]), axis=(1, 2, 3))
    horizontal = ops.mean(ops.abs(images[:, :, 1:] - images[:, :, :-1]), axis=(1, 2, 3))
    return vertical + horizontal


def class_loss(logits, labels, kind):
    """Per-image `1 - softmax(logits)_y` ("probability") or cross-entropy ("cross_entropy")."""
    logits = ops.cast(logits, "float32")
    if kind == "cross_entropy":
        return ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    probabilities = ops.softmax(logits, axis=-1)
    label_probabilities = ops.take_along_axis(probabilities, ops.cast(labels, "int32")[:, None], -1)
    return 1.0 - label_probabilities[:, 0]


class MIFaceAttack(InversionAttack):
    """Prior-free pixel-space inversion: projected gradient descent on the images.

    Each image starts at `initial_value` plus uniform noise in `[-initial_noise,
    initial_noise]` (clipped to [0, 1]; the noise makes restarts differ), then takes
    `iterations` steps `x <- clip(x - learning_rate * grad, 0, 1)` of
    `class_loss(T(x), y) + tv_weight * total_variation(x)`.

    Args:
        iterations: Gradient steps (ART: at most 10,000, with early stopping).
        learning_rate: Step size (ART: 0.1).
        loss: "probability" for `1 - softmax(T(x))_y` (Fredrikson et al., ART) or
            "cross_entropy" (stronger gradients when the class probability is tiny).
        tv_weight: Weight of the total-variation term (0: none, as ART).
        initial_value: Grey level of the starting images, in [0, 1].
        initial_noise: Half-width of the uniform starting noise, >= 0.
        chunk_size: Steps per compiled call.
        jit_compile: Whether to compile the optimisation with XLA.

    The result's latents are the images themselves.
    """

    def __init__(
        self,
        iterations=1000,
        learning_rate=0.1,
        loss="probability",
        tv_weight=0.0,
        initial_value=0.5,
        initial_noise=0.1,
        *,
        chunk_size=100,
        jit_compile=False,
    ):
        super().__init__(iterations, chunk_size, jit_compile)
        check_positive_float("learning_rate", learning_rate)
        if loss not in LOSSES:
            raise ValueError(f"`loss` must be one of {LOSSES}; received {loss!r}.")
        check_non_negative_float("tv_weight", tv_weight)
        if not 0.0 <= initial_value <= 1.0:
            raise ValueError(f"`initial_value` must be in [0, 1]; received {initial_value!r}.")
        check_non_negative_float("initial_noise", initial_noise)
        self.learning_rate = float(learning_rate)
        self.loss = loss
        self.tv_weight = float(tv_weight)
        self.initial_value = float(initial_value)
        self.initial_noise = float(initial_noise)

    def build_problem(self, target, labels, num_identities, seed_generator):
        shape = (labels.shape[0], *target.input_shape[1:])
        noise = keras.random.uniform(
            shape, -self.initial_noise, self.initial_noise, seed=seed_generator
        )
        images = latent_variable(
            clip_to_pixel_range(self.initial_value + noise), "images", clip_to_pixel_range
        )

        def loss():
            per_image = class_loss(target(images, training=False), labels, self.loss)
            if self.tv_weight:
                per_image += self.tv_weight * total_variation(images)
            return ops.sum(per_image)

        def finish():
            final = images.numpy()
            return final, final

        optimizer = keras.optimizers.SGD(self.learning_rate)
        return InversionProblem([images], loss, optimizer, finish)
