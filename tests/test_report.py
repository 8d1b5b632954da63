"""Report grids, tables and verdicts against hand-made inputs."""

import numpy as np
import pytest
from PIL import Image

from trapmid_tf.experiments import summarize_seeds
from trapmid_tf.report import grids, interpretation, markdown, tables


def test_image_grid_places_tiles_with_white_padding():
    black = np.zeros((2, 3, 1))
    grey = np.full((2, 3, 1), 0.5)
    picture = grids.image_grid([[black, grey], [grey]], padding=1)
    assert picture.shape == (1 + 2 * 3, 1 + 2 * 4, 1) and picture.dtype == np.uint8
    expected = np.full((7, 9), 255, dtype=np.uint8)
    expected[1:3, 1:4] = 0
    expected[1:3, 5:8] = 128
    expected[4:6, 1:4] = 128  # the short second row keeps a white tile at its end
    np.testing.assert_array_equal(picture[..., 0], expected)


def test_image_grid_rejects_mixed_shapes():
    with pytest.raises(ValueError, match="one \\(height, width, channels\\) shape"):
        grids.image_grid([[np.zeros((2, 2, 1)), np.zeros((3, 3, 1))]])


def test_save_png_enlarges_and_round_trips(tmp_path):
    picture = np.array([[[0], [255]]], dtype=np.uint8)
    grids.save_png(tmp_path / "grid.png", picture, scale=2)
    loaded = np.asarray(Image.open(tmp_path / "grid.png"))
    np.testing.assert_array_equal(loaded, [[0, 0, 255, 255], [0, 0, 255, 255]])


def test_markdown_table_formats_cells():
    table = tables.markdown_table(["a", "b", "c"], [["x", 0.12345, None], ["y", 3, 1.0]])
    assert table == "| a | b | c |\n|---|---|---|\n| x | 0.123 | — |\n| y | 3 | 1.000 |\n"
    with pytest.raises(ValueError, match="Each row needs 3 cells"):
        tables.markdown_table(["a", "b", "c"], [["x"]])


def _outcomes(rate, seed):
    """Exactly `rate` of 100 0/1 outcomes are 1, in an order drawn with `seed`."""
    hits = round(100 * rate)
    return np.random.default_rng(seed).permutation([1] * hits + [0] * (100 - hits)).tolist()


def _target(aa1, chance, accuracy, trapdoor_accuracy, seed, lookup=0.0):
    """One seed's scores: exactly `aa1` of 100 GMI reconstructions successful (starting
    samples `chance`), and `lookup` of the lookup baseline's 100 public images."""
    def scores(rate, chance, steps):
        top1 = _outcomes(rate, seed)
        return {
            "per_image": {"top1": top1, "top5": top1, "knn": [1.0] * 100},
            "chance_aa1": chance, "fid_samples": sum(top1), "fid_samples_all": 100,
            "feature_dims": 8, "inversion_steps": steps,
        }

    return {"accuracy": accuracy, "trapdoor_accuracy": trapdoor_accuracy, "prior_steps": {},
            "attacks": {"lookup": scores(lookup, lookup, 0), "gmi": scores(aa1, chance, 3)}}


def _results(none_aa1, chance, defended, lookup=0.0):
    """Pipeline results of 3 seeds x 100 reconstructions of 10 attacked classes, pooled by
    `summarize_seeds`; every target's lookup baseline scores `lookup`."""
    def defense(aa1, accuracy, trapdoor_accuracy):
        return summarize_seeds(
            {seed: _target(aa1, chance, accuracy, trapdoor_accuracy, seed, lookup)
             for seed in range(3)}
        )

    defenses = {"none": defense(none_aa1, 1.0, None)}
    for name, aa1 in defended.items():
        defenses[name] = defense(aa1, 0.99, 1.0)
    return {"defenses": defenses, "evaluation_model": {"classes": 10}, "attacked_classes": 10}


def _words(rows):
    return [(attack, defense, word) for attack, defense, *_, word in rows]


