"""Tests for Neural-Cleanse-style trigger recovery and its comparison with the true triggers."""

import numpy as np
import pytest

from tests.attacks.test_inversion import (
    IMAGE_SHAPE,
    check_result,
    softmax_cross_entropy,
    tiny_classifier,
    to_numpy,
)
from tests.attacks.test_mi_face import QUADRANTS, quadrant_masks, quadrant_target
from trapmid_tf.attacks.trigger_recovery import (
    TriggerRecoveryAttack,
    compare_with_triggers,
    recovery_objective,
    trigger_cosine_matrix,
)


def numpy_tiny_classifier(model, images):
    """The tiny classifier's logits from its weights: tanh(x W1 + b1) W2 + b2."""
    w1, b1 = model.get_layer("feature").get_weights()
    w2, b2 = model.get_layer("logits").get_weights()
    flat = images.reshape(len(images), -1).astype(np.float64)
    return np.tanh(flat @ w1 + b1) @ w2 + b2


def numpy_total_variation(images):
    vertical = np.abs(images[:, 1:] - images[:, :-1]).mean(axis=(1, 2, 3))
    horizontal = np.abs(images[:, :, 1:] - images[:, :, :-1]).mean(axis=(1, 2, 3))
    return vertical + horizontal


@pytest.mark.parametrize("prior", ["tv", "l1"])
def test_objective_matches_numpy(prior):
    target = tiny_classifier()
    rng = np.random.default_rng(0)
    patterns = rng.random((2, *IMAGE_SHAPE)).astype(np.float32)
    images = rng.random((3, *IMAGE_SHAPE)).astype(np.float32)
    labels = np.array([2, 0], np.int32)
    alpha, weight = 0.3, 0.7
    value = to_numpy(recovery_objective(target, patterns, labels, images, alpha, prior, weight))
    expected = []
    for pattern, label in zip(patterns.astype(np.float64), labels):
        blended = (1 - alpha) * images + alpha * pattern
        logits = numpy_tiny_classifier(target, blended)
        cross_entropy = softmax_cross_entropy(logits, np.full(len(images), label)).mean()
        regulariser = (
            numpy_total_variation(pattern[None])[0] if prior == "tv" else np.abs(pattern).mean()
        )
        expected.append(cross_entropy + weight * regulariser)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)


def test_recovers_the_quadrant_of_each_class():
    # logit_c = sum of quadrant c: the best pattern for class c is quadrant c bright, the rest
    # dark, i.e. the mask of quadrant c.
    rng = np.random.default_rng(1)
    public = rng.random((8, *IMAGE_SHAPE)).astype(np.float32)
    attack = TriggerRecoveryAttack(
        public, alpha=0.5, prior_weight=0.01, iterations=150, batch_size=4, chunk_size=50
    )
    classes = [0, 1, 2, 3]
    result = attack.invert(quadrant_target(), classes, per_class=2, seed=0, verbose=0)
    check_result(result, classes, 2, IMAGE_SHAPE)
    np.testing.assert_allclose(result.images, 1 / (1 + np.exp(-result.latents)), atol=1e-6)
    quadrant_means = np.stack(
        [result.images[:, rows, columns].mean(axis=(1, 2, 3)) for rows, columns in QUADRANTS],
        axis=1,
    )
    np.testing.assert_array_equal(np.argmax(quadrant_means, axis=1), result.labels)
    scores = compare_with_triggers(result.images, result.labels, quadrant_masks())
    assert scores["trigger_match"] == 1.0
    assert scores["trigger_cosine"] > 0.8 > 0.0 > scores["other_trigger_cosine"]


def test_cosine_matrix_by_hand():
    pattern = np.zeros((1, 2, 2, 3))
    pattern[0, 0, 0] = 1.0  # one bright pixel (all channels)
    triggers = np.zeros((2, 2, 2, 1))
    triggers[0, 0, 0] = 1.0  # the same pixel, one channel broadcast over three
    triggers[1] = 0.5  # constant: no centred direction
    plain = trigger_cosine_matrix(pattern, triggers, centered=False)
    # plain cosine with the constant image: (3 * 0.5) / (sqrt(3) * sqrt(12 * 0.25)) = 0.5
    np.testing.assert_allclose(plain, [[1.0, 0.5]])
    np.testing.assert_allclose(trigger_cosine_matrix(pattern, triggers), [[1.0, 0.0]])
    scores = compare_with_triggers(pattern, [0], triggers)
    assert scores == {"trigger_cosine": 1.0, "other_trigger_cosine": 0.0, "trigger_match": 1.0}


def test_rejects_bad_arguments():
    public = np.zeros((2, *IMAGE_SHAPE), np.float32)
    with pytest.raises(ValueError, match=r"`alpha` must be a number in \(0, 1\); received 1.5"):
        TriggerRecoveryAttack(public, alpha=1.5)
    with pytest.raises(ValueError, match="`prior` must be one of"):
        TriggerRecoveryAttack(public, prior="l2")
    with pytest.raises(ValueError, match=r"`public_images` must lie in \[0, 1\]"):
        TriggerRecoveryAttack(public + 2.0)
    with pytest.raises(ValueError, match="`triggers` must have shape"):
        trigger_cosine_matrix(np.zeros((1, 4, 4, 1)), np.zeros((2, 3, 3, 1)))
    with pytest.raises(ValueError, match=r"`labels` must hold one integer class in \[0, 2\)"):
        compare_with_triggers(np.zeros((1, 4, 4, 1)), [2], np.zeros((2, 4, 4, 1)))
