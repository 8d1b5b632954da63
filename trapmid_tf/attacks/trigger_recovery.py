"""Trigger recovery: Neural-Cleanse-style reverse engineering of Trap-MID's blend triggers.

An attacker who knows that the target carries class-wise blend trapdoors (but not the triggers)
searches, for each class c, a pattern p_c in [0, 1] that turns the attacker's public images into
class c when blended in the way Trap-MID blends its triggers:

    L(p_c) = mean_x CE(T((1 - alpha) x + alpha p_c), c) + prior_weight * prior(p_c)

with a total-variation ("tv") or mean-absolute ("l1") prior on the pattern. The pattern is
parametrised as `sigmoid(w)`, so it stays in [0, 1] without clipping, and w is optimised with
Adam in the shared compiled loop (`trapmid_tf.attacks.inversion.minimize`). Neural Cleanse
(Wang et al., S&P 2019) optimises a mask and a pattern with an L1 mask prior; Trap-MID's trigger
covers the whole image at a fixed blend weight, so only the pattern is searched here, at the
attacker's guess of alpha.

The recovered patterns are images: score them like reconstructions (evaluation-model top-1,
KNN), and compare them with the true triggers (`compare_with_triggers`).
"""

import keras
import numpy as np
from keras import ops

from trapmid_tf.attacks.inversion import (
    InversionAttack,
    InversionProblem,
    latent_variable,
)
from trapmid_tf.attacks.mi_face import total_variation
from trapmid_tf.validation import (
    as_image_batch,
    check_non_negative_float,
    check_open_unit_interval,
    check_positive_float,
    check_positive_int,
)

PRIORS = ("tv", "l1")


def pattern_prior(patterns, prior):
    """Per-pattern prior: total variation ("tv", as `mi_face.total_variation`) or mean |p| ("l1").

    Args:
        patterns: `(patterns, H, W, C)` tensor in [0, 1].
        prior: "tv" or "l1".

    Returns:
        A `(patterns,)` tensor.
    """
    if prior == "tv":
        return total_variation(patterns)
    return ops.mean(ops.abs(patterns), axis=(1, 2, 3))


def recovery_objective(target, patterns, labels, images, alpha, prior="tv", prior_weight=0.1):
    """Per-pattern objective: mean CE of the pattern's class over the blended images plus prior.

    Args:
        target: The attacked classifier (images in [0, 1] -> logits), inference mode.
        patterns: `(K, H, W, C)` patterns in [0, 1].
        labels: `(K,)` int class of each pattern.
        images: `(M, H, W, C)` public images in [0, 1]; every pattern is blended into each.
        alpha: Blend weight in (0, 1).
        prior: "tv" or "l1".
        prior_weight: Weight of the prior, >= 0.

    Returns:
        A `(K,)` tensor: `mean_m CE(T((1 - alpha) x_m + alpha p_k), y_k) + w * prior(p_k)`.
    """
    patterns = ops.convert_to_tensor(patterns, "float32")
    images = ops.convert_to_tensor(images, "float32")
    count, batch = ops.shape(patterns)[0], ops.shape(images)[0]
    blended = (1.0 - alpha) * images[None] + alpha * patterns[:, None]
    blended = ops.reshape(blended, (-1, *images.shape[1:]))
    logits = ops.cast(target(blended, training=False), "float32")
    repeated = ops.repeat(ops.cast(labels, "int32"), batch, axis=0)
    cross_entropy = ops.sparse_categorical_crossentropy(repeated, logits, from_logits=True)
    mean_cross_entropy = ops.mean(ops.reshape(cross_entropy, (count, batch)), axis=1)
    return mean_cross_entropy + prior_weight * pattern_prior(patterns, prior)


class TriggerRecoveryAttack(InversionAttack):
    """Reverse-engineers one blend pattern per requested class (and restart) on public images.

    Each pattern `sigmoid(w)` starts from w ~ N(0, I) and takes `iterations` Adam steps on
    `recovery_objective`, over a fresh random batch of `batch_size` public images per step (all
    of them when `batch_size` is None or at least their number). Patterns are independent: the
    loss is the sum of their objectives.

    Args:
        public_images: Float32 `(n, H, W, C)` attacker's images in [0, 1].
        alpha: The attacker's blend weight, in (0, 1) (Trap-MID's default is 0.02; an attacker
            who does not know it can sweep it).
        prior: "tv" (total variation) or "l1" (mean pattern value).
        prior_weight: Weight of the prior, >= 0.
        iterations: Adam steps.
        learning_rate: Adam learning rate on w (Neural Cleanse: 0.1).
        batch_size: Public images per step, or None for all.
        chunk_size: Steps per compiled call.
        jit_compile: Whether to compile the optimisation with XLA.

    `invert(target, classes, per_class, seed)` returns the patterns as images (labels: the class
    each pattern targets) and the final w as latents.
    """

    def __init__(
        self,
        public_images,
        alpha=0.02,
        prior="tv",
        prior_weight=0.1,
        iterations=500,
        learning_rate=0.1,
        batch_size=64,
        *,
        chunk_size=100,
        jit_compile=False,
    ):
        super().__init__(iterations, chunk_size, jit_compile)
        public_images = as_image_batch("public_images", public_images)
        check_open_unit_interval("alpha", alpha)
        if prior not in PRIORS:
            raise ValueError(f"`prior` must be one of {PRIORS}; received {prior!r}.")
        check_non_negative_float("prior_weight", prior_weight)
        check_positive_float("learning_rate", learning_rate)
        if batch_size is not None:
            check_positive_int("batch_size", batch_size)
        self.public_images = public_images
        self.alpha = float(alpha)
        self.prior = prior
        self.prior_weight = float(prior_weight)
        self.learning_rate = float(learning_rate)
        self.batch_size = (
            len(public_images) if batch_size is None else min(int(batch_size), len(public_images))
        )
        self.image_shape = tuple(public_images.shape[1:])

    def build_problem(self, target, labels, num_identities, seed_generator):
        initial = keras.random.normal((labels.shape[0], *self.image_shape), seed=seed_generator)
        logits = latent_variable(initial, "pattern_logits")
        public = ops.convert_to_tensor(self.public_images)
        count = len(self.public_images)

        def loss():
            images = public
            if self.batch_size < count:
                order = keras.random.shuffle(ops.arange(count), seed=seed_generator)
                images = ops.take(public, order[: self.batch_size], axis=0)
            per_pattern = recovery_objective(
                target, ops.sigmoid(logits), labels, images, self.alpha, self.prior,
                self.prior_weight,
            )
            return ops.sum(per_pattern)

        def finish():
            return ops.sigmoid(logits), logits.numpy()

        optimizer = keras.optimizers.Adam(self.learning_rate)
        return InversionProblem([logits], loss, optimizer, finish)


