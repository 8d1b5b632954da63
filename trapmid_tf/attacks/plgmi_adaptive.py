"""PLG-MI++: PLG-MI that knows the defense and steers its reconstructions away from the trapdoor.

Trap-MID plants a trapdoor per class: triggered inputs of class y share a feature direction, the
class's trapdoor signature (the target's mean penultimate feature over images blended with
trigger y, `trapmid_tf.metrics.trapdoor`). MI attacks are drawn to it: their reconstructions sit
near the signature (paper digest 3.7). The adaptive attack (paper Table 4, "PLG-MI++") adds to
PLG-MI's margin loss a penalty on the cosine similarity between the target feature of each
augmented view of `G(z, y)` and the signature of the attacked class y:

    L = sum over the two views of mean_i [margin(T(view_i), y_i) + w * cos(f_T(view_i), s_{y_i})]

the mean taken, as PLG-MI's, over one restart's batch of 60 identities (`PLGMIAttack`).

Two knowledge levels:
- the attacker holds the defender's triggers (worst case): `defender_signatures` computes the
  signatures exactly as the defender does (`TrapdoorDetector`);
- the attacker only has the model: pass `signatures=None` and its public images, and `invert`
  first runs plain PLG-MI, estimates each class's signature as the mean target feature of
  those reconstructions minus the mean feature of the class's top-n public images
  (`estimate_signatures`), then runs the penalised inversion.

At full strength the generator searched is itself trained with the same penalty: the PLG-MI
prior's `signatures=` option (`trapmid_tf.attacks.plgmi_prior`) adds it to the generator loss
and to the top-n selection. The penalty is `trapmid_tf.attacks.trapdoor_penalty`'s.
"""

import numpy as np
from keras import ops

from trapmid_tf.attacks.inversion import REFERENCE_IDENTITIES_PER_BATCH
from trapmid_tf.attacks.plgmi import PLGMIAttack
from trapmid_tf.attacks.plgmi_prior import margins, most_confident
from trapmid_tf.attacks.trapdoor_penalty import checked_signatures, class_signature_cosine
from trapmid_tf.metrics.evaluator import TrapdoorDetector
from trapmid_tf.metrics.features import batched_predict
from trapmid_tf.metrics.trapdoor import class_signatures
from trapmid_tf.models.features import feature_extractor, features_and_logits
from trapmid_tf.validation import (
    as_feature_matrix,
    as_image_batch,
    check_non_negative_float,
    check_positive_int,
)


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


def estimate_signatures(target, images, labels, public_images, top_n=30, batch_size=100):
    """The model-only attacker's signatures, per class: what its reconstructions add to the class.

    The estimate of class c is the mean target feature of the reconstructions of c minus the
    mean target feature of c's top-n public images (the `top_n` the target is surest are c,
    `most_confident`): the part of the reconstructions' feature that the class's most
    convincing natural images do not have, i.e. the trapdoor's pull. The mean feature of the
    reconstructions alone is mostly the class itself; penalising it pushed reconstructions of
    an unprotected model out of their class (docs/adaptive_attacks.md). This definition is
    our choice: the paper names PLG-MI++ and its knowledge of the signatures, not how a
    model-only attacker would estimate them.

    Args:
        target: The attacked classifier (features convention of `trapmid_tf.models.features`).
        images: Float32 NHWC reconstructions in [0, 1], e.g. a plain PLG-MI result.
        labels: Int attacked class of each reconstruction.
        public_images: Float32 NHWC public images in [0, 1] (the attacker's).
        top_n: Public images per class whose mean feature is subtracted (PLG-MI's top-n).
        batch_size: Images per forward pass.

    Returns:
        A float64 array `(target classes, feature_dims)`; rows of classes without
        reconstructions are zero (their penalty is 0).

    Raises:
        ValueError: If `labels` does not match `images` or holds a class outside the
            target's, or `public_images` or `top_n` is bad.
    """
    num_classes = int(target.output_shape[-1])
    public_images = as_image_batch("public_images", public_images)
    check_positive_int("top_n", top_n)
    if top_n > len(public_images):
        raise ValueError(
            f"`top_n` must be at most the number of public images, {len(public_images)}; "
            f"received {top_n}."
        )
    labels = np.asarray(labels)
    extractor = feature_extractor(target)
    features = batched_predict(extractor, images, batch_size)
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
    top = most_confident(target, public_images, top_n, batch_size)[present]
    public_features = batched_predict(extractor, public_images[top.reshape(-1)], batch_size)
    public_means = public_features.astype(np.float64).reshape(len(present), top_n, -1).mean(1)
    signatures = np.zeros((num_classes, features.shape[1]))
    signatures[present] = class_signatures(features, local, len(present)) - public_means
    return signatures


