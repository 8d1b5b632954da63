"""PLG-MI++: PLG-MI that knows the defense and steers its reconstructions away from the trapdoor.

Trap-MID plants a trapdoor per class: triggered inputs of class y share a feature direction, the
class's trapdoor signature (the target's mean penultimate feature over images blended with
trigger y, `trapmid_tf.metrics.trapdoor`). MI attacks are drawn to it: their reconstructions sit
near the signature (paper digest 3.7). The adaptive attack (paper Table 4, "PLG-MI++") adds to
PLG-MI's margin loss a penalty on the cosine similarity between the target feature of each
augmented view of `G(z, y)` and the signature of the attacked class y:

    L = sum over the two views of mean_i [margin(T(view_i), y_i) + w * cos(f_T(view_i), s_{y_i})]

Two knowledge levels:
- the attacker holds the defender's triggers (worst case): `defender_signatures` computes the
  signatures exactly as the defender does (`TrapdoorDetector`);
- the attacker only has the model: pass `signatures=None`, and `invert` first runs plain PLG-MI,
  takes the mean target feature of its reconstructions per class (`estimate_signatures`: the
  paper shows these sit near the true signatures), then runs the penalised inversion.
"""

import numpy as np
from keras import ops

from trapmid_tf.attacks.plgmi import PLGMIAttack
from trapmid_tf.attacks.plgmi_prior import margin_loss
from trapmid_tf.metrics.evaluator import TrapdoorDetector
from trapmid_tf.metrics.features import batched_predict
from trapmid_tf.metrics.trapdoor import class_signatures
from trapmid_tf.models.features import feature_extractor, features_and_logits
from trapmid_tf.validation import as_feature_matrix, check_non_negative_float

COSINE_EPSILON = 1e-12  # Norm product below which the cosine is taken as 0 (zero vectors).


def signature_cosine(features, signatures):
    """Row-wise cosine similarity of features and the signatures of their classes.

    Args:
        features: `(batch, dims)` tensor.
        signatures: `(batch, dims)` tensor, the signature of each row's class.

    Returns:
        A `(batch,)` tensor in [-1, 1]; 0 where either vector is zero.
    """
    dots = ops.sum(features * signatures, axis=-1)
    norms = ops.norm(features, axis=-1) * ops.norm(signatures, axis=-1)
    return dots / ops.maximum(norms, COSINE_EPSILON)


def defender_signatures(target, triggers, alpha, clean_images, batch_size=100):
    """The trapdoor signatures as the defender computes them (the worst-case attacker's).

    Args:
        target: The Trap-MID classifier (exported, without triggers).
        triggers: Float32 `(num_classes, H, W, C or 1)` triggers in [0, 1].
        alpha: Blend weight the triggers were trained with.
        clean_images: Float32 NHWC images blended with every trigger (the defender uses its
            training images; an attacker holding the triggers may use public images).
        batch_size: Images per forward pass.

    Returns:
        A float64 array `(num_classes, feature_dims)`.
    """
    return TrapdoorDetector(target, triggers, alpha, clean_images, batch_size).signatures


def estimate_signatures(target, images, labels, num_classes=None, batch_size=100):
    """The model-only attacker's signatures: mean target feature of its reconstructions per class.

    Args:
        target: The attacked classifier (features convention of `trapmid_tf.models.features`).
        images: Float32 NHWC reconstructions in [0, 1], e.g. a plain PLG-MI result.
        labels: Int attacked class of each reconstruction.
        num_classes: Rows of the result; None for the target's number of classes.
        batch_size: Images per forward pass.

    Returns:
        A float64 array `(num_classes, feature_dims)`; rows of classes without reconstructions
        are zero (their penalty is 0).

    Raises:
        ValueError: If `labels` does not match `images` or holds a class outside
            `[0, num_classes)`.
    """
    num_classes = int(target.output_shape[-1]) if num_classes is None else int(num_classes)
    labels = np.asarray(labels)
    features = batched_predict(feature_extractor(target), images, batch_size)
    if labels.shape != (len(features),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"`labels` must hold one integer class per image, shape ({len(features)},); "
            f"received shape {labels.shape} and dtype {labels.dtype}."
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"`labels` must lie in [0, {num_classes}); received values in "
            f"[{labels.min()}, {labels.max()}]."
        )
    present, local = np.unique(labels, return_inverse=True)
    signatures = np.zeros((num_classes, features.shape[1]))
    signatures[present] = class_signatures(features, local, len(present))
    return signatures


