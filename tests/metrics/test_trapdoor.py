import keras
import numpy as np
import pytest

from trapmid_tf.metrics.trapdoor import (
    class_signatures,
    detection_rate,
    detection_threshold,
    signature_similarity,
    trapdoor_signatures,
)

FEATURES = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [2.0, 2.0]])
LABELS = np.array([0, 0, 1, 1])
SIGNATURES = np.array([[2.0, 1.0], [1.0, 3.0]])  # class means of FEATURES


def test_class_signatures_are_class_means():
    np.testing.assert_allclose(class_signatures(FEATURES, LABELS, 2), SIGNATURES)


def test_class_signatures_rejects_class_without_sample():
    with pytest.raises(ValueError, match=r"no sample for classes \[2\]"):
        class_signatures(FEATURES, LABELS, 3)


def test_trapdoor_signatures_run_feature_model_in_batches():
    flatten = keras.Sequential([keras.Input((1, 1, 2)), keras.layers.Flatten()])
    images = FEATURES.reshape(4, 1, 1, 2).astype("float32")
    signatures = trapdoor_signatures(flatten, images, LABELS, num_classes=2, batch_size=3)
    np.testing.assert_allclose(signatures, SIGNATURES)


def test_signature_similarity_by_hand():
    signatures = np.array([[1.0, 0.0], [1.0, 1.0]])
    features = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0], [-1.0, -1.0], [3.0, 4.0], [0.0, 0.0]])
    labels = np.array([0, 0, 1, 1, 0, 1])
    np.testing.assert_allclose(
        signature_similarity(features, labels, signatures), [1.0, 0.0, 1.0, -1.0, 0.6, 0.0]
    )


def test_signature_similarity_rejects_label_without_signature():
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 2\)"):
        signature_similarity(FEATURES, np.array([0, 1, 2, 0]), SIGNATURES)


def test_detection_threshold_is_percentile():
    scores = np.arange(11.0)  # linear interpolation: rank 0.95 * 10 = 9.5
    assert detection_threshold(scores) == pytest.approx(9.5)
    assert detection_threshold(scores, percentile=50) == pytest.approx(5.0)


def test_detection_threshold_rejects_bad_percentile():
    with pytest.raises(ValueError, match="`percentile` must be in"):
        detection_threshold(np.arange(3.0), percentile=101)


def test_detection_rate_counts_strictly_above():
    assert detection_rate(np.array([0.1, 0.5, 0.5, 0.9]), 0.5) == pytest.approx(0.25)


@pytest.mark.parametrize(
    "scores, threshold, match",
    [(np.array([]), 0.5, "non-empty"), (np.array([0.1]), np.nan, "`threshold`")],
)
def test_detection_rate_rejects_bad_input(scores, threshold, match):
    with pytest.raises(ValueError, match=match):
        detection_rate(scores, threshold)