@pytest.mark.parametrize(
    "none_aa1, chance, aa1, verdict",
    [
        (0.8, 0.1, 0.2, "at most half"),
        (0.8, 0.1, 0.6, "lower"),
        (0.6, 0.1, 0.8, "not lower"),
        # Equal rates: the interval of the difference holds both signs.
        (0.8, 0.1, 0.8, "inconclusive"),
        # 0.1 is uniform chance (10 classes): the attack does not work.
        (0.1, 0.05, 0.0, "attack fails on the baseline"),
        # Starting samples as good as the attack are a diagnostic, no floor.
        (0.6, 0.6, 0.1, "at most half"),
    ],
)
def test_verdicts(none_aa1, chance, aa1, verdict):
    rows = interpretation.verdicts(_results(none_aa1, chance, {"trapmid": aa1}))
    assert _words(rows) == [("gmi", "trapmid", verdict)]
    # The ratio column is exp of the mean per-seed log-ratio of Haldane's rates
    # (k + 0.5) / (n + 1), the same in every seed here, with its interval around it.
    ratio = rows[0][4]
    assert ratio.startswith(f"{(100 * aa1 + 0.5) / (100 * none_aa1 + 0.5):.3f} [")


def test_paper_comparison_places_the_papers_ratio_against_our_interval():
    # Our ratios: exp of the paired log-ratio's t interval (2 df, quantile 4.303); every seed
    # has the same counts, so the standard error is the delta-method floor
    # sqrt(sum over arms of (1 - p) / (100 p) / 3) at p = (k + 0.5) / 101.
    # Trap-MID 0 of 100 vs 80: ratio 0.5 / 80.5 = 0.006, se 0.82: [0.0002, 0.21] holds the
    # paper's 0.5 / 14 = 0.036. MID 20 vs 80: 0.255, se 0.118: [0.15, 0.42], below the
    # paper's 10 / 14 = 0.71. NegLS 80 vs 80: 1, se 0.041: [0.84, 1.19], above its 8 / 14.
    results = _results(0.8, 0.1, {"trapmid": 0.0, "negls": 0.8, "mid": 0.2})
    rows = {defense: row for _, defense, *row in interpretation.paper_comparison(results)}
    assert rows["trapmid"][1:] == [round(0.5 / 14, 3), "inside our interval"]
    assert rows["mid"][1:] == [round(10 / 14, 3), "ours lower"]
    assert rows["negls"][1:] == [round(8 / 14, 3), "ours higher"]


def test_attack_grid_rows_are_classes_with_private_samples_first():
    private = np.stack([np.full((8, 8, 1), v) for v in (0.0, 0.1, 0.2, 0.3, 0.9)])
    private_labels = np.array([0, 0, 0, 0, 1])
    recon = {"none": {"images": np.full((2, 8, 8, 1), 0.5), "labels": np.array([0, 1])}}
    picture = grids.attack_grid(private, private_labels, recon, classes=[0, 1])

    # The tiles, bottom right: 3 private images of class 0, one of class 1 and two white
    # tiles (the private column group is 3 wide), then the reconstruction of each class.
    white, tile = np.ones((8, 8, 1)), lambda v: np.full((8, 8, 1), v)
    body = grids.image_grid([[tile(0.0), tile(0.1), tile(0.2), tile(0.5)],
                              [tile(0.9), white, white, tile(0.5)]])
    np.testing.assert_array_equal(picture[-body.shape[0]:, -body.shape[1]:], body)
    # The names are drawn in the bands above and left of the tiles, nowhere else.
    top, left = picture.shape[0] - body.shape[0], picture.shape[1] - body.shape[1]
    assert top > 0 and left > 0
    header = picture[:top, left:, 0]
    columns = np.flatnonzero((header < 128).any(axis=0))
    private_width = 3 * (8 + 2)
    assert columns.min() < private_width < columns.max()  # "private", then "none" beyond it
    labels = picture[top:, :left, 0]
    rows = np.flatnonzero((labels < 128).any(axis=1))
    assert rows.min() < 2 + 8 + 2 < rows.max()  # "class 0" and "class 1" beside their rows
    assert (picture[:top, :left] == 255).all()


def test_labelled_grid_rejects_a_group_without_a_row_per_label():
    with pytest.raises(ValueError, match="group 'none' must have one row per row label"):
        grids.labelled_grid([("none", [[np.zeros((2, 2, 1))]])], ["class 0", "class 1"])


def test_a_target_whose_trapdoor_did_not_form_is_not_presented_as_a_defense():
    results = _results(0.8, 0.1, {"trapmid": 0.1, "trapmid_negls": 0.1})
    results["defenses"]["trapmid"]["trapdoor_formed"] = False
    results["defenses"]["trapmid_negls"]["trapdoor_formed"] = True
    not_formed = "trapdoor not formed: no protection expected"
    assert _words(interpretation.verdicts(results)) == [
        ("gmi", "trapmid", not_formed),
        ("gmi", "trapmid_negls", "at most half"),
    ]
    rows = markdown.summary_table(results).splitlines()[2:]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| none", "3"], [f"| trapmid ({not_formed})", "3"], ["| trapmid_negls", "3"],
    ]
    assert rows[1].split(" | ")[-1].startswith("0.100 [")


