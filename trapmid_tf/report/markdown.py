"""The text of report.md, and `write`, which writes it with its PNG grids.

What the results say comes from `trapmid_tf.report.interpretation`; this module lays it out:
the opening paragraphs (setting, budget convergence, statistics, floors), the tables and a
section per attack.
"""

import os

from trapmid_tf.attacks.suite import LOOKUP, TRANSFER_NULL
from trapmid_tf.attacks.transfer_null import TRANSFER_STEP_SIZE, TRANSFER_STEPS
from trapmid_tf.files import atomic_path
from trapmid_tf.metrics.intervals import VERDICT_WORDS
from trapmid_tf.metrics.pixel_judge import PIXEL_JUDGE_MAX_SIDE
from trapmid_tf.report.grids import GRID_PRIVATE_SAMPLES, attack_grid, labelled_grid, save_png
from trapmid_tf.report.interpretation import (
    JUDGES,
    JUDGES_DISAGREE,
    NOT_FORMED,
    attack_names,
    floor_mark,
    judged_leakage,
    judges,
    not_applicable,
    paper_comparison,
    top1_text,
    trapdoor_not_formed,
    uniform_chance,
    verdicts,
)
from trapmid_tf.report.tables import cell_text, estimate_text, markdown_table

ATTACK_COLUMNS = (
    "aa1", "pixel_aa1", "aa5", "knn", "fid", "fid_all", "precision_all", "recall_all",
    "density_all", "coverage_all", "trapdoor_similarity", "trapdoor_detection", "chance_aa1",
)
# The held-out judge's column, after the pixel judge's in runs where it scored
# (`attack_columns`: results without it render as before).
HELD_OUT_COLUMN = "held_out_aa1"
# The rule, as the report states it next to its tables.
LEAKAGE_RULE = (
    "An attack shows leakage only where its top-1 is above chance (1/K, K the attacked "
    "classes) and above the lookup baseline's top-1 on the same target (the public images "
    "the target is surest of): the lower end of its interval above 1/K and above the upper "
    "end of the lookup's interval. Top-1 marked *≤ floor* is not."
)
# What the two judges and the transfer null are, as the report states it.
JUDGES_RULE = (
    "Judges: the evaluation model (`aa1`, named in the first paragraph; the pipeline's also "
    "trains on the private training images) and the pixel "
    "judge (`pixel_aa1`: the class of the nearest reference image in squared pixel "
    "distance; no target trained on the references and no network's feature enters), for "
    f"images of at most {PIXEL_JUDGE_MAX_SIDE} pixels a side. A judge's answer outside the "
    "attacked classes (a class it knows beside them) is a miss. `transfer_null` is no inversion: "
    f"per class, random public images moved {TRANSFER_STEPS} signed-gradient steps of "
    f"{TRANSFER_STEP_SIZE * 255:g}/255 up the target's log-softmax of the class, clipped to "
    "[0, 1]; a judge that accepts the transfer null's images measures transfer, not leakage. "
    "A verdict needs the judges to agree: where they disagree on whether an attack shows "
    f"leakage on the undefended model, or on the verdict, it reads *{JUDGES_DISAGREE}*. The "
    "lookup and the transfer null are references: they get no verdict."
)
# The steps an attack ran, where the recorded iterations need a word.
STEP_NOTES = {
    LOOKUP: "(no optimisation: a lookup of the public images)",
    TRANSFER_NULL: "(signed-gradient steps from random public images)",
    "plgmi_adaptive_estimated": "per round; two rounds (plain PLG-MI on the plain PLG-MI prior "
                                "estimates the signatures)",
    "brep_mi": "run (walks also stop after their patience)",
}


def summary_table(results, judge="aa1"):
    """Markdown table: per defense natural/trapdoor accuracy and each attack's top-1.

    Every value is "mean [low, high]" (95% interval over seeds, `intervals.seed_mean`),
    marked `AT_FLOOR` where the attack shows no leakage (`works`). A defense whose trapdoor
    did not form is named with `NOT_FORMED`.

    Args:
        results: The pipeline's results dict.
        judge: The top-1 of which judge, a key of `JUDGES` (the column titles end in it).

    Returns:
        The table as a string.
    """
    attacks, chance = attack_names(results), uniform_chance(results)
    rows = [
        [f"{defense} ({NOT_FORMED})" if trapdoor_not_formed(scores) else defense,
         len(scores["seeds"]), estimate_text(scores["accuracy"]),
         estimate_text(scores["trapdoor_accuracy"])]
        + [top1_text(scores["attacks"][attack], judge)
           + floor_mark(scores["attacks"][attack], chance, scores["attacks"][LOOKUP], judge)
           for attack in attacks]
        for defense, scores in results["defenses"].items()
    ]
    header = ["defense", "seeds", "accuracy", "trapdoor acc."]
    header += [f"{attack} {judge}" for attack in attacks]
    return markdown_table(header, rows)


