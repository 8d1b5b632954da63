"""The attack-evaluation protocol: an independent evaluation model scores reconstructions.

    evaluation_model, accuracy = train_evaluation_model(train, test, num_classes=10)
    evaluator = AttackEvaluator(evaluation_model, private_images, private_labels)
    scores = evaluator.evaluate(result.images, result.labels)   # aa1, aa5, knn, fid, ...

As in the literature (reference_spec §4): attack accuracy is the evaluation model's top-1 /
top-5 agreement with the attacked class; KNN distance is the mean over reconstructions of the
minimum squared L2 distance, in the evaluation model's feature space, to the private training
images of the attacked class; FID compares the successful reconstructions (evaluation top-1
correct) with the private training images, in the features of a pluggable extractor
(InceptionV3 from a local weights file, else the evaluation model's own features);
precision/recall/density/coverage use the same features. `TrapdoorDetector` scores how close
reconstructions sit to a Trap-MID model's trapdoor signatures (the paper's analysis).
"""

import os

import keras
import numpy as np

from trapmid_tf.metrics.accuracy import top_k_accuracy
from trapmid_tf.metrics.distance import min_squared_distances
from trapmid_tf.metrics.features import batched_predict
from trapmid_tf.metrics.fid import frechet_distance
from trapmid_tf.metrics.prdc import prdc, squared_knn_radii
from trapmid_tf.metrics.trapdoor import (
    detection_rate,
    detection_threshold,
    signature_similarity,
    trapdoor_signatures,
)
from trapmid_tf.models.features import feature_extractor, features_and_logits
from trapmid_tf.models.small_cnn import small_cnn
from trapmid_tf.seeding import seeded

EVALUATION_FEATURES = "evaluation_model"
PRDC_NEIGHBOURS = 3
# The judges an `AttackEvaluator` may score with beside its evaluation model, by name: the
# pixel judge (`trapmid_tf.metrics.pixel_judge`) and the held-out judge (a classifier trained
# on images no target trains on, `trapmid_tf.metrics.classifier_judge`).
JUDGE_NAMES = ("pixel", "held_out")
# The per-reconstruction outcomes `AttackEvaluator.evaluate` lists under `per_image`, by the
# name of the score each one averages (`<judge>_top1` only where that judge scored).
PER_IMAGE_METRICS = {"top1": "aa1", "top5": "aa5", "knn": "knn",
                     **{f"{name}_top1": f"{name}_aa1" for name in JUDGE_NAMES}}
# The scores of an attack that did not run against a target, `{NOT_APPLICABLE: why}`, stand
# in place of `evaluate`'s.
NOT_APPLICABLE = "not_applicable"


def train_evaluation_model(
    train,
    test,
    num_classes,
    build=None,
    epochs=10,
    batch_size=64,
    learning_rate=1e-3,
    seed=0,
    verbose=2,
):
    """Trains the evaluation model (the judge of reconstructions) with Adam and cross-entropy.

    Args:
        train: Unbatched dataset of `(image, label)`; all classes the attacks may target.
        test: Unbatched dataset of `(image, label)` to report the accuracy on.
        num_classes: Number of classes.
        build: Callable `(input_shape, num_classes) -> classifier` (logits, final Dense
            "logits"); use an architecture different from the target's. Default: a wide
            `small_cnn` (width 2, 256-d features) without the target's narrow bottleneck.
        epochs: Training epochs.
        batch_size: Batch size.
        learning_rate: Adam learning rate.
        seed: Seed of the weights and the shuffling.
        verbose: `fit` verbosity.

    Returns:
        `(model, test_accuracy)`.
    """
    with seeded(seed):
        input_shape = tuple(train.element_spec[0].shape)
        build = build or _default_evaluation_architecture
        model = build(input_shape, num_classes)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        size = int(train.cardinality())
        model.fit(
            train.cache().shuffle(size, seed=seed).batch(batch_size),
            epochs=epochs,
            shuffle=False,  # the dataset shuffles itself (Keras ignores, and warns about, True)
            verbose=verbose,
        )
        _, accuracy = model.evaluate(test.batch(256), verbose=0)
    return model, float(accuracy)


def _default_evaluation_architecture(input_shape, num_classes):
    return small_cnn(input_shape, num_classes, width=2, feature_dim=256)


