"""Verdicts and report text with three judges (evaluation model, pixel, held-out), by hand."""

import pytest

from tests.test_report import _outcomes, _results, _target, _words
from trapmid_tf.experiments import summarize_seeds
from trapmid_tf.report import interpretation, markdown

DISAGREE = interpretation.JUDGES_DISAGREE
HELD_OUT = dict(architecture="ir18", accuracy=0.9142857, classes=5, data=dict(
    source="private test split", test_fraction=0.2, split_seed=0, train_images=145,
    test_images=35))


def _three_judges(cnn, pixel, held_out):
    """3 seeds of GMI against each defense of `cnn` ("none" first; 10 attacked classes,
    chance 0.1): exactly `cnn[d]`, `pixel[d]`, `held_out[d]` of 100 reconstructions correct
    by the evaluation model, the pixel judge and the held-out judge; every lookup scores 0 by
    each judge."""
    def target(defense, seed):
        scores = _target(cnn[defense], 0.1, 1.0, None if defense == "none" else 1.0, seed)
        for key, rates, shift in (("pixel_top1", pixel, 10), ("held_out_top1", held_out, 20)):
            scores["attacks"]["gmi"]["per_image"][key] = _outcomes(rates[defense], seed + shift)
            scores["attacks"]["lookup"]["per_image"][key] = [0] * 100
        return scores

    return {
        "defenses": {d: summarize_seeds({seed: target(d, seed) for seed in range(3)})
                     for d in cnn},
        "evaluation_model": {"classes": 10}, "attacked_classes": 10,
        "settings": {"seeds": [0, 1, 2]}, "held_out_judge": HELD_OUT,
    }


BOTH = {"none": 0.8, "trapmid": 0.2}


@pytest.mark.parametrize(
    "held_out, verdict",
    [
        # All three see 0.8 -> 0.2: each judge's Holm family is this one comparison, so each
        # word is test_report.test_verdicts' for those rates, "at most half".
        (BOTH, "at most half"),
        # The held-out judge sees GMI at chance (0.1) on the undefended model: no leakage by
        # it, while the other two see some.
        ({"none": 0.1, "trapmid": 0.1}, DISAGREE),
        # All see leakage on the undefended model; the held-out judge sees no drop
        # (0.8 -> 0.8, test_verdicts' "inconclusive").
        ({"none": 0.8, "trapmid": 0.8},
         f"{DISAGREE} (evaluation model: at most half, pixel judge: at most half, held-out "
         "judge: inconclusive)"),
    ],
)
def test_a_verdict_needs_all_three_judges_to_agree(held_out, verdict):
    results = _three_judges(BOTH, BOTH, held_out)
    assert interpretation.judges(results) == ["aa1", "pixel_aa1", "held_out_aa1"]
    rows = interpretation.verdicts(results)
    assert _words(rows) == [("gmi", "trapmid", verdict)]
    tested = verdict != DISAGREE
    assert (f"Holm-corrected over {3 * tested} one-sided tests (3 for each of {int(tested)} "
            "comparisons), per judge") in markdown.statistics_line(results, rows)


def test_the_report_names_the_held_out_judge_and_who_sees_leakage():
    # Evaluation model: 0.8 on none, 0.5 on trapmid (both above chance 0.1 and the lookup's
    # 0); pixel judge 0.1 on both (at chance); held-out judge 0.8 on none, 0.1 on trapmid.
    # So leakage: evaluation model {none, trapmid}, pixel {}, held-out {none}; no pair is
    # seen by all, both are seen by some.
    results = _three_judges({"none": 0.8, "trapmid": 0.5}, {"none": 0.1, "trapmid": 0.1},
                            {"none": 0.8, "trapmid": 0.1})
    lines = markdown.judges_lines(results)
    assert lines[0] == "Top-1 by the pixel judge, under the same rule with its own floors:"
    assert lines[3] == "Top-1 by the held-out judge, under the same rule with its own floors:"
    assert lines[5].startswith(
        "| defense | seeds | accuracy | trapdoor acc. | lookup held_out_aa1 | gmi held_out_aa1 |")
    assert lines[6:8] == [markdown.JUDGES_RULE, ""]
    assert lines[8] == (
        "The held-out judge (`held_out_aa1`): `ir18` on 5 classes, trained on 145 images and "
        "tested on the other 35 (20% of each class, split seed 0) of the private test split; "
        "test accuracy 0.914; no target trained on those images, and its architecture is "
        "neither the evaluation model's nor a target's."
    )
    assert lines[-2] == (
        "The judges disagree on leakage for: gmi on none (leakage by the evaluation model, "
        "held-out judge), gmi on trapmid (leakage by the evaluation model)."
    )
    # With the pixel judge's references recorded, a line says what they are; results.json
    # files written before their class count keep the line without it.
    results["pixel_judge"] = dict(references="private test split and more", images=30,
                                  classes=10)
    lines = markdown.judges_lines(results)
    assert lines[6:10] == [markdown.JUDGES_RULE, "", "The pixel judge's references: 30 images "
                           "of 10 classes, the private test split and more.", ""]
    del results["pixel_judge"]["classes"]
    assert markdown.judges_lines(results)[8] == (
        "The pixel judge's references: 30 images, the private test split and more.")


def test_the_attack_tables_gain_the_held_out_column_only_where_it_scored():
    three = _three_judges(BOTH, BOTH, BOTH)
    three.update(  # what the report's opening paragraph reads
        dataset="digits", public_split="classes", preset="tiny", seconds=1.0,
        fid_features="evaluator", settings={"seeds": [0, 1, 2], "per_class": 100},
        evaluation_model={"classes": 10, "architecture": "cnn", "accuracy": 0.99})
    header = "| defense | aa1 | pixel_aa1 | held_out_aa1 | aa5 | knn |"
    assert header in markdown.report_markdown(three, ["none", "trapmid"], ["gmi"], {})
    # Results without it (as every results.json written before it) keep the old columns.
    assert markdown.attack_columns(_results(0.8, 0.1, {"trapmid": 0.2})) == \
        markdown.ATTACK_COLUMNS
    assert markdown.attack_columns(three)[:4] == ("aa1", "pixel_aa1", "held_out_aa1", "aa5")