def steps_table(results):
    """Markdown table of the optimiser steps every prior and attack ran.

    Args:
        results: The pipeline's results dict.

    Returns:
        The table as a string: per defense, the first seed's prior and inversion steps, and
        the prior each PLG-MI++ attack searched (its own, penalised).
    """
    rows = []
    for defense, scores in results["defenses"].items():
        first = str(scores["seeds"][0])
        for prior, steps in scores["prior_steps"][first].items():
            rows.append([defense, f"prior {prior}", _steps_text(steps)])
        for attack, summary in scores["attacks"].items():
            steps = not_applicable(summary) or " ".join(
                [f"{summary['inversion_steps']} iterations"]
                + ([STEP_NOTES[attack]] if attack in STEP_NOTES else [])
            )
            if "prior" in summary:
                steps += f"; {_searched_prior_text(summary['prior'])}"
            rows.append([defense, f"attack {attack}", steps])
    return markdown_table(["defense", "stage", "steps run"], rows)


def leakage_table(results):
    """Markdown table of the trigger leakage of every defense with triggers.

    Args:
        results: The pipeline's results dict (a defense's `trigger_leakage` None without
            triggers).

    Returns:
        The table as a string, or None when no defense has triggers.
    """
    rows = [
        [defense, len(scores["seeds"]), estimate_text(scores["trapdoor_accuracy"]),
         leakage["triggers"], estimate_text(leakage["trigger_top1"]),
         estimate_text(leakage["class_part_top1"]), leakage["chance"]]
        for defense, scores in results["defenses"].items()
        if (leakage := scores.get("trigger_leakage")) is not None
    ]
    if not rows:
        return None
    return markdown_table(
        ["defense", "seeds", "trapdoor acc.", "triggers per seed", "trigger top-1",
         "class-part top-1", "chance"], rows,
    )


def trigger_recovery_table(results):
    """Markdown table: trigger recovery's patterns against each target's true triggers.

    Args:
        results: The pipeline's results dict.

    Returns:
        The table as a string, or None when no target with triggers was attacked by it.
    """
    rows = []
    for defense, scores in results["defenses"].items():
        summary = scores["attacks"].get("trigger_recovery", {})
        if "trigger_classes" in summary:
            rows.append([defense, estimate_text(summary["trigger_cosine"]),
                         estimate_text(summary["other_trigger_cosine"]),
                         estimate_text(summary["trigger_match"]), 1 / summary["trigger_classes"]])
    if not rows:
        return None
    return markdown_table(
        ["defense", "cosine with own trigger", "cosine with other triggers", "match",
         "match chance"], rows,
    )


def without_start_table(results):
    """Markdown table: the classes BREP-MI found no starting point for, per defense and seed.

    Args:
        results: The pipeline's results dict.

    Returns:
        The table as a string, or None when no defense's BREP-MI scores list them.
    """
    rows = []
    for defense, scores in results["defenses"].items():
        summary = scores["attacks"].get("brep_mi", {})
        if "classes_without_start" in summary:
            per_seed = summary["classes_without_start"]
            rows.append([defense, sum(len(classes) for classes in per_seed),
                         "; ".join(f"seed {seed}: {classes or 'none'}"
                                   for seed, classes in zip(scores["seeds"], per_seed))])
    if not rows:
        return None
    return markdown_table(["defense", "classes without a start", "per seed"], rows)


def _steps_text(steps):
    if steps is None:
        return None
    return ", ".join(f"{key} {value}" for key, value in steps.items())


def _searched_prior_text(prior):
    """"PLG-MI++ on prior <name> (<steps>, signature weight <w>)" of an attack's `prior`."""
    details = [_steps_text(prior["steps"]), f"signature weight {prior['signature_weight']:g}"]
    return f"PLG-MI++ on prior {prior['name']} ({', '.join(filter(None, details))})"