class AttackEvaluator:
    """Scores reconstructions against the private training data with an evaluation model.

    Args:
        evaluation_model: Classifier images -> logits over all attackable classes, following
            the `trapmid_tf.models` convention (final Dense "logits"; its input is the feature).
        private_images: Float32 NHWC private training images in [0, 1].
        private_labels: Their int classes.
        fid_feature_model: Model images -> features for FID and PRDC (e.g.
            `inception_feature_extractor(path)`); None uses the evaluation
            model's features. `fid_features` names which one was used.
        batch_size: Images per forward pass.
        judges: `{name: judge}` of further judges, names among `JUDGE_NAMES`, each with
            `top1(images, labels)` -> 0/1 per image (`"pixel"`:
            `trapmid_tf.metrics.pixel_judge.PixelJudge`, `"held_out"`:
            `trapmid_tf.metrics.classifier_judge.ClassifierJudge`), or None for none.

    Raises:
        ValueError: If `judges` names a judge outside `JUDGE_NAMES`, or `private_labels`
            does not match `private_images`.

    Example:
        evaluator = AttackEvaluator(evaluation_model, images, labels)
        evaluator.evaluate(result.images, result.labels)["aa1"]
    """

    def __init__(
        self, evaluation_model, private_images, private_labels, fid_feature_model=None,
        batch_size=100, judges=None,
    ):
        self.judges = dict(judges or {})
        unknown = sorted(set(self.judges) - set(JUDGE_NAMES))
        if unknown:
            raise ValueError(
                f"`judges` must have names among {list(JUDGE_NAMES)}; received {unknown}."
            )
        self._features_and_logits = features_and_logits(evaluation_model)
        self.num_classes = int(evaluation_model.output_shape[-1])
        self.batch_size = int(batch_size)
        self.private_labels = np.asarray(private_labels, dtype=np.int32)
        if self.private_labels.shape != (len(private_images),):
            raise ValueError(
                f"`private_labels` must have shape ({len(private_images)},); received "
                f"{self.private_labels.shape}."
            )
        self.private_features, _ = self._predict(private_images)
        # PRDC's ball radii of the private images of each set of attacked classes, computed
        # once: every attack on every target compares with the same private images.
        self._private_radii = {}
        if fid_feature_model is None:
            self.fid_features = EVALUATION_FEATURES
            self._fid_model = feature_extractor(evaluation_model)
            self.private_fid_features = self.private_features
        else:
            self.fid_features = fid_feature_model.name
            self._fid_model = fid_feature_model
            self.private_fid_features = batched_predict(
                fid_feature_model, private_images, self.batch_size
            )

    def _predict(self, images):
        outputs = [
            self._features_and_logits.predict_on_batch(images[start : start + self.batch_size])
            for start in range(0, len(images), self.batch_size)
        ]
        features = np.concatenate([np.asarray(f) for f, _ in outputs])
        logits = np.concatenate([np.asarray(l) for _, l in outputs])
        return features, logits

    def predict(self, images):
        """The evaluation model's logits.

        Args:
            images: Float32 NHWC images in [0, 1].

        Returns:
            A numpy array `(images, classes)`.
        """
        return self._predict(np.asarray(images, dtype=np.float32))[1]

    def evaluate(self, images, labels):
        """Scores reconstructions of the classes `labels`.

        Args:
            images: Float32 NHWC reconstructions in [0, 1].
            labels: Int attacked class of each reconstruction.

        Returns:
            A dict: `aa1`, `aa5` (top-1/top-5 attack accuracy in [0, 1]; top-5 is top-k with
            k = min(5, classes)), `knn` (mean minimum squared feature distance to the private
            training images of the attacked class), `successes` (how many were top-1
            correct), `per_image` (lists, one entry per reconstruction: `top1`, `top5` as 0/1
            and `knn`, for confidence intervals), `feature_dims` (of the FID/PRDC features),
            and for two sets of reconstructions, the successful ones (no suffix) and all of
            them (suffix `_all`): `fid` (vs the private training images; None with fewer
            than 2 images), `precision`, `recall`, `density`, `coverage` (vs the private
            training images of the attacked classes; None when either set has too few
            images) and `fid_samples` (how many reconstructions entered; FID's covariance is
            singular when that is below `feature_dims`). Per judge of `judges` (e.g.
            "pixel") also `<name>_aa1` (`pixel_aa1`), its top-1, and
            `per_image["<name>_top1"]`, its 0/1 per reconstruction.
        """
        images = np.asarray(images, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int32)
        features, logits = self._predict(images)
        top5 = min(5, self.num_classes)
        ranked = np.argsort(-logits, axis=1)
        correct = ranked[:, 0] == labels
        in_top5 = np.any(ranked[:, :top5] == labels[:, None], axis=1)
        distances = min_squared_distances(
            features, labels, self.private_features, self.private_labels
        )
        fid_features = (
            features
            if self.fid_features == EVALUATION_FEATURES
            else batched_predict(self._fid_model, images, self.batch_size)
        )
        scores = {
            "aa1": top_k_accuracy(logits, labels, 1),
            "aa5": top_k_accuracy(logits, labels, top5),
            "knn": float(distances.mean()),
            "successes": int(correct.sum()),
            "per_image": {
                "top1": correct.astype(int).tolist(),
                "top5": in_top5.astype(int).tolist(),
                "knn": distances.tolist(),
            },
            "feature_dims": int(fid_features.shape[1]),
        }
        for name, judge in self.judges.items():
            judged = np.asarray(judge.top1(images, labels))
            scores[f"{name}_aa1"] = float(judged.mean())
            scores["per_image"][f"{name}_top1"] = judged.tolist()
        attacked_classes = frozenset(labels.tolist())
        attacked = self.private_fid_features[np.isin(self.private_labels, labels)]
        for suffix, chosen in (("", correct), ("_all", np.ones_like(correct))):
            scores.update(
                {
                    key + suffix: value
                    for key, value in self._distribution_scores(
                        fid_features[chosen], attacked, attacked_classes
                    ).items()
                }
            )
        return {key: _plain(value) for key, value in scores.items()}

    def _distribution_scores(self, fake, attacked_real, attacked_classes):
        """FID against all private images and PRDC against the attacked classes' images
        (`attacked_real`, the private images of `attacked_classes`)."""
        scores = {
            "fid": frechet_distance(fake, self.private_fid_features) if len(fake) >= 2 else None,
            "fid_samples": len(fake),
        }
        enough = min(len(attacked_real), len(fake)) > PRDC_NEIGHBOURS
        if not enough:
            scores.update(dict.fromkeys(("precision", "recall", "density", "coverage")))
            return scores
        if attacked_classes not in self._private_radii:
            self._private_radii[attacked_classes] = squared_knn_radii(
                np.asarray(attacked_real, dtype=np.float64), PRDC_NEIGHBOURS
            )
        scores.update(prdc(attacked_real, fake, PRDC_NEIGHBOURS,
                           self._private_radii[attacked_classes]))
        return scores


