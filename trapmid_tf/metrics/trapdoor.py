"""Trapdoor-signature analysis: how close samples' features are to the trapdoor features.

The paper's trapdoor-detection analysis (paper digest 3.7): the signature of class y is
the mean penultimate feature of triggered images targeted at y; a sample's score is the
cosine similarity between its feature and the signature of its (predicted) class; the
threshold is the 95th percentile of the scores of clean training images. A high rate of
above-threshold scores among MI reconstructions shows the attack was drawn to the
triggers. Typical use:

    signatures = trapdoor_signatures(features_model, triggered_images, target_labels, 5)
    threshold = detection_threshold(signature_similarity(clean_feats, clean_preds, signatures))
    rate = detection_rate(signature_similarity(attack_feats, attack_preds, signatures), threshold)
"""

import numpy as np

from trapmid_tf.metrics.features import batched_predict
from trapmid_tf.validation import (
    as_feature_matrix,
    as_labels,
    as_score_vector,
    check_positive_int,
    check_same_dims,
)


def class_signatures(features, labels, num_classes):
    """Mean feature of each class.

    Args:
        features: Features, shape `(samples, dims)`.
        labels: Integer class of each sample, shape `(samples,)`, in `[0, num_classes)`.
        num_classes: Number of classes; every class needs at least one sample.

    Returns:
        A float64 array of shape `(num_classes, dims)`; row y is the mean of class y.

    Raises:
        ValueError: If shapes disagree, a label is out of range, or a class has no sample.
    """
    features = as_feature_matrix(features, "features")
    num_classes = check_positive_int("num_classes", num_classes)
    labels = as_labels(labels, "labels", features.shape[0], num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    if np.any(counts == 0):
        raise ValueError(
            "`labels` must contain every class in [0, num_classes); received no sample for "
            f"classes {np.flatnonzero(counts == 0).tolist()}."
        )
    sums = np.zeros((num_classes, features.shape[1]))
    np.add.at(sums, labels, features)
    return sums / counts[:, None]


def trapdoor_signatures(
    feature_model, triggered_images, target_labels, num_classes, batch_size=100
):
    """Class-wise trapdoor signatures: mean feature of triggered images per target class.

    Args:
        feature_model: Keras model mapping images to penultimate features `(batch, dims)`.
        triggered_images: Float32 NHWC images in [0, 1] with a class trigger blended in.
        target_labels: Integer class whose trigger each image carries, shape `(samples,)`.
        num_classes: Number of classes; every class needs at least one triggered image.
        batch_size: Images per forward pass.

    Returns:
        A float64 array of shape `(num_classes, dims)`.

    Raises:
        ValueError: As `batched_predict` and `class_signatures`.
    """
    features = batched_predict(feature_model, triggered_images, batch_size)
    return class_signatures(features, target_labels, num_classes)


def signature_similarity(features, labels, signatures):
    """Cosine similarity between each sample's feature and the signature of its class.

    Args:
        features: Features, shape `(samples, dims)`.
        labels: Integer class per sample whose signature to compare with, shape
            `(samples,)`; the paper uses the model's predicted class.
        signatures: Class signatures, shape `(num_classes, dims)`.

    Returns:
        A float64 array of shape `(samples,)` in [-1, 1]; 0 where a vector is all zeros.

    Raises:
        ValueError: If shapes disagree or a label has no signature.
    """
    features = as_feature_matrix(features, "features")
    signatures = as_feature_matrix(signatures, "signatures")
    check_same_dims(features, "features", signatures, "signatures")
    labels = as_labels(labels, "labels", features.shape[0], signatures.shape[0])
    selected = signatures[labels]
    dots = np.sum(features * selected, axis=1)
    norms = np.linalg.norm(features, axis=1) * np.linalg.norm(selected, axis=1)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def detection_threshold(clean_scores, percentile=95.0):
    """Score threshold: the given percentile of the scores of clean samples.

    Args:
        clean_scores: Signature similarities of clean (untriggered) samples, 1-D.
        percentile: Percentile in [0, 100]; numpy's linear interpolation between samples.

    Returns:
        The threshold as a python float.

    Raises:
        ValueError: If `clean_scores` is not a non-empty finite vector or `percentile` is
            outside [0, 100].
    """
    clean_scores = as_score_vector(clean_scores, "clean_scores")
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"`percentile` must be in [0, 100]; received {percentile!r}.")
    return float(np.percentile(clean_scores, percentile))


def detection_rate(scores, threshold):
    """Fraction of scores strictly above `threshold` (samples flagged as trapdoor-like).

    Args:
        scores: Signature similarities, 1-D.
        threshold: Threshold, e.g. from `detection_threshold`.

    Returns:
        The rate as a python float in [0, 1].

    Raises:
        ValueError: If `scores` is not a non-empty finite vector or `threshold` is not finite.
    """
    scores = as_score_vector(scores, "scores")
    if not np.isfinite(threshold):
        raise ValueError(f"`threshold` must be a finite number; received {threshold!r}.")
    return float(np.mean(scores > threshold))