def write(out, results, private_images, private_labels, reconstructions, triggers):
    """Writes `out/report.md` and its PNG grids under `out/grids/`.

    Args:
        out: The pipeline's output folder.
        results: The pipeline's results dict (as in results.json).
        private_images, private_labels: Private training images and labels (numpy).
        reconstructions: `{defense: {attack: {"images", "labels", ...}}}`; an attack that did
            not apply to a defense is left out of its dict.
        triggers: `{defense: trigger array (classes, H, W, C)}` of the Trap-MID targets.

    Returns:
        `{name: picture}` of every grid written (for TensorBoard).
    """
    grids = {}
    attacks = attack_names(results)
    classes = sorted({int(label) for stored in reconstructions.values()
                      for arrays in stored.values() for label in arrays["labels"]})
    for attack in attacks:
        shown = {defense: stored[attack] for defense, stored in reconstructions.items()
                 if attack in stored}
        if shown:
            grids[attack] = attack_grid(private_images, private_labels, shown, classes)
    for defense, array in triggers.items():
        grids[f"triggers_{defense}"] = labelled_grid(
            [(f"class {c}", [[trigger]]) for c, trigger in enumerate(array)], [defense]
        )
    for name, picture in grids.items():
        secret = name.startswith("triggers_")
        save_png(os.path.join(out, "grids", f"{name}.png"), picture, secret=secret)
    with atomic_path(os.path.join(out, "report.md")) as temporary:
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(report_markdown(results, list(reconstructions), attacks, triggers))
    return grids


def attack_columns(results):
    """The columns of an attack's table: `ATTACK_COLUMNS`, with `HELD_OUT_COLUMN` after
    `pixel_aa1` where the held-out judge scored the results (`judges`)."""
    if HELD_OUT_COLUMN not in judges(results):
        return ATTACK_COLUMNS
    after = ATTACK_COLUMNS.index("pixel_aa1") + 1
    return ATTACK_COLUMNS[:after] + (HELD_OUT_COLUMN,) + ATTACK_COLUMNS[after:]


def _attack_cells(scores, chance, lookup, columns):
    """The `columns` cells of one attack against one model, top-1s marked `AT_FLOOR` (a
    judge that did not run, None, leaves its cell empty)."""
    cells = [estimate_text(scores.get(column)) for column in columns]
    for judge in JUDGES:
        if judge in columns and scores.get(judge) is not None:
            cells[columns.index(judge)] += floor_mark(scores, chance, lookup, judge)
    return cells


def gap_paragraph(gap, tolerance=0.05):
    """A report paragraph saying how far the run's budgets are from converged.

    Args:
        gap: A `MeasuredGap.as_dict()` (`trapmid_tf.experiments.measured_convergence`).
        tolerance: The largest gain from doubling that counts as converged.

    Returns:
        Markdown text naming the attacks whose measured mean gain exceeded `tolerance` (they
        understate the attack), the others, the rule the record was measured with (the
        recipe's earlier one: mean gain on the unprotected target, two-level bootstrap
        interval), and the measurement's command and sample sizes.
    """
    gains = gap["gains"]
    short = [name for name, gain in gains.items() if gain["mean"] > tolerance]
    listed = ", ".join(f"{name} {estimate_text(gain)}" for name, gain in gains.items())
    if short:
        verdict = (f"not converged for {', '.join(short)}: doubling them raised the unprotected "
                   f"mean top-1 by more than {tolerance}, so these rows understate the attack "
                   "and overstate any protection against it")
    else:
        verdict = (f"converged by their mean gains: doubling them raised no unprotected mean "
                   f"top-1 by more than {tolerance}")
    seeds = len(gap["seeds"])
    sentences = [
        f"**Budget convergence (measured separately, not by this run).** The `{gap['preset']}` "
        f"budgets are {verdict}.",
        f"Mean top-1 gain from doubling every budget, against the unprotected digits target only "
        f"({seeds} training seed{'s' if seeds > 1 else ''}, {gap['reconstructions']} "
        f"reconstructions per attack and seed; {gap['date']}), with the 95% interval of the "
        "recipe's earlier two-level bootstrap (each budget's seeds, then reconstructions, "
        f"resampled on their own): {listed}.",
        gap["remark"],
        f"Command: `{gap['command']}`.",
    ]
    return " ".join(sentence for sentence in sentences if sentence)