def _adaptive_results():
    """3 seeds of an undefended and a Trap-MID target under PLG-MI, PLG-MI++ and recovery.

    The undefended target has no triggers: PLG-MI++ with the defender's signatures did not
    apply to it, and it has no trigger leakage.
    """
    leakage = {0: 0.6, 1: 0.8, 2: 0.4}

    def seed_scores(seed, trapdoor):
        target = _target(0.8 if not trapdoor else 0.2, 0.1, 1.0, 1.0 if trapdoor else None, seed)
        plgmi = target["attacks"].pop("gmi")
        recovery = dict(plgmi)
        if trapdoor:
            recovery.update(trigger_cosine=0.1 * seed, other_trigger_cosine=0.0,
                            trigger_match=0.2, trigger_classes=5)
        target["attacks"] = {
            "lookup": target["attacks"]["lookup"],
            "plgmi": plgmi,
            "plgmi_adaptive": dict(plgmi) if trapdoor else {"not_applicable": "no trapdoor"},
            "trigger_recovery": recovery,
        }
        target["trigger_leakage"] = (
            {"trigger_top1": leakage[seed], "class_part_top1": 0.2, "chance": 0.1, "triggers": 5}
            if trapdoor else None
        )
        return target

    return {
        "defenses": {
            name: summarize_seeds({seed: seed_scores(seed, name == "trapmid") for seed in range(3)})
            for name in ("none", "trapmid")
        },
        "evaluation_model": {"classes": 10, "architecture": "cnn", "accuracy": 0.99},
        "attacked_classes": 5,
        "dataset": "digits", "public_split": "samples", "preset": "tiny", "seconds": 1.0,
        "fid_features": "evaluator", "settings": {"seeds": [0, 1, 2], "per_class": 100},
    }


def test_trigger_leakage_is_pooled_over_seeds_and_tabulated_with_chance():
    results = _adaptive_results()
    assert results["defenses"]["none"]["trigger_leakage"] is None
    leakage = results["defenses"]["trapmid"]["trigger_leakage"]
    # The mean of the three seeds' top-1 (0.6, 0.8, 0.4) with its t interval: sample sd
    # 0.2, 2 df, quantile (0.95) / sqrt(2 x 0.975 x 0.025) = 4.303 (closed form for 2 df).
    # Float64 arithmetic on O(1) numbers: 1e-12.
    top1 = leakage["trigger_top1"]
    half = 0.95 / np.sqrt(2 * 0.975 * 0.025) * 0.2 / np.sqrt(3)
    assert (top1["mean"], top1["low"], top1["high"]) == pytest.approx(
        (0.6, 0.6 - half, 0.6 + half), abs=1e-12
    )
    part = leakage["class_part_top1"]
    assert part["low"] == pytest.approx(0.2) and part["high"] == pytest.approx(0.2)
    assert (leakage["chance"], leakage["triggers"]) == (0.1, 5)
    rows = markdown.leakage_table(results).splitlines()[2:]
    assert len(rows) == 1
    cells = rows[0].strip("| ").split(" | ")
    assert cells[0] == "trapmid" and cells[1] == "3" and cells[3] == "5"
    assert cells[4].startswith("0.600 [") and cells[5] == "0.200 [0.200, 0.200]"
    assert cells[6] == "0.100"
    results["defenses"].pop("trapmid")
    assert markdown.leakage_table(results) is None


def test_an_attack_that_does_not_apply_is_said_so_and_compared_with_its_base():
    results = _adaptive_results()
    none, trapmid = (results["defenses"][d]["attacks"] for d in ("none", "trapmid"))
    assert none["plgmi_adaptive"] == {"not_applicable": "no trapdoor"}
    summary = markdown.summary_table(results).splitlines()[2:]
    assert "| not applicable: no trapdoor |" in summary[0]
    rows = {attack: row for attack, defense, *row in interpretation.verdicts(results)}
    # PLG-MI++ on Trap-MID is compared with plain PLG-MI on the undefended model.
    assert rows["plgmi_adaptive vs plgmi"][0] == tables.estimate_text(none["plgmi"]["aa1"])
    defended = tables.estimate_text(trapmid["plgmi_adaptive"]["aa1"])
    assert rows["plgmi_adaptive vs plgmi"][1] == defended
    # 0.2 against 0.8 in every seed, as are the other two comparisons here (PLG-MI and
    # trigger recovery on Trap-MID): Holm over their 9 tests. Each lower test has p 0.0015
    # (at most x 9 = 0.013: rejected); each at-most-half test p 0.0146, times 6 = 0.088.
    assert rows["plgmi_adaptive vs plgmi"][3] == "lower"
    assert "| none | attack plgmi_adaptive | not applicable: no trapdoor |" in (
        markdown.steps_table(results)
    )
    text = markdown.report_markdown(results, ["none", "trapmid"],
                                  ["plgmi", "plgmi_adaptive", "trigger_recovery"], {})
    section = text.split("## plgmi_adaptive\n")[1].split("## ")[0]
    assert "for each of: trapmid." in section
    assert "| none | not applicable: no trapdoor | — |" in section
    assert "## Trigger leakage" in text


