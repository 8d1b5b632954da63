import numpy as np
import pytest

from trapmid_tf.metrics.prdc import prdc, squared_knn_radii


def test_identical_sets():
    features = np.random.default_rng(0).normal(size=(40, 3))
    result = prdc(features, features.copy(), nearest_k=3)
    assert result["precision"] == 1.0
    assert result["recall"] == 1.0
    assert result["coverage"] == 1.0
    assert result["density"] == pytest.approx(1.0, abs=0.02)


def test_far_away_fakes_score_zero():
    real = np.random.default_rng(1).normal(size=(30, 2))
    fake = np.random.default_rng(2).normal(size=(30, 2)) + 1000.0
    assert prdc(real, fake, nearest_k=3) == {
        "precision": 0.0,
        "recall": 0.0,
        "density": 0.0,
        "coverage": 0.0,
    }


def test_one_dimensional_example_by_hand():
    # k = 1. Real balls (open intervals): 0:(-1,1), 1:(0,2), 3:(1,5), 8:(3,13).
    # Fake balls: 0.5:(-1.9,2.9), 2.9:(0.5,5.3), 30:(29,31), 31:(30,32).
    real = np.array([[0.0], [1.0], [3.0], [8.0]])
    fake = np.array([[0.5], [2.9], [30.0], [31.0]])
    result = prdc(real, fake, nearest_k=1)
    # Fakes in real balls: 0.5 in 2, 2.9 in 1, 30 and 31 in none.
    assert result["precision"] == pytest.approx(2 / 4)
    assert result["density"] == pytest.approx(3 / (1 * 4))
    # Real balls holding a fake: those of 0, 1 and 3, not 8.
    assert result["coverage"] == pytest.approx(3 / 4)
    # Reals in fake balls: 0, 1, 3; not 8.
    assert result["recall"] == pytest.approx(3 / 4)


def test_point_on_ball_boundary_is_outside():
    # k = 1: every real ball has radius 1; the fake at 3 lies on the ball of 2.
    real = np.array([[0.0], [1.0], [2.0]])
    fake = np.array([[3.0], [10.0]])
    assert prdc(real, fake, nearest_k=1)["precision"] == 0.0


@pytest.mark.parametrize(
    "real, fake, k, match",
    [
        (np.zeros((3, 2)), np.zeros((5, 2)), 3, "`real_features`.*at least 4"),
        (np.zeros((5, 2)), np.zeros((2, 2)), 3, "`fake_features`.*at least 4"),
        (np.zeros((5, 2)), np.zeros((5, 3)), 3, "same feature dims"),
        (np.zeros((5, 2)), np.zeros((5, 2)), 0, "`nearest_k`"),
    ],
)
def test_rejects_bad_input(real, fake, k, match):
    with pytest.raises(ValueError, match=match):
        prdc(real, fake, nearest_k=k)


def test_given_real_radii_give_the_same_scores_and_are_checked():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(40, 3)), rng.normal(0.5, 1.0, size=(12, 3))
    radii = squared_knn_radii(real, 2)
    # By hand for one sample: its 2nd nearest other sample's squared distance.
    others = np.sort(np.sum((real[1:] - real[0]) ** 2, axis=1))
    assert radii[0] == pytest.approx(others[1], rel=1e-12)
    assert prdc(real, fake, 2, real_radii=radii) == prdc(real, fake, 2)
    with pytest.raises(ValueError, match=r"`real_radii` must have one entry per real sample"):
        prdc(real, fake, 2, real_radii=radii[:-1])