def _flat_rows(images, channels):
    """`(n, H, W, C or 1)` images as float64 rows, one channel broadcast over `channels`."""
    array = np.asarray(images, dtype=np.float64)
    array = np.broadcast_to(array, (*array.shape[:3], channels))
    return array.reshape(len(array), -1)


def trigger_cosine_matrix(patterns, triggers, centered=True):
    """Cosine similarity between every recovered pattern and every true trigger.

    Args:
        patterns: `(K, H, W, C)` recovered patterns in [0, 1].
        triggers: `(num_classes, H, W, C or 1)` true triggers in [0, 1]; one channel is
            broadcast over C (as `BlendTrigger` does).
        centered: Subtract each image's mean pixel first (Pearson correlation of the pixels).
            Two images in [0, 1] have a large plain cosine even when unrelated (two independent
            U[0, 1] images: about 0.75), so the centred form is the informative default.

    Returns:
        A float64 array `(K, num_classes)` in [-1, 1]; 0 where an image is constant.

    Raises:
        ValueError: If the arrays are not NHWC of matching height, width and channels.
    """
    patterns = np.asarray(patterns)
    if patterns.ndim != 4:
        raise ValueError(f"`patterns` must be a 4-D NHWC array; received shape {patterns.shape}.")
    triggers = np.asarray(triggers)
    if triggers.ndim != 4 or triggers.shape[1:3] != patterns.shape[1:3] or triggers.shape[
        -1
    ] not in (1, patterns.shape[-1]):
        raise ValueError(
            f"`triggers` must have shape (num_classes, {patterns.shape[1]}, {patterns.shape[2]}, "
            f"{patterns.shape[3]} or 1); received {triggers.shape}."
        )
    rows = _flat_rows(patterns, patterns.shape[-1])
    columns = _flat_rows(triggers, patterns.shape[-1])
    if centered:
        rows = rows - rows.mean(axis=1, keepdims=True)
        columns = columns - columns.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(rows, axis=1)[:, None] * np.linalg.norm(columns, axis=1)[None]
    dots = rows @ columns.T
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def compare_with_triggers(patterns, labels, triggers, centered=True):
    """How well recovered patterns match the true triggers of their classes.

    Args:
        patterns: `(K, H, W, C)` recovered patterns (e.g. a `TriggerRecoveryAttack` result).
        labels: `(K,)` int class each pattern targets.
        triggers: `(num_classes, H, W, C or 1)` true triggers.
        centered: As `trigger_cosine_matrix`.

    Returns:
        A dict: `trigger_cosine` (mean cosine of each pattern with its own class's trigger),
        `other_trigger_cosine` (mean cosine with the other classes' triggers, the baseline;
        None with one class) and `trigger_match` (fraction of patterns most similar to their
        own class's trigger; chance is 1 / num_classes).

    Raises:
        ValueError: If `labels` does not hold one class in `[0, num_classes)` per pattern.
    """
    cosine = trigger_cosine_matrix(patterns, triggers, centered)
    labels = np.asarray(labels)
    count, num_classes = cosine.shape
    if (
        labels.shape != (count,)
        or not np.issubdtype(labels.dtype, np.integer)
        or labels.min() < 0
        or labels.max() >= num_classes
    ):
        raise ValueError(
            f"`labels` must hold one integer class in [0, {num_classes}) per pattern, shape "
            f"({count},); received {labels!r}."
        )
    rows = np.arange(count)
    own = cosine[rows, labels]
    others = np.ones_like(cosine, dtype=bool)
    others[rows, labels] = False
    return {
        "trigger_cosine": float(own.mean()),
        "other_trigger_cosine": float(cosine[others].mean()) if num_classes > 1 else None,
        "trigger_match": float(np.mean(np.argmax(cosine, axis=1) == labels)),
    }
