"""The classifier judge and the evaluator's judges against hand-computed top-1s."""

import numpy as np
import pytest

from tests.metrics.test_evaluator import (
    LOGIT_WEIGHTS,
    PRIVATE,
    PRIVATE_LABELS,
    RECONSTRUCTION_LABELS,
    RECONSTRUCTIONS,
    images,
    linear_model,
)
from trapmid_tf.experiments.summary import summarize_attack
from trapmid_tf.metrics.classifier_judge import ClassifierJudge
from trapmid_tf.metrics.evaluator import AttackEvaluator
from trapmid_tf.metrics.pixel_judge import PixelJudge

# The evaluation model's logit columns swapped: class 1 wins where x0 > x1, class 0 otherwise.
SWAPPED = LOGIT_WEIGHTS[:, [1, 0, 2]]


def test_top1_is_the_classifiers_most_likely_class_against_the_label():
    judge = ClassifierJudge(linear_model(SWAPPED), batch_size=2)
    # Reconstructions (x0, x1): (1, 0), (.6, .4), (.2, .5), (.4, .3), (.45, .55); x0 > x1 in
    # the 1st, 2nd and 4th, so the swapped model says 1 1 0 1 0.
    np.testing.assert_array_equal(judge.predict(images(RECONSTRUCTIONS)), [1, 1, 0, 1, 0])
    # Against the attacked classes 0 0 0 1 1.
    np.testing.assert_array_equal(judge.top1(images(RECONSTRUCTIONS), RECONSTRUCTION_LABELS),
                                  [0, 0, 1, 1, 0])


def test_bad_input_is_named():
    judge = ClassifierJudge(linear_model(SWAPPED))
    with pytest.raises(ValueError, match=r"`images` must lie in \[0, 1\]"):
        judge.predict(images([[2.0, 0.0]]))
    with pytest.raises(ValueError, match=r"`labels` must have shape \(5,\)"):
        judge.top1(images(RECONSTRUCTIONS), [0, 1])
    with pytest.raises(ValueError, match="batch_size"):
        ClassifierJudge(linear_model(SWAPPED), batch_size=0)


def test_the_evaluator_scores_with_every_judge_under_its_own_keys():
    # The pixel judge of the private pairs with flipped labels gives 0 0 1 1 0
    # (test_pixel_judge's hand computation); the held-out judge above 0 0 1 1 0 as well,
    # the evaluation model 1 1 0 0 1 (test_evaluator's).
    judges = {"pixel": PixelJudge(images(PRIVATE), 1 - PRIVATE_LABELS),
              "held_out": ClassifierJudge(linear_model(SWAPPED))}
    evaluator = AttackEvaluator(linear_model(), images(PRIVATE), PRIVATE_LABELS, judges=judges)
    scores = evaluator.evaluate(images(RECONSTRUCTIONS), RECONSTRUCTION_LABELS)
    assert scores["per_image"]["held_out_top1"] == [0, 0, 1, 1, 0]
    assert scores["held_out_aa1"] == pytest.approx(0.4)
    assert scores["per_image"]["pixel_top1"] == [0, 0, 1, 1, 0]
    assert scores["pixel_aa1"] == pytest.approx(0.4)
    assert scores["per_image"]["top1"] == [1, 1, 0, 0, 1]
    assert scores["aa1"] == pytest.approx(0.6)
    # Only the held-out judge: no pixel keys.
    alone = AttackEvaluator(linear_model(), images(PRIVATE), PRIVATE_LABELS,
                            judges={"held_out": ClassifierJudge(linear_model(SWAPPED))})
    scored = alone.evaluate(images(RECONSTRUCTIONS), RECONSTRUCTION_LABELS)
    assert "pixel_aa1" not in scored and "pixel_top1" not in scored["per_image"]
    assert scored["held_out_aa1"] == pytest.approx(0.4)


def test_an_unknown_judge_is_named():
    with pytest.raises(ValueError, match=r"`judges` must have names among \['pixel', "
                                         r"'held_out'\]; received \['nearest'\]"):
        AttackEvaluator(linear_model(), images(PRIVATE), PRIVATE_LABELS,
                        judges={"nearest": ClassifierJudge(linear_model())})


def test_the_held_out_top1_is_pooled_over_seeds_as_a_binary_outcome():
    def run(top1, held_out_top1=None):
        per_image = {"top1": top1, "top5": top1, "knn": [0.0] * len(top1)}
        if held_out_top1 is not None:
            per_image["held_out_top1"] = held_out_top1
        return {"per_image": per_image, "fid_samples": 0, "fid_samples_all": 4,
                "feature_dims": 2, "inversion_steps": 1}

    # Per-seed means 0.75 and 0.5: their mean 0.625.
    pooled = summarize_attack([run([1, 0, 0, 0], [1, 1, 1, 0]), run([0, 0, 0, 1], [0, 1, 0, 1])])
    assert pooled["held_out_aa1"]["mean"] == pytest.approx(0.625)
    assert pooled["groups"]["held_out_top1"] == [[1, 1, 1, 0], [0, 1, 0, 1]]
    # One seed of 0/1 outcomes all 1: the exact (Clopper-Pearson) interval, upper end 1.
    assert summarize_attack([run([0, 0], [1, 1])])["held_out_aa1"]["high"] == 1.0
    assert summarize_attack([run([1, 0, 0, 0])])["held_out_aa1"] is None
