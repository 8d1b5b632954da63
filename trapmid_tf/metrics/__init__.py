"""Evaluation metrics: attack accuracy, KNN distance, FID, PRDC, trapdoor signatures, and the
evaluation protocol that applies them (`AttackEvaluator`, `TrapdoorDetector`), with bootstrap
intervals and verdicts over seeds and reconstructions (`bootstrap_mean`, `verdict`)."""

from trapmid_tf.metrics.accuracy import top_k_accuracy
from trapmid_tf.metrics.distance import knn_distance, min_squared_distances
from trapmid_tf.metrics.evaluator import AttackEvaluator, TrapdoorDetector, train_evaluation_model
from trapmid_tf.metrics.features import batched_predict
from trapmid_tf.metrics.fid import fid, frechet_distance, inception_feature_extractor
from trapmid_tf.metrics.intervals import (
    Estimate,
    Verdict,
    bootstrap_difference,
    bootstrap_mean,
    bootstrap_ratio,
    verdict,
)
from trapmid_tf.metrics.leakage import class_specific_part, trigger_leakage
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
    "Estimate",
    "TrapdoorDetector",
    "Verdict",
    "batched_predict",
    "bootstrap_difference",
    "bootstrap_mean",
    "bootstrap_ratio",
    "class_signatures",
    "class_specific_part",
    "detection_rate",
    "detection_threshold",
    "fid",
    "frechet_distance",
    "inception_feature_extractor",
    "knn_distance",
    "min_squared_distances",
    "prdc",
    "signature_similarity",
    "top_k_accuracy",
    "train_evaluation_model",
    "trapdoor_signatures",
    "trigger_leakage",
    "verdict",
]
