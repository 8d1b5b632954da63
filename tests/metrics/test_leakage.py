"""Tests for the trigger-leakage metric, on a hand-made evaluation model."""

import keras
import numpy as np
import pytest

from tests.attacks.test_inversion import IMAGE_SHAPE as SHAPE
from tests.attacks.test_mi_face import quadrant_masks
from trapmid_tf.metrics.leakage import class_specific_part, trigger_leakage


def quadrant_evaluator(channels=1):
    """Five classes: logit_c = sum of quadrant c (over channels) for c < 4, logit_4 = 0."""
    images = keras.Input((*SHAPE[:2], channels))
    dense = keras.layers.Dense(5, use_bias=False, name="logits")
    model = keras.Model(images, dense(keras.layers.Flatten()(images)))
    weights = np.zeros((16 * channels, 5), np.float32)
    weights[:, :4] = np.repeat(quadrant_masks(), channels, axis=-1).reshape(4, -1).T
    dense.set_weights([weights])
    return model


def shared_quadrant_triggers():
    """t_c = 0.3 + 0.2 mask_c + 0.5 mask_3: every trigger is brightest on quadrant 3."""
    masks = quadrant_masks()
    return 0.3 + 0.2 * masks + 0.5 * masks[3]


def test_class_specific_part_by_hand():
    triggers = np.array([[[[0.0], [1.0]]], [[[1.0], [1.0]]]])  # two 1x2 triggers
    # mean (0.5, 1); differences (-0.5, 0) and (0.5, 0)
    np.testing.assert_allclose(class_specific_part(triggers)[:, 0, :, 0], [[0, 1], [1, 0]])
    np.testing.assert_allclose(
        class_specific_part(triggers, "shift")[:, 0, :, 0], [[0.25, 0.5], [0.75, 0.5]]
    )
    constant = np.full((2, 1, 2, 1), 0.3)
    np.testing.assert_allclose(class_specific_part(constant), 0.5)


def test_leakage_on_a_hand_made_evaluator():
    # Raw triggers: quadrant 3 sums to 4 * 0.8 = 3.2 > 4 * 0.5 = 2.0 of quadrant c, so all are
    # classified 3 and only trigger 3 is right (1/4). The class-specific part
    # 0.2 (mask_c - mean mask) is brightest on quadrant c, so all four are right.
    scores = trigger_leakage(quadrant_evaluator(), shared_quadrant_triggers())
    assert scores == {"trigger_top1": 0.25, "class_part_top1": 1.0, "chance": 0.2}
    shifted = trigger_leakage(quadrant_evaluator(), shared_quadrant_triggers(), mapping="shift")
    assert shifted["class_part_top1"] == 1.0
    # Labels map triggers to evaluation classes: shifting them makes every answer wrong.
    wrong = trigger_leakage(quadrant_evaluator(), shared_quadrant_triggers(), [1, 2, 3, 0])
    assert wrong["trigger_top1"] == 0.25 and wrong["class_part_top1"] == 0.0


def test_one_channel_triggers_are_broadcast_over_the_model_channels():
    scores = trigger_leakage(quadrant_evaluator(channels=3), shared_quadrant_triggers())
    assert scores == {"trigger_top1": 0.25, "class_part_top1": 1.0, "chance": 0.2}


def test_rejects_bad_triggers():
    evaluator = quadrant_evaluator()
    with pytest.raises(ValueError, match=r"`triggers` must have shape \(num_classes, 4, 4, 1"):
        trigger_leakage(evaluator, np.zeros((4, 3, 3, 1)))
    with pytest.raises(ValueError, match=r"`triggers` must lie in \[0, 1\]"):
        trigger_leakage(evaluator, shared_quadrant_triggers() + 1.0)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        class_specific_part(np.zeros((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="`mapping` must be one of"):
        class_specific_part(shared_quadrant_triggers(), "abs")
    with pytest.raises(ValueError, match="`labels`"):
        trigger_leakage(evaluator, shared_quadrant_triggers(), [0, 1, 2, 7])