def test_trigger_recovery_is_compared_with_the_true_triggers():
    results = _adaptive_results()
    recovery = results["defenses"]["trapmid"]["attacks"]["trigger_recovery"]
    assert recovery["trigger_cosine"]["mean"] == pytest.approx(0.1)  # seeds 0, 0.1, 0.2
    assert "trigger_cosine" not in results["defenses"]["none"]["attacks"]["trigger_recovery"]
    rows = markdown.trigger_recovery_table(results).splitlines()[2:]
    assert len(rows) == 1 and rows[0].startswith("| trapmid | 0.100 [")
    assert rows[0].endswith("| 0.200 [0.200, 0.200] | 0.200 |")  # match, chance 1/5


def test_an_attack_must_apply_to_all_seeds_of_a_defense_or_none():
    runs = {0: _target(0.5, 0.1, 1.0, None, 0), 1: _target(0.5, 0.1, 1.0, None, 1)}
    runs[1]["attacks"]["gmi"] = {"not_applicable": "no trapdoor"}
    with pytest.raises(ValueError, match="apply to every seed of a defense or to none"):
        summarize_seeds(runs)


def test_steps_table_notes_rounds_and_early_stops():
    results = _results(0.8, 0.1, {})
    entry = results["defenses"]["none"]["attacks"]
    entry["plgmi_adaptive_estimated"] = entry["brep_mi"] = entry.pop("gmi")
    table = markdown.steps_table(results)
    assert "| none | attack plgmi_adaptive_estimated | 3 iterations per round; two rounds" in table
    assert "| none | attack brep_mi | 3 iterations run (walks also stop" in table


def test_works_needs_top1_above_chance_and_the_lookup_floor():
    def top1(low, high, chance_aa1=0.0):
        return {"aa1": {"mean": (low + high) / 2, "low": low, "high": high},
                "chance_aa1": {"mean": chance_aa1, "low": chance_aa1, "high": chance_aa1}}

    lookup = top1(0.3, 0.4)
    assert interpretation.works(top1(0.5, 0.7), 0.1, lookup)
    # The lower end must clear the lookup's upper end, not only its mean.
    assert not interpretation.works(top1(0.38, 0.7), 0.1, lookup)
    assert not interpretation.works(top1(0.4, 0.7), 0.1, lookup)  # equal is not above
    # Above a weak lookup but not above chance (1/K).
    assert not interpretation.works(top1(0.15, 0.3), 0.2, top1(0.0, 0.05))
    # Starting samples better than the attack do not gate it any more.
    assert interpretation.works(top1(0.5, 0.7, chance_aa1=0.9), 0.1, lookup)
    # The lookup never shows leakage against itself.
    assert not interpretation.works(lookup, 0.1, lookup)
    # Chance is over the attacked classes, not the judge's.
    chance = interpretation.uniform_chance(
        {"attacked_classes": 4, "evaluation_model": {"classes": 10}})
    assert chance == 0.25


def test_tables_mark_attacks_at_or_below_the_lookup_floor():
    # Every target's lookup scores 0.5: GMI's 0.8 on the undefended model is above it, its
    # 0.1 on Trap-MID is not; the lookup column itself carries no mark.
    results = _results(0.8, 0.1, {"trapmid": 0.1}, lookup=0.5)
    rows = [row.strip("| ").split(" | ") for row in markdown.summary_table(results).splitlines()]
    assert rows[0][-2:] == ["lookup aa1", "gmi aa1"]
    (none_lookup, none_gmi), (trapmid_lookup, trapmid_gmi) = rows[2][-2:], rows[3][-2:]
    assert none_lookup.startswith("0.500 [") and not none_lookup.endswith(interpretation.AT_FLOOR)
    assert none_gmi.startswith("0.800 [") and not none_gmi.endswith(interpretation.AT_FLOOR.strip())
    assert trapmid_gmi.startswith("0.100 [")
    assert trapmid_gmi.endswith(interpretation.AT_FLOOR.strip())
    assert not trapmid_lookup.endswith(interpretation.AT_FLOOR.strip())