class PLGMIAdaptiveAttack(PLGMIAttack):
    """PLG-MI++: PLG-MI with a penalty on the trapdoor-signature similarity of each view.

    The loss of a batch of views is PLG-MI's mean margin plus
    `penalty_weight * mean cos(f_T(view), s_y)`, where `f_T` is the target's penultimate
    feature of the augmented view and `s_y` the signature of the attacked class. Everything
    else (latents, augmentation, Adam) is `PLGMIAttack`.

    Args:
        generator: Conditional generator `[z, labels] -> images` in [0, 1] (PLG-MI's prior).
        signatures: `(num_classes, feature_dims)` trapdoor signatures of the target (e.g.
            `defender_signatures`, or `estimate_signatures` of an earlier PLG-MI result); None
            to estimate them inside `invert` from a first, plain PLG-MI round with the same
            budget and seed (the model-only attacker; twice the cost).
        penalty_weight: Weight w of the cosine penalty, >= 0 (0 is plain PLG-MI). The margin
            is in logit units and the cosine in [-1, 1]; sweep it (e.g. 0.3, 1, 3, 10).
        iterations, learning_rate, augment, chunk_size, jit_compile: As `PLGMIAttack`.

    The result's latents are the final z, shape `(images, z_dim)`.
    """

    def __init__(
        self,
        generator,
        signatures=None,
        penalty_weight=1.0,
        iterations=600,
        learning_rate=0.1,
        augment=None,
        *,
        chunk_size=100,
        jit_compile=False,
    ):
        super().__init__(
            generator, iterations, learning_rate, augment,
            chunk_size=chunk_size, jit_compile=jit_compile,
        )
        check_non_negative_float("penalty_weight", penalty_weight)
        self.penalty_weight = float(penalty_weight)
        self.signatures = (
            None if signatures is None else as_feature_matrix(signatures, "signatures")
        )

    def invert(self, target, classes, per_class=5, seed=0, verbose=1):
        """Reconstructs `per_class` images of each class, penalised towards leaving the trapdoor.

        With `signatures=None`, first runs plain PLG-MI (same budget, classes, restarts and
        seed), estimates the signatures from its reconstructions, then runs PLG-MI++.

        Args:
            target, classes, per_class, seed, verbose: As `InversionAttack.invert`.

        Returns:
            An `AttackResult` of the penalised inversion.
        """
        if self.signatures is not None:
            return super().invert(target, classes, per_class, seed, verbose)
        plain = PLGMIAttack(
            self.generator, self.iterations, self.learning_rate, self.augment,
            chunk_size=self.chunk_size, jit_compile=self.jit_compile,
        ).invert(target, classes, per_class, seed, verbose)
        estimated = PLGMIAdaptiveAttack(
            self.generator,
            estimate_signatures(target, plain.images, plain.labels),
            self.penalty_weight,
            self.iterations,
            self.learning_rate,
            self.augment,
            chunk_size=self.chunk_size,
            jit_compile=self.jit_compile,
        )
        return estimated.invert(target, classes, per_class, seed, verbose)

    def view_loss(self, target):
        """Returns `(views, labels) -> mean margin + penalty_weight * mean signature cosine`.

        Args:
            target: The attacked classifier (features convention of
                `trapmid_tf.models.features`).

        Returns:
            The loss callable.

        Raises:
            ValueError: If the signatures do not have one row per target class and the
                target's feature size.
        """
        view = features_and_logits(target)
        expected = (int(target.output_shape[-1]), int(view.output_shape[0][-1]))
        if self.signatures.shape != expected:
            raise ValueError(
                f"`signatures` must have shape {expected} (target classes, feature dims); "
                f"received {self.signatures.shape}."
            )
        signatures = ops.convert_to_tensor(self.signatures.astype(np.float32))

        def loss(views, labels):
            features, logits = view(views, training=False)
            cosine = signature_cosine(
                ops.cast(features, "float32"), ops.take(signatures, labels, axis=0)
            )
            return margin_loss(logits, labels) + self.penalty_weight * ops.mean(cosine)

        return loss
