import numpy as np
import pytest

from trapmid_tf.metrics.accuracy import top_k_accuracy

# Row 0: class order 3 > 1 > 5 > 2 > 0 > 4.  Row 1: 0 > 1 > ... > 5.
# Row 2: class 3 highest, the other five tie at 0.
LOGITS = np.array(
    [
        [0.1, 0.5, 0.2, 0.9, 0.0, 0.3],
        [2.0, 1.0, 0.0, -1.0, -2.0, -3.0],
        [0.0, 0.0, 0.0, 1.0, 0.0, 0.0],
    ]
)
LABELS = np.array([3, 5, 2], dtype=np.int32)


@pytest.mark.parametrize(
    "k, expected",
    [
        (1, 1 / 3),  # only row 0 (its label scores highest)
        (2, 2 / 3),  # row 2's label ties for second place: counted correct
        (5, 2 / 3),  # row 1's label is last of six
        (6, 1.0),
    ],
)
def test_top_k_on_hand_ranked_logits(k, expected):
    assert top_k_accuracy(LOGITS, LABELS, k=k) == pytest.approx(expected)


def test_all_tied_scores_count_as_correct():
    assert top_k_accuracy(np.zeros((4, 3)), np.array([0, 1, 2, 1])) == 1.0


def test_matches_argsort_without_ties():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 10))
    labels = rng.integers(0, 10, size=50)
    for k in (1, 3, 5):
        top = np.argsort(-logits, axis=1)[:, :k]
        expected = np.mean([label in row for label, row in zip(labels, top)])
        assert top_k_accuracy(logits, labels, k=k) == pytest.approx(expected)


def test_probabilities_give_same_result_as_logits():
    probs = np.exp(LOGITS) / np.exp(LOGITS).sum(axis=1, keepdims=True)
    assert top_k_accuracy(probs, LABELS, k=2) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "scores, labels, k, match",
    [
        (LOGITS, LABELS, 0, "`k`"),
        (LOGITS, LABELS, 7, "`k` must be <= the number of classes"),
        (LOGITS, LABELS, 1.0, "`k`"),
        (LOGITS, LABELS, True, "`k`"),
        (LOGITS, LABELS[:2], 1, "`labels` must have shape"),
        (LOGITS, np.array([0, 6, 1]), 1, r"`labels` must lie in \[0, 6\)"),
        (LOGITS, np.array([0.0, 1.0, 2.0]), 1, "integer"),
        (LOGITS[0], LABELS[:1], 1, "`scores` must be a 2-D"),
        (np.full((1, 3), np.nan), np.array([0]), 1, "finite"),
    ],
)
def test_rejects_bad_input(scores, labels, k, match):
    with pytest.raises(ValueError, match=match):
        top_k_accuracy(scores, labels, k=k)