def test_the_report_shows_the_lookup_row_and_states_the_rule():
    results = _adaptive_results()
    attacks = ["lookup", "plgmi", "plgmi_adaptive", "trigger_recovery"]
    text = markdown.report_markdown(results, ["none", "trapmid"], attacks, {})
    lines = text.splitlines()
    assert markdown.LEAKAGE_RULE in lines
    # The rule sits right above the top-1 table, whose first attack column is the lookup.
    rule = lines.index(markdown.LEAKAGE_RULE)
    assert lines[rule + 2].startswith("| defense | seeds | accuracy | trapdoor acc. | lookup aa1 |")
    assert "uniform guessing among the 5 attacked classes scores top-1 0.200" in text
    assert "## lookup\n" in text and "![lookup](grids/lookup.png)" in text
    assert "| none | attack lookup | 0 iterations (no optimisation" in text
    # The lookup is the floor, not an attack a defense is compared under.
    assert all(row[0] != "lookup" for row in interpretation.verdicts(results))


def test_an_attack_not_above_the_lookup_fails_on_the_baseline():
    # GMI's 0.6 on the undefended model is far above chance (0.1) but not above its lookup.
    results = _results(0.6, 0.1, {"trapmid": 0.1}, lookup=0.6)
    fails = interpretation.WORKS_ON_BASELINE
    assert _words(interpretation.verdicts(results)) == [("gmi", "trapmid", fails)]


def test_the_statistics_line_says_what_is_modelled():
    results = _adaptive_results()
    line = markdown.statistics_line(results, interpretation.verdicts(results))
    assert "Student t on 2 df over the 3 seeds' values" in line
    assert "Holm-corrected over 9 one-sided tests (3 for each of 3 comparisons)" in line
    assert "unadjusted" in line and "Clopper-Pearson" in line
    assert line in markdown.report_markdown(results, ["none", "trapmid"], ["plgmi"], {})


def test_one_seed_gives_no_verdict_and_says_so():
    results = {
        "defenses": {name: summarize_seeds({0: _target(aa1, 0.1, 1.0, None, 0)})
                     for name, aa1 in (("none", 0.8), ("trapmid", 0.1))},
        "evaluation_model": {"classes": 10}, "attacked_classes": 10,
        "settings": {"seeds": [0]},
    }
    rows = interpretation.verdicts(results)
    assert _words(rows) == [("gmi", "trapmid", "needs 2+ seeds")]
    assert rows[0][4] is None  # no ratio interval
    # The top-1 interval is exact over the 100 reconstructions of the one seed.
    aa1 = results["defenses"]["trapmid"]["attacks"]["gmi"]["aa1"]
    assert aa1["method"] == "Clopper-Pearson within one training seed"
    line = markdown.statistics_line(results, rows)
    assert "within that one training seed" in line and "needs 2+ seeds" in line


@pytest.mark.parametrize("split, says_it_cannot", [("samples", True), ("classes", False)])
def test_the_report_opens_with_the_lookup_floors_and_what_the_setting_can_show(
        split, says_it_cannot):
    results = dict(_results(0.8, 0.1, {"trapmid": 0.2}, lookup=0.9), public_split=split)
    (paragraph, blank) = markdown.threat_model_lines(results)
    assert blank == ""
    # Each target's lookup top-1 (90 of 100 in every seed), as the tables write it.
    floor = tables.estimate_text(results["defenses"]["none"]["attacks"]["lookup"]["aa1"])
    assert floor.startswith("0.900 [")
    assert f"none {floor}, trapmid {floor}." in paragraph
    assert ("cannot show protection" in paragraph) is says_it_cannot