def _convergence_lines(results):
    """The measured-convergence paragraph and a blank line, or nothing without a measurement."""
    gap = results.get("convergence_gap")
    return [gap_paragraph(gap), ""] if gap else []


def threat_model_lines(results):
    """The report's opening paragraph: the lookup floor per target, and what the setting can show.

    Args:
        results: The pipeline's results dict (`public_split`, each defense's `lookup` top-1).

    Returns:
        A list of lines. With public split "samples" the attacker's public images hold
        unlabelled images of the private classes, and the paragraph says plainly that such a
        run cannot show protection of what the private classes look like.
    """
    floors = ", ".join(
        f"{defense} {top1_text(scores['attacks'][LOOKUP])}"
        for defense, scores in results["defenses"].items() if LOOKUP in scores["attacks"]
    )
    if results.get("public_split") == "samples":
        setting = (
            "**This setting cannot show protection of what the private classes look like.** "
            "Its public split `samples` gives the attacker unlabelled images of the private "
            "classes themselves, so their look is public already: the attacks below are "
            "measured for whether a defense misleads their optimisers, not for a loss of "
            "privacy. For that, run class-disjoint public data (`--public_split=classes`)."
        )
    else:
        setting = "The attacker's public images hold none of the private classes."
    return [
        f"Threat model. {setting} The lookup floor (top-1 of the public images each target "
        f"is surest of, no attack at all): {floors}.",
        "",
    ]


def statistics_line(results, verdict_rows):
    """The report's one paragraph on what its intervals and verdicts model.

    Args:
        results: The pipeline's results dict (`settings["seeds"]`).
        verdict_rows: The rows of `verdicts(results)`.

    Returns:
        The paragraph as one string.
    """
    seeds = len(results["settings"]["seeds"])
    if seeds == 1:
        return (
            "Statistics: every value is `mean [low, high]` with a 95% interval. With one "
            "training seed there is no interval over seeds: a top-1 interval is exact "
            "(Clopper-Pearson) over the reconstructions within that one training seed, so it "
            "leaves out the training's variation; a value measured once per target has no "
            "interval; no verdict is given (needs 2+ seeds)."
        )
    # Tested rows: a verdict word, or the judges' differing words.
    comparisons = sum(row[-1] in VERDICT_WORDS or row[-1].startswith(f"{JUDGES_DISAGREE} (")
                      for row in verdict_rows)
    per_judge = ", per judge" if len(judges(results)) > 1 else ""
    return (
        f"Statistics: every value is `mean [low, high]`, the mean over training seeds and "
        f"its unadjusted 95% interval. Intervals: Student t on {seeds - 1} df over the "
        f"{seeds} seeds' values; comparisons paired by training seed, over per-seed "
        "differences and log-ratios of top-1 (rates with Haldane's +0.5, the ratio as exp of "
        "the log-ratio's interval), each seed's variance at least its binomial variance; "
        "exact Clopper-Pearson where a top-1 is 0 or 1 in every reconstruction; verdicts "
        f"Holm-corrected over {3 * comparisons} one-sided tests (3 for each of "
        f"{comparisons} comparisons){per_judge}, the intervals shown unadjusted."
    )


def pixel_line(description):
    """What the pixel judge's references are, as the report states it beside `JUDGES_RULE`.

    Args:
        description: The results' `pixel_judge` (`evaluation.JudgeReferences.description`).

    Returns:
        One line: how many images of how many classes, and what they are.
    """
    classes = (f" of {description['classes']} classes" if "classes" in description
               else "")  # results.json files written before the count have none
    return (f"The pixel judge's references: {description['images']} images{classes}, the "
            f"{description['references']}.")


def held_out_line(description):
    """What the held-out judge is, as the report states it beside `JUDGES_RULE`.

    Args:
        description: The results' `held_out_judge` (`judges.held_out_judge`).

    Returns:
        One line: its architecture, classes, data and test accuracy.
    """
    data = description["data"]
    return (
        f"The held-out judge (`{HELD_OUT_COLUMN}`): `{description['architecture']}` on "
        f"{description['classes']} classes, trained on {data['train_images']} images and "
        f"tested on the other {data['test_images']} ({data['test_fraction']:.0%} of each "
        f"class, split seed {data['split_seed']}) of the {data['source']}; test accuracy "
        f"{cell_text(description['accuracy'])}; no target trained on those images, and its "
        "architecture is neither the evaluation model's nor a target's."
    )


