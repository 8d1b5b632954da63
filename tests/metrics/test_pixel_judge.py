"""The pixel-space judge against hand-computed nearest neighbours."""

import numpy as np
import pytest

from tests.metrics.test_evaluator import (
    PRIVATE,
    PRIVATE_LABELS,
    RECONSTRUCTION_LABELS,
    RECONSTRUCTIONS,
    images,
    linear_model,
)
from trapmid_tf.experiments.summary import summarize_attack
from trapmid_tf.metrics.evaluator import AttackEvaluator
from trapmid_tf.metrics.pixel_judge import PixelJudge, pixel_judge_applies

# Three 2x2 references: black (class 0), white (class 1), only the first pixel lit (class 2).
REFERENCES = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], np.float32).reshape(3, 2, 2, 1)
REFERENCE_LABELS = np.array([0, 1, 2])


def queries(rows):
    return np.asarray(rows, np.float32).reshape(-1, 2, 2, 1)


def test_predict_gives_the_class_of_the_nearest_reference():
    # Squared distances to (black, white, first pixel), by hand:
    # [.1 0 0 0]: .01, 3.81, .81 -> black; [.9 0 0 0]: .81, 3.01, .01 -> first pixel;
    # [.6 .6 .6 .6]: 1.44, .64, 1.24 -> white; [0 .9 .9 .9]: 2.43, 1.03, 3.43 -> white.
    judge = PixelJudge(REFERENCES, REFERENCE_LABELS)
    rows = [[0.1, 0, 0, 0], [0.9, 0, 0, 0], [0.6] * 4, [0, 0.9, 0.9, 0.9]]
    np.testing.assert_array_equal(judge.predict(queries(rows)), [0, 2, 1, 1])
    np.testing.assert_array_equal(judge.top1(queries(rows), [0, 0, 1, 2]), [1, 0, 1, 0])


def test_a_tie_goes_to_the_first_reference():
    # [.5 0 0 0] is .25 from black and .25 from the first-pixel image (exact in float64).
    judge = PixelJudge(REFERENCES, REFERENCE_LABELS)
    assert judge.predict(queries([[0.5, 0, 0, 0]])).tolist() == [0]
    flipped = PixelJudge(REFERENCES[::-1], REFERENCE_LABELS[::-1])
    assert flipped.predict(queries([[0.5, 0, 0, 0]])).tolist() == [2]


def test_only_images_of_at_most_32_pixels_a_side_are_judged():
    assert pixel_judge_applies((32, 32, 1)) and not pixel_judge_applies((32, 33, 3))
    PixelJudge(np.zeros((1, 32, 32, 1), np.float32), [0])
    with pytest.raises(ValueError, match=r"at most 32 pixels a side.*\(64, 64, 3\)"):
        PixelJudge(np.zeros((1, 64, 64, 3), np.float32), [0])


def test_bad_input_is_named():
    judge = PixelJudge(REFERENCES, REFERENCE_LABELS)
    with pytest.raises(ValueError, match=r"`images` must have the reference images' shape"):
        judge.predict(np.zeros((1, 3, 3, 1), np.float32))
    with pytest.raises(ValueError, match="reference_labels"):
        PixelJudge(REFERENCES, [0, 1])
    with pytest.raises(ValueError, match=r"`images` must lie in \[0, 1\]"):
        judge.predict(queries([[2.0, 0, 0, 0]]))


def test_the_evaluator_scores_with_the_pixel_judge_beside_the_model():
    # References: the private pairs with flipped labels, so the judges differ. Nearest private
    # pair of each reconstruction by hand (squared distances): (1, 0) -> (.9, .1) at .02;
    # (.6, .4) -> (.7, .2) at .05; (.2, .5) -> (0, .6) at .05; (.4, .3) -> (.7, .2) at .10;
    # (.45, .55) -> (.3, .8) at .085; their original classes 0 0 1 0 1, flipped 1 1 0 1 0.
    pixel = PixelJudge(images(PRIVATE), 1 - PRIVATE_LABELS)
    evaluator = AttackEvaluator(linear_model(), images(PRIVATE), PRIVATE_LABELS,
                                judges={"pixel": pixel})
    scores = evaluator.evaluate(images(RECONSTRUCTIONS), RECONSTRUCTION_LABELS)
    # Attacked classes 0 0 0 1 1 against the flipped nearest classes 1 1 0 1 0.
    assert scores["per_image"]["pixel_top1"] == [0, 0, 1, 1, 0]
    assert scores["pixel_aa1"] == pytest.approx(0.4)
    assert scores["per_image"]["top1"] == [1, 1, 0, 0, 1]  # the model's, unchanged
    plain = AttackEvaluator(linear_model(), images(PRIVATE), PRIVATE_LABELS)
    unjudged = plain.evaluate(images(RECONSTRUCTIONS), RECONSTRUCTION_LABELS)
    assert "pixel_aa1" not in unjudged and "pixel_top1" not in unjudged["per_image"]


def test_the_pixel_top1_is_pooled_over_seeds_like_the_models():
    def run(top1, pixel_top1=None):
        per_image = {"top1": top1, "top5": top1, "knn": [0.0] * len(top1)}
        if pixel_top1 is not None:
            per_image["pixel_top1"] = pixel_top1
        return {"per_image": per_image, "fid_samples": 0, "fid_samples_all": 4,
                "feature_dims": 2, "inversion_steps": 1}

    # Per-seed pixel means 0.5 and 0.25: their mean 0.375, as the model's top-1 pools.
    pooled = summarize_attack([run([1, 1, 0, 0], [1, 0, 1, 0]), run([0, 0, 0, 1], [0, 0, 0, 1])])
    assert pooled["pixel_aa1"]["mean"] == pytest.approx(0.375)
    assert pooled["groups"]["pixel_top1"] == [[1, 0, 1, 0], [0, 0, 0, 1]]
    assert summarize_attack([run([1, 0, 0, 0])])["pixel_aa1"] is None