def _judged_results(cnn, pixel, lookup_pixel=0.0):
    """3 seeds of GMI against each defense of `cnn` ("none" first, 10 attacked classes,
    chance 0.1) judged twice: exactly `cnn[d]` of 100 reconstructions correct by the
    evaluation model and `pixel[d]` by the pixel judge; every lookup scores 0 by the
    evaluation model and `lookup_pixel` by the pixel judge."""
    def target(defense, seed):
        scores = _target(cnn[defense], 0.1, 1.0, None if defense == "none" else 1.0, seed)
        for attack, rate in (("gmi", pixel[defense]), ("lookup", lookup_pixel)):
            scores["attacks"][attack]["per_image"]["pixel_top1"] = _outcomes(rate, seed + 10)
        return scores

    return {
        "defenses": {d: summarize_seeds({seed: target(d, seed) for seed in range(3)})
                     for d in cnn},
        "evaluation_model": {"classes": 10}, "attacked_classes": 10,
        "settings": {"seeds": [0, 1, 2]},
    }


@pytest.mark.parametrize(
    "pixel, verdict",
    [
        # The pixel judge sees what the evaluation model sees: its word.
        ({"none": 0.8, "trapmid": 0.2}, "at most half"),
        # By pixels GMI is at chance (0.1) on the undefended model: no leakage to protect.
        ({"none": 0.1, "trapmid": 0.1}, interpretation.JUDGES_DISAGREE),
        # Both see leakage on the undefended model; only the evaluation model sees a drop. Each
        # judge's Holm family is this one comparison, so its word is `test_verdicts`' for the
        # same rates: 0.8 -> 0.2 "at most half", 0.8 -> 0.8 "inconclusive".
        ({"none": 0.8, "trapmid": 0.8},
         f"{interpretation.JUDGES_DISAGREE} (evaluation model: at most half, pixel judge: "
         "inconclusive)"),
    ],
)
def test_a_verdict_needs_the_judges_to_agree(pixel, verdict):
    results = _judged_results({"none": 0.8, "trapmid": 0.2}, pixel)
    assert interpretation.judges(results) == ["aa1", "pixel_aa1"]
    rows = interpretation.verdicts(results)
    assert _words(rows) == [("gmi", "trapmid", verdict)]
    tested = verdict != interpretation.JUDGES_DISAGREE  # the judges' words were tested
    line = markdown.statistics_line(results, rows)
    assert (f"Holm-corrected over {3 * tested} one-sided tests (3 for each of {int(tested)} "
            "comparisons), per judge") in line


def test_the_baseline_fails_only_where_both_judges_see_no_leakage():
    results = _judged_results({"none": 0.1, "trapmid": 0.1}, {"none": 0.1, "trapmid": 0.1})
    fails = interpretation.WORKS_ON_BASELINE
    assert _words(interpretation.verdicts(results)) == [("gmi", "trapmid", fails)]


def test_the_report_explains_the_judges_and_where_they_accept_the_transfer_null():
    # Evaluation model: GMI 0.8 on none, 0.5 on trapmid, above its floors (chance 0.1, lookup
    # 0); pixel judge: 0.1 on both, at chance, not above. The transfer null scores as GMI.
    results = _judged_results({"none": 0.8, "trapmid": 0.5}, {"none": 0.1, "trapmid": 0.1})
    for scores in results["defenses"].values():
        scores["attacks"]["transfer_null"] = scores["attacks"]["gmi"]
    lines = markdown.judges_lines(results)
    assert lines[0] == "Top-1 by the pixel judge, under the same rule with its own floors:"
    assert lines[2].startswith(
        "| defense | seeds | accuracy | trapdoor acc. | lookup pixel_aa1 | gmi pixel_aa1 |")
    assert markdown.JUDGES_RULE in lines
    assert "a judge that accepts the transfer null's images measures transfer, not leakage" \
        in markdown.JUDGES_RULE
    assert lines[-2] == (
        "The judges disagree on leakage for: gmi on none, gmi on trapmid, transfer_null on "
        "none, transfer_null on trapmid. The transfer null shows leakage by the evaluation "
        "model on none, trapmid; by the pixel judge on no target."
    )
    assert lines[-1] == ""
    # The transfer null, like the lookup, is a reference: no verdict row.
    assert [row[0] for row in interpretation.verdicts(results)] == ["gmi"]


def test_without_the_pixel_judge_the_report_says_so_and_judges_by_the_model_alone():
    results = _results(0.8, 0.1, {"trapmid": 0.2})
    assert interpretation.judges(results) == ["aa1"]
    assert results["defenses"]["none"]["attacks"]["gmi"]["pixel_aa1"] is None
    lines = markdown.judges_lines(results)
    assert lines[0] == markdown.JUDGES_RULE
    assert lines[2].startswith("The pixel judge did not run (it judges only images of at most "
                               "32 pixels a side)")
    assert _words(interpretation.verdicts(results)) == [("gmi", "trapmid", "at most half")]