def _plain(value):
    """JSON-ready: None, int, dict (already plain) or float."""
    if value is None or isinstance(value, dict):
        return value
    return int(value) if isinstance(value, (int, np.integer)) else float(value)


class TrapdoorDetector:
    """Trapdoor-signature similarity of inputs to a Trap-MID model (the paper's analysis).

    The signature of class y is the target's mean penultimate feature over clean images
    blended with trigger y; an input's score is the cosine similarity between its feature
    and the signature of its predicted class; the threshold is the 95th percentile of the
    scores of the clean images.

    Args:
        target: The Trap-MID-trained classifier (exported, without triggers).
        triggers: Float32 array `(num_classes, height, width, channels)` in [0, 1].
        alpha: Blend weight the triggers were trained with.
        clean_images: Float32 NHWC clean training images; each is blended with every
            trigger (`(1 - alpha) x + alpha t_y`, as `BlendTrigger`) for the signatures.
        batch_size: Images per forward pass.
    """

    def __init__(self, target, triggers, alpha, clean_images, batch_size=100):
        triggers = np.asarray(triggers, dtype=np.float32)
        clean_images = np.asarray(clean_images, dtype=np.float32)
        num_classes = int(target.output_shape[-1])
        height, width, channels = clean_images.shape[1:]
        if triggers.shape not in {(num_classes, height, width, c) for c in (1, channels)}:
            raise ValueError(
                f"`triggers` must have shape {(num_classes, height, width, channels)} (one per "
                f"class of `target`; 1 channel allowed); received {triggers.shape}."
            )
        self.batch_size = int(batch_size)
        self._features = feature_extractor(target)
        self._target = target
        target_labels = np.repeat(np.arange(num_classes, dtype=np.int32), len(clean_images))
        triggered = (1.0 - alpha) * clean_images[None] + alpha * triggers[:, None]
        triggered = triggered.reshape((-1, height, width, channels))
        self.signatures = trapdoor_signatures(
            self._features, triggered, target_labels, num_classes, self.batch_size
        )
        self.clean_scores = self.scores(clean_images)
        self.threshold = detection_threshold(self.clean_scores, 95.0)

    @classmethod
    def from_file(cls, target, trigger_path, clean_images, batch_size=100):
        """Builds the detector from a `TrapMIDModel.save_triggers` file (triggers, alpha).

        Args:
            target, clean_images, batch_size: As in the constructor.
            trigger_path: The `.npz` file.

        Returns:
            A `TrapdoorDetector`.

        Raises:
            FileNotFoundError: If `trigger_path` does not exist.
        """
        if not os.path.isfile(trigger_path):
            raise FileNotFoundError(f"trigger file {trigger_path!r} does not exist.")
        with np.load(trigger_path) as stored:
            triggers, alpha = stored["triggers"], float(stored["alpha"])
        return cls(target, triggers, alpha, clean_images, batch_size)

    def scores(self, images):
        """Cosine similarity of each image's feature to its predicted class's signature.

        Args:
            images: Float32 NHWC images in [0, 1].

        Returns:
            A float64 array `(images,)` in [-1, 1].
        """
        images = np.asarray(images, dtype=np.float32)
        features = batched_predict(self._features, images, self.batch_size)
        predicted = np.argmax(batched_predict(self._target, images, self.batch_size), 1)
        return signature_similarity(features, predicted, self.signatures)

    def evaluate(self, images):
        """Mean trapdoor similarity and detection rate of `images`.

        Args:
            images: Float32 NHWC images in [0, 1], e.g. reconstructions.

        Returns:
            `{"trapdoor_similarity": mean score, "trapdoor_detection": fraction above the
            threshold}`.
        """
        scores = self.scores(images)
        return {
            "trapdoor_similarity": float(np.mean(scores)),
            "trapdoor_detection": detection_rate(scores, self.threshold),
        }
