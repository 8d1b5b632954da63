import numpy as np
import pytest

from trapmid_tf.metrics import distance
from trapmid_tf.metrics.distance import knn_distance, min_squared_distances

REFERENCES = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0]])
REFERENCE_LABELS = np.array([0, 0, 1])
QUERIES = np.array([[1.0, 1.0], [3.0, 0.0], [10.0, 12.0], [0.0, 0.0]])
QUERY_LABELS = np.array([0, 0, 1, 1])
# (1,1)->(0,0) or (2,0): 2; (3,0)->(2,0): 1; (10,12)->(10,10): 4;
# (0,0) of class 1 -> (10,10): 200 (the class-0 reference at distance 0 does not count).
EXPECTED_MINIMA = np.array([2.0, 1.0, 4.0, 200.0])


def test_min_squared_distances_by_hand():
    np.testing.assert_allclose(
        min_squared_distances(QUERIES, QUERY_LABELS, REFERENCES, REFERENCE_LABELS), EXPECTED_MINIMA
    )


def test_knn_distance_is_mean_of_minima():
    assert knn_distance(QUERIES, QUERY_LABELS, REFERENCES, REFERENCE_LABELS) == pytest.approx(51.75)


def test_small_blocks_match_brute_force(monkeypatch):
    monkeypatch.setattr(distance, "_MAX_BLOCK_ENTRIES", 5)
    rng = np.random.default_rng(1)
    queries, references = rng.normal(size=(13, 4)), rng.normal(size=(17, 4))
    query_labels, reference_labels = rng.integers(0, 3, 13), np.arange(17) % 3
    squared = ((queries[:, None, :] - references[None, :, :]) ** 2).sum(-1)
    same_label = query_labels[:, None] == reference_labels[None, :]
    expected = np.where(same_label, squared, np.inf).min(axis=1)
    np.testing.assert_allclose(
        min_squared_distances(queries, query_labels, references, reference_labels), expected
    )


def test_rejects_label_without_reference():
    with pytest.raises(ValueError, match=r"without one: \[2\]"):
        knn_distance(QUERIES, np.array([0, 0, 2, 1]), REFERENCES, REFERENCE_LABELS)


def test_rejects_mismatched_dims():
    with pytest.raises(ValueError, match="same feature dims"):
        knn_distance(QUERIES, QUERY_LABELS, np.zeros((3, 3)), REFERENCE_LABELS)