class PLGMIAdaptiveAttack(PLGMIAttack):
    """PLG-MI++: PLG-MI with a penalty on the trapdoor-signature similarity of each view.

    The loss of each view is PLG-MI's margin plus `penalty_weight * cos(f_T(view), s_y)`,
    where `f_T` is the target's penultimate feature of the augmented view and `s_y` the
    signature of the attacked class. Everything else (latents, augmentation, the weighting of
    the views as in the reference's batches, Adam) is `PLGMIAttack`.

    Args:
        generator: Conditional generator `[z, labels] -> images` in [0, 1] (PLG-MI's prior).
        signatures: `(num_classes, feature_dims)` trapdoor signatures of the target (e.g.
            `defender_signatures`, or `estimate_signatures` of an earlier PLG-MI result); None
            to estimate them inside `invert` from a first, plain PLG-MI round with the same
            budget and seed and `public_images` (the model-only attacker; twice the cost).
        penalty_weight: Weight w of the cosine penalty, >= 0 (0 is plain PLG-MI). The margin
            is in logit units and the cosine in [-1, 1]; sweep it (e.g. 0.3, 1, 3, 10).
        iterations, learning_rate, augment: As `PLGMIAttack`.
        public_images: The attacker's float32 NHWC public images in [0, 1]; needed (and only
            taken) with `signatures=None`, for `estimate_signatures`.
        top_n: Public images per class in `estimate_signatures` (PLG-MI's top-n).
        chunk_size, jit_compile, identities_per_batch: As `PLGMIAttack`.

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
        public_images=None,
        top_n=30,
        chunk_size=100,
        jit_compile=False,
        identities_per_batch=REFERENCE_IDENTITIES_PER_BATCH,
    ):
        super().__init__(
            generator, iterations, learning_rate, augment,
            chunk_size=chunk_size, jit_compile=jit_compile,
            identities_per_batch=identities_per_batch,
        )
        check_non_negative_float("penalty_weight", penalty_weight)
        check_positive_int("top_n", top_n)
        if (signatures is None) == (public_images is None):
            given = "both" if signatures is not None else "neither"
            raise ValueError(
                "PLG-MI++ needs exactly one of `signatures` (given) and `public_images` (to "
                f"estimate them); received {given}."
            )
        self.penalty_weight = float(penalty_weight)
        self.signatures = (
            None if signatures is None else as_feature_matrix(signatures, "signatures")
        )
        self.public_images = (
            None if public_images is None else as_image_batch("public_images", public_images)
        )
        self.top_n = int(top_n)

    def invert(self, target, classes, per_class=5, seed=0, verbose=1):
        """Reconstructs `per_class` images of each class, penalised towards leaving the trapdoor.

        With `signatures=None`, first runs plain PLG-MI (same budget, classes, restarts and
        seed), estimates the signatures from its reconstructions and the public images
        (`estimate_signatures`), then runs PLG-MI++.

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
            identities_per_batch=self.identities_per_batch,
        ).invert(target, classes, per_class, seed, verbose)
        estimated = PLGMIAdaptiveAttack(
            self.generator,
            estimate_signatures(
                target, plain.images, plain.labels, self.public_images, self.top_n
            ),
            self.penalty_weight,
            self.iterations,
            self.learning_rate,
            self.augment,
            chunk_size=self.chunk_size,
            jit_compile=self.jit_compile,
            identities_per_batch=self.identities_per_batch,
        )
        return estimated.invert(target, classes, per_class, seed, verbose)

    def view_loss(self, target):
        """Returns `(views, labels) -> margin + penalty_weight * signature cosine`, per view.

        Args:
            target: The attacked classifier (features convention of
                `trapmid_tf.models.features`).

        Returns:
            The loss callable, `(views,)` losses.

        Raises:
            ValueError: If the signatures do not have one row per target class and the
                target's feature size.
        """
        view = features_and_logits(target)
        signatures = ops.convert_to_tensor(checked_signatures(self.signatures, target))

        def loss(views, labels):
            features, logits = view(views, training=False)
            cosine = class_signature_cosine(features, labels, signatures)
            return margins(logits, labels) + self.penalty_weight * cosine

        return loss