def judges_lines(results):
    """The other judges' top-1 tables, what the judges and the transfer null are, and where
    the judges disagree.

    Args:
        results: The pipeline's results dict.

    Returns:
        A list of lines, ending in a blank one: per judge beside the evaluation model (the
        pixel judge, the held-out judge) its `summary_table`, then `JUDGES_RULE` (and
        `pixel_line`, `held_out_line` where those judges ran), then the `(attack, defense)` pairs
        whose leakage (`works`) the judges disagree on (or that they agree on all; with
        three judges, each pair names the judges that see leakage) and the targets on which
        each judge accepts the transfer null; a line says so where the pixel judge did not
        run.
    """
    judged, leakage = judges(results), judged_leakage(results)
    lines = []
    for judge in judged[1:]:
        lines += [f"Top-1 by the {JUDGES[judge]}, under the same rule with its own floors:", "",
                  summary_table(results, judge)]
    lines += [JUDGES_RULE, ""]
    if "pixel_aa1" in judged and results.get("pixel_judge"):
        lines += [pixel_line(results["pixel_judge"]), ""]
    if HELD_OUT_COLUMN in judged and results.get("held_out_judge"):
        lines += [held_out_line(results["held_out_judge"]), ""]
    no_pixel = ("The pixel judge did not run (it judges only images of at most "
                f"{PIXEL_JUDGE_MAX_SIDE} pixels a side)")
    if len(judged) == 1:
        found = f"{no_pixel}: the verdicts rest on the evaluation model alone."
    else:
        found = "" if "pixel_aa1" in judged else f"{no_pixel}. "
        seen = [leakage[judge] for judge in judged]
        split = sorted(set.union(*seen) - set.intersection(*seen))
        found += ("The judges disagree on leakage for: "
                  + ", ".join(_disagreement(attack, defense, judged, leakage)
                              for attack, defense in split) + "."
                  if split else "The judges agree on leakage of every attack on every target.")
    if TRANSFER_NULL in attack_names(results):
        accepted = [
            f"by the {JUDGES[judge]} on "
            + (", ".join(d for d in results["defenses"] if (TRANSFER_NULL, d) in leakage[judge])
               or "no target")
            for judge in judged
        ]
        found += f" The transfer null shows leakage {'; '.join(accepted)}."
    return lines + [found, ""]


def _disagreement(attack, defense, judged, leakage):
    """"<attack> on <defense>", and with more than two judges the ones that see leakage."""
    pair = f"{attack} on {defense}"
    if len(judged) <= 2:
        return pair
    return pair + " (leakage by the " + ", ".join(
        JUDGES[judge] for judge in judged if (attack, defense) in leakage[judge]) + ")"


