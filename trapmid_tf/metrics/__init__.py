"""Evaluation metrics: attack accuracy, KNN distance, FID, PRDC, trapdoor signatures, and the
evaluation protocol that applies them (`AttackEvaluator`, `TrapdoorDetector`, the pixel-space
`PixelJudge`, the learned `ClassifierJudge`), with intervals over training seeds and paired,
Holm-corrected verdicts (`seed_mean`, `compare`, `decide`)."""

from trapmid_tf.metrics.accuracy import top_k_accuracy
from trapmid_tf.metrics.classifier_judge import ClassifierJudge
from trapmid_tf.metrics.distance import knn_distance
from trapmid_tf.metrics.evaluator import AttackEvaluator, TrapdoorDetector, train_evaluation_model
from trapmid_tf.metrics.features import batched_predict
from trapmid_tf.metrics.fid import fid, frechet_distance, inception_feature_extractor
from trapmid_tf.metrics.intervals import (
    Comparison,
    Estimate,
    Verdict,
    clopper_pearson,
    compare,
    decide,
    holm,
    seed_mean,
)
from trapmid_tf.metrics.leakage import class_specific_part, trigger_leakage
from trapmid_tf.metrics.pixel_judge import PixelJudge
from trapmid_tf.metrics.prdc import prdc
from trapmid_tf.metrics.trapdoor import (
    class_signatures,
    detection_rate,
    detection_threshold,
    signature_similarity,
    trapdoor_signatures,
)

__all__ = [
    "AttackEvaluator",
    "ClassifierJudge",
    "Comparison",
    "Estimate",
    "PixelJudge",
    "TrapdoorDetector",
    "Verdict",
    "batched_predict",
    "class_signatures",
    "class_specific_part",
    "clopper_pearson",
    "compare",
    "decide",
    "detection_rate",
    "detection_threshold",
    "fid",
    "frechet_distance",
    "holm",
    "inception_feature_extractor",
    "knn_distance",
    "prdc",
    "seed_mean",
    "signature_similarity",
    "top_k_accuracy",
    "train_evaluation_model",
    "trapdoor_signatures",
    "trigger_leakage",
]