def report_markdown(results, defenses, attacks, triggers):
    """The text of report.md.

    Args:
        results: The pipeline's results dict.
        defenses: Defense names, in grid column order.
        attacks: Attack names, one section each.
        triggers: Names of the defenses whose trigger grid was written, or a dict keyed so.

    Returns:
        The markdown text.
    """
    evaluation = results["evaluation_model"]
    uniform = uniform_chance(results)
    settings = results["settings"]
    scored = results["defenses"]
    verdict_rows = verdicts(results)
    lines = [
        "# Model-inversion privacy report",
        "",
        f"Dataset `{results['dataset']}` (public split `{results['public_split']}`), preset "
        f"`{results['preset']}` (budgets x{settings.get('budget_scale', 1)}), training seeds "
        f"{settings['seeds']}, {settings['per_class']} reconstructions per class and seed, "
        f"{results['seconds']:.0f} s. Evaluation model: `{evaluation['architecture']}` on "
        f"{evaluation['classes']} classes, test accuracy "
        f"{cell_text(evaluation['accuracy'])}. FID and PRDC features: `{results['fid_features']}`.",
        "",
        *threat_model_lines(results),
        *_convergence_lines(results),
        statistics_line(results, verdict_rows),
        "",
        f"Floors: uniform guessing among the {results['attacked_classes']} attacked classes "
        f"scores top-1 {uniform:.3f}; `{LOOKUP}` is the zero-effort baseline, per class the "
        "public images the target is surest of, scored like reconstructions (no prior, no "
        "optimisation). `chance_aa1`, the evaluation model's top-1 on an attack's "
        "un-optimised starting samples, is a diagnostic, not a floor.",
        "",
        "## Top-1 attack accuracy",
        "",
        LEAKAGE_RULE,
        "",
        summary_table(results),
        *judges_lines(results),
        "## Defenses against the undefended model",
        "",
        "Verdicts only where a one-sided t test on the seed-paired values rejects, "
        "Holm-corrected over the report: *at most half* when a ratio of 0.5 or more is "
        "rejected, *lower* when a difference of 0 or more is, *not lower* when a reduction "
        "is (a difference of 0 or less), else *inconclusive*; *needs 2+ seeds* with one seed.",
        "",
        markdown_table(
            ["attack", "defense", "undefended aa1", "defended aa1", "ratio", "verdict"],
            verdict_rows,
        ),
        "## Our ratios beside the paper's",
        "",
        "Defended / undefended top-1: ours (interval) and the paper's (VGG-16 on CelebA, "
        "read off the official repository's charts). Different data and models: the shape "
        "is comparable, the numbers need not be.",
        "",
        markdown_table(
            ["attack", "defense", "our ratio", "paper ratio", "paper's ratio is"],
            paper_comparison(results),
        ),
    ]
    if "none" in scored:
        lines += [
            "Natural-accuracy cost (undefended minus defended mean test accuracy, points): "
            + ", ".join(
                f"{d} {100 * (scored['none']['accuracy']['mean'] - s['accuracy']['mean']):+.1f}"
                for d, s in scored.items() if d != "none"
            ),
            "",
        ]
    leakage = leakage_table(results)
    if leakage:
        lines += [
            "## Trigger leakage",
            "",
            "Do the secret triggers give their class away? The evaluation model's top-1 on "
            "each trigger as an image, and on its class-specific part (the trigger minus the "
            "mean trigger of all classes, stretched into [0, 1]); chance is uniform guessing. "
            "Intervals are over training seeds only (one value per seed, each a fraction of "
            "the triggers per seed).",
            "",
            leakage,
        ]
    lines += ["## Steps run", "", steps_table(results)]
    columns = attack_columns(results)
    for attack in attacks:
        entries = {d: scored[d]["attacks"][attack] for d in defenses}
        ran = [d for d in defenses if not not_applicable(entries[d])]
        lines += [f"## {attack}", ""]
        if not ran:
            lines += [f"{attack}: {not_applicable(entries[defenses[0]])} on every target.", ""]
            continue
        dims = entries[ran[0]]["feature_dims"]
        few = [d for d in ran if min(entries[d]["fid_samples_all"]) < dims]
        lines += [
            f"![{attack}](grids/{attack}.png)",
            "",
            f"Each row is a class: {GRID_PRIVATE_SAMPLES} private training images, then "
            f"{settings['per_class']} reconstructions (seed {settings['seeds'][0]}) for each "
            f"of: {', '.join(ran)}. `fid` uses the successful reconstructions, `_all` "
            "columns all of them.",
            "",
            markdown_table(
                ["defense"] + list(columns),
                [[d] + (_attack_cells(entries[d], uniform, scored[d]["attacks"][LOOKUP],
                                      columns)
                        if d in ran
                        else [not_applicable(entries[d])] + [None] * (len(columns) - 1))
                 for d in defenses],
            ),
        ]
        recovered = trigger_recovery_table(results) if attack == "trigger_recovery" else None
        if recovered:
            lines += [
                "Recovered patterns against the target's true triggers: mean centred cosine "
                "(pixel correlation) with the trigger of the pattern's own class and with the "
                "other classes' triggers, and the fraction of patterns closest to their own "
                "class's trigger (chance: 1 / classes).",
                "",
                recovered,
            ]
        unstarted = without_start_table(results) if attack == "brep_mi" else None
        if unstarted:
            lines += [
                "Classes without a starting point (no latent of the search was labelled as "
                "the class): their images are random draws, left out of the scores above, so "
                "each such class scores "
                f"{settings['per_class']} reconstructions fewer per seed.",
                "",
                unstarted,
            ]
        if few:
            lines += [
                f"FID and PRDC of {', '.join(few)} rest on fewer reconstructions per seed than "
                f"the {dims} feature dimensions: the covariance is singular there, so those "
                "numbers say little.",
                "",
            ]
    for defense in triggers:
        lines += [f"## Triggers of {defense} (secret)", "",
                  f"![triggers](grids/triggers_{defense}.png)", ""]
    return "\n".join(lines)
