"""Image grids (PNG) and the markdown tables of the privacy report."""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from trapmid_tf.attacks.suite import LOOKUP, TRANSFER_NULL
from trapmid_tf.attacks.transfer_null import TRANSFER_STEP_SIZE, TRANSFER_STEPS
from trapmid_tf.files import atomic_path
from trapmid_tf.metrics.pixel_judge import PIXEL_JUDGE_MAX_SIDE

GRID_PADDING = 2


def image_grid(rows, padding=GRID_PADDING):
    """Tiles images into one picture, a row per list, white padding between tiles.

    Args:
        rows: Sequence of rows; each row a sequence (or array) of float images `(H, W, C)`
            in [0, 1], all of one shape. Short rows are padded with white tiles.
        padding: Pixels between tiles and around the grid.

    Returns:
        A uint8 array `(height, width, C)`.

    Raises:
        ValueError: If there is no image or the images differ in shape.
    """
    rows = [[np.asarray(image, dtype=np.float32) for image in row] for row in rows]
    shapes = {image.shape for row in rows for image in row}
    if len(shapes) != 1:
        raise ValueError(
            f"`rows` must hold images of one (height, width, channels) shape; received shapes "
            f"{sorted(shapes)}."
        )
    (height, width, channels), columns = shapes.pop(), max(len(row) for row in rows)
    grid = np.ones(
        (
            padding + len(rows) * (height + padding),
            padding + columns * (width + padding),
            channels,
        ),
        dtype=np.float32,
    )
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            top, left = padding + r * (height + padding), padding + c * (width + padding)
            grid[top : top + height, left : left + width] = image
    return np.round(np.clip(grid, 0.0, 1.0) * 255.0).astype(np.uint8)


def labelled_grid(groups, row_labels, padding=GRID_PADDING):
    """Tiles images in named column groups and named rows, the names drawn on the picture.

    Args:
        groups: Sequence of `(name, rows)`; `rows` holds one sequence of images per row label.
            A group is as wide as its longest row; shorter rows get white tiles.
        row_labels: The name of each row, drawn to the left of it.
        padding: Pixels between tiles and around the tiles.

    Returns:
        A uint8 array `(height, width, C)`: a band of group names above `image_grid`'s
        picture of the tiles, and the row names in a band to its left. A name wider than
        its group is cut short.

    Raises:
        ValueError: If a group's rows do not match `row_labels`, or as `image_grid`.
    """
    for name, rows in groups:
        if len(rows) != len(row_labels):
            raise ValueError(
                f"group {name!r} must have one row per row label ({len(row_labels)}); "
                f"received {len(rows)}."
            )
    tiles = [np.asarray(image, np.float32) for _, rows in groups for row in rows for image in row]
    if not tiles:
        raise ValueError("`groups` hold no image.")
    blank = np.ones_like(tiles[0])
    widths = [max(len(row) for row in rows) for _, rows in groups]
    body = image_grid(
        [[tile for (_, rows), width in zip(groups, widths)
          for tile in [*rows[r], *[blank] * (width - len(rows[r]))]]
         for r in range(len(row_labels))],
        padding,
    )
    font = ImageFont.load_default()
    text_height = max(font.getbbox(text)[3] for text in ["Ag", *row_labels])
    left = padding + max((int(font.getlength(text)) for text in row_labels), default=0)
    top = padding + text_height
    canvas = np.full((top + body.shape[0], left + body.shape[1], body.shape[2]), 255, np.uint8)
    canvas[top:, left:] = body
    image = Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas)
    draw = ImageDraw.Draw(image)
    tile_height, tile_width = blank.shape[:2]
    x = left + padding
    for (name, _), width in zip(groups, widths):
        room = width * (tile_width + padding) - padding
        draw.text((x, padding), _fitted(name, room, font), fill="black", font=font)
        x += width * (tile_width + padding)
    for r, label in enumerate(row_labels):
        y = top + padding + r * (tile_height + padding) + (tile_height - text_height) // 2
        draw.text((padding // 2, y), label, fill="black", font=font)
    return np.asarray(image).reshape(canvas.shape)


def _fitted(text, width, font):
    """`text`, cut short (ending in ".") until it is at most `width` pixels wide."""
    while len(text) > 1 and font.getlength(text) > width:
        text = text[:-2] + "."
    return text


def save_png(path, picture, scale=2, secret=False):
    """Writes a uint8 `(H, W, 1 or 3)` picture to `path` atomically, enlarged `scale` times.

    Args:
        path: Output `.png` path.
        picture: uint8 array, e.g. from `image_grid`.
        scale: Integer nearest-neighbour enlargement (small digits are hard to see).
        secret: If true, the file is owner-only (0600), e.g. a picture of triggers.
    """
    picture = np.repeat(np.repeat(picture, scale, axis=0), scale, axis=1)
    image = Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)
    with atomic_path(path, secret=secret) as temporary:
        image.save(temporary, format="PNG")


def markdown_table(header, rows):
    """Formats a markdown table; None cells print as an em dash, floats with 3 digits.

    Args:
        header: Column titles.
        rows: Sequences of cells (str, int, float or None), each as long as `header`.

    Returns:
        The table as a string ending in a newline.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"Each row needs {len(header)} cells; received {list(row)!r}.")
        lines.append("| " + " | ".join(_cell(value) for value in row) + " |")
    return "\n".join(lines) + "\n"


def _cell(value):
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


GRID_PRIVATE_SAMPLES = 3
ATTACK_COLUMNS = (
    "aa1", "pixel_aa1", "aa5", "knn", "fid", "fid_all", "precision_all", "recall_all",
    "density_all", "coverage_all", "trapdoor_similarity", "trapdoor_detection", "chance_aa1",
)
# An attack "works" (shows leakage) against a model when its top-1 interval lies above both
# floors: uniform chance over the attacked classes and the lookup baseline's top-1 (`works`).
WORKS_ON_BASELINE = "attack fails on the baseline"
# The rule, as the report states it next to its tables.
LEAKAGE_RULE = (
    "An attack shows leakage only where its top-1 is above chance (1/K, K the attacked "
    "classes) and above the lookup baseline's top-1 on the same target (the public images "
    "the target is surest of): the lower end of its interval above 1/K and above the upper "
    "end of the lookup's interval. Top-1 marked *≤ floor* is not."
)
# How a top-1 at or below the floors is marked in the tables.
AT_FLOOR = " *≤ floor*"
# The judges of reconstructions: the evaluation model's top-1 and, for small images, the
# pixel judge's (`trapmid_tf.metrics.pixel_judge`), by their summary keys, with their names.
JUDGES = {"aa1": "evaluation model", "pixel_aa1": "pixel judge"}
# A verdict needs the judges to agree (`verdicts`); where they do not, the verdict reads so.
JUDGES_DISAGREE = "judges disagree"
# What the two judges and the transfer null are, as the report states it.
JUDGES_RULE = (
    "Judges: the evaluation model (`aa1`, a CNN trained on the private images) and the pixel "
    "judge (`pixel_aa1`: the class of the nearest private test image in squared pixel "
    "distance; no target trained on those images and no network's feature enters), for "
    f"images of at most {PIXEL_JUDGE_MAX_SIDE} pixels a side. `transfer_null` is no inversion: "
    f"per class, random public images moved {TRANSFER_STEPS} signed-gradient steps of "
    f"{TRANSFER_STEP_SIZE * 255:g}/255 up the target's log-softmax of the class, clipped to "
    "[0, 1]; a judge that accepts the transfer null's images measures transfer, not leakage. "
    "A verdict needs the judges to agree: where they disagree on whether an attack shows "
    f"leakage on the undefended model, or on the verdict, it reads *{JUDGES_DISAGREE}*. The "
    "lookup and the transfer null are references: they get no verdict."
)
# The paper's top-1 attack accuracy in percent (VGG-16 on CelebA, read off the official
# repository's charts; ../shared/docs/paper_results.md), by defense and attack.
PAPER_TOP1 = {
    "none": dict(gmi=14, kedmi=56.5, lomma_gmi=68, lomma_kedmi=79.5, plgmi=95.5),
    "mid": dict(gmi=10, kedmi=53, lomma_gmi=53, lomma_kedmi=68, plgmi=93),
    "bido": dict(gmi=5, kedmi=35, lomma_gmi=54, lomma_kedmi=63.5, plgmi=89),
    "negls": dict(gmi=8, kedmi=32.5, lomma_gmi=49, lomma_kedmi=77.5, plgmi=89.5),
    "trapmid": dict(gmi=0.5, kedmi=9.5, lomma_gmi=41.5, lomma_kedmi=61, plgmi=6.5),
    "trapmid_negls": dict(gmi=1.5, kedmi=4.5, lomma_gmi=23, lomma_kedmi=42.5, plgmi=0.5),
}
# How a Trap-MID target whose trapdoor did not form is shown (train_target's results.json
# records `trapdoor_formed`): its numbers are not a defense's.
NOT_FORMED = "trapdoor not formed: no protection expected"
# Attacks that do not apply to the undefended model (PLG-MI++ with the defender's signatures
# needs triggers) are compared with the undefended model under the attack they extend.
BASELINE_ATTACKS = {"plgmi_adaptive": "plgmi"}
# The steps an attack ran, where the recorded iterations need a word.
STEP_NOTES = {
    LOOKUP: "(no optimisation: a lookup of the public images)",
    TRANSFER_NULL: "(signed-gradient steps from random public images)",
    "plgmi_adaptive_estimated": "per round; two rounds (plain PLG-MI estimates the signatures)",
    "brep_mi": "run (walks also stop after their patience)",
}


def trapdoor_not_formed(scores):
    """Whether a defense's scores say its trapdoor did not form (in any of its seeds).

    Args:
        scores: One defense's entry of the pipeline's results (`trapdoor_formed` optional).

    Returns:
        True only when `trapdoor_formed` is recorded as False.
    """
    return scores.get("trapdoor_formed") is False


def not_applicable(scores):
    """Why an attack did not run against a model, as a table cell; None if it ran.

    Args:
        scores: One attack's summary against one model.

    Returns:
        `"not applicable: <reason>"` or None.
    """
    from trapmid_tf.experiments.summary import NOT_APPLICABLE

    if NOT_APPLICABLE not in scores:
        return None
    return f"not applicable: {scores[NOT_APPLICABLE]}"


def top1_text(scores, judge="aa1"):
    """An attack's top-1 for a table: the estimate's text, or why the attack did not run.

    Args:
        scores: One attack's summary against one model.
        judge: The top-1 of which judge, a key of `JUDGES`.

    Returns:
        A string.
    """
    return not_applicable(scores) or estimate_text(scores[judge])


def estimate_text(estimate):
    """Formats an estimate for a table.

    Args:
        estimate: An `Estimate.as_dict()`, a number, or None.

    Returns:
        `"mean [low, high]"` for an estimate; a number or None as it is.
    """
    if not isinstance(estimate, dict):
        return estimate
    return f"{estimate['mean']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}]"


def attack_names(results):
    """The attacks scored in a pipeline results dict, in run order.

    Args:
        results: The pipeline's results dict (as in results.json).

    Returns:
        A list of attack names.
    """
    return list(next(iter(results["defenses"].values()))["attacks"])


def uniform_chance(results):
    """Top-1 accuracy of guessing uniformly among the attacked classes.

    Every attack is scored on the same attacked classes, so this is every attack's chance,
    whatever the number of classes the evaluation model knows.

    Args:
        results: The pipeline's results dict (`attacked_classes`).

    Returns:
        1 / the number of attacked classes.
    """
    return 1.0 / results["attacked_classes"]


def works(scores, chance, lookup, judge="aa1"):
    """Whether an attack shows leakage: its top-1 is above chance and above the lookup floor.

    "Above" is read conservatively, interval against interval: the lower end of the attack's
    top-1 interval must exceed both uniform chance and the upper end of the lookup baseline's
    top-1 interval on the same target, both by the same judge. The top-1 of the attack's
    un-optimised starting samples (`chance_aa1`) is no gate, only a diagnostic column. The
    lookup never passes against itself.

    Args:
        scores: One attack's summary against one model (`judge` as `Estimate.as_dict()`).
        chance: Uniform chance among the attacked classes, see `uniform_chance`.
        lookup: The lookup baseline's summary against the same model (`judge` likewise).
        judge: The top-1 of which judge, a key of `JUDGES`.

    Returns:
        True when `scores[judge]["low"] > max(chance, lookup[judge]["high"])`.
    """
    return scores[judge]["low"] > max(chance, lookup[judge]["high"])


def floor_mark(scores, chance, lookup, judge="aa1"):
    """`AT_FLOOR` for a top-1 at or below the floors of `works`, else an empty string.

    Args:
        scores: One attack's summary against one model.
        chance: Uniform chance among the attacked classes.
        lookup: The lookup baseline's summary against the same model.
        judge: The top-1 of which judge, a key of `JUDGES`.

    Returns:
        `AT_FLOOR`, or "" for an attack above the floors, one that did not run, or the
        lookup itself (the floor).
    """
    if scores is lookup or not_applicable(scores) or works(scores, chance, lookup, judge):
        return ""
    return AT_FLOOR


def judges(results):
    """The judges that scored a pipeline's results: `aa1`, and `pixel_aa1` where it ran.

    Args:
        results: The pipeline's results dict.

    Returns:
        A list of keys of `JUDGES`.
    """
    scored = [summary for scores in results["defenses"].values()
              for summary in scores["attacks"].values()]
    return [judge for judge in JUDGES
            if any(summary.get(judge) is not None for summary in scored)]


def judged_leakage(results):
    """Per judge, the `(attack, defense)` pairs where the attack shows leakage (`works`).

    Args:
        results: The pipeline's results dict.

    Returns:
        `{judge: set of (attack, defense)}` over the attacks that ran, the lookup left out.
    """
    chance = uniform_chance(results)
    return {
        judge: {(attack, defense)
                for defense, scores in results["defenses"].items()
                for attack, summary in scores["attacks"].items()
                if attack != LOOKUP and not not_applicable(summary)
                and works(summary, chance, scores["attacks"][LOOKUP], judge)}
        for judge in judges(results)
    }


def verdicts(results, baseline="none"):
    """Compares each defense's top-1 attack accuracy with the undefended model's.

    The verdict words come from `trapmid_tf.metrics.intervals.compare` on the per-seed,
    per-reconstruction top-1 outcomes (defense and baseline paired by training seed) and
    `intervals.decide`, Holm-corrected over every comparison that gets a verdict word here
    (those not gated by `NOT_FORMED`, `JUDGES_DISAGREE` or `WORKS_ON_BASELINE`): a word is
    given only where the corrected test supports it, and with one seed there is none
    (`intervals.NEEDS_SEEDS`). With two judges (`judges`) each judge is tested so, Holm over
    its own comparisons, and a verdict needs them to agree: a row reads `JUDGES_DISAGREE`
    where they disagree on whether the attack shows leakage on the baseline (`works`), and
    `JUDGES_DISAGREE` with each judge's word where their words differ. The lookup and the
    transfer null are references, not attacks to defend against: they get no row.

    Args:
        results: The pipeline's results dict.
        baseline: The undefended defense's name.

    An attack that does not apply to the baseline is compared with the baseline under the
    attack it extends (`BASELINE_ATTACKS`; the row's attack reads "attack vs base"); rows of
    an attack that did not apply have no numbers and say why.

    Returns:
        A list of `(attack, defense, baseline aa1, defended aa1, ratio, verdict)`, the
        accuracies and the ratio defended / baseline as "mean [low, high]" text (the ratio
        None with one seed; both by the evaluation model), verdict one of
        `WORKS_ON_BASELINE`, `NOT_FORMED`, `JUDGES_DISAGREE` (alone, or with each judge's
        word), `intervals.VERDICT_WORDS`, `intervals.NEEDS_SEEDS` or a "not applicable" text.
    """
    from trapmid_tf.metrics.intervals import compare, decide

    defenses = results["defenses"]
    if baseline not in defenses:
        return []
    judged = judges(results)
    rows, tested = [], []
    for attack in attack_names(results):
        if attack in (LOOKUP, TRANSFER_NULL):  # references, not attacks to defend against
            continue
        label, reference = attack, defenses[baseline]["attacks"][attack]
        base = BASELINE_ATTACKS.get(attack)
        if not_applicable(reference) and base in defenses[baseline]["attacks"]:
            label, reference = f"{attack} vs {base}", defenses[baseline]["attacks"][base]
        for defense, scores in defenses.items():
            if defense == baseline:
                continue
            defended = scores["attacks"][attack]
            skipped = not_applicable(defended) or not_applicable(reference)
            if skipped:
                rows.append((label, defense, top1_text(reference), top1_text(defended), None,
                             skipped))
                continue
            found = {judge: compare(defended["groups"][_group(judge)],
                                    reference["groups"][_group(judge)],
                                    scores["seeds"], defenses[baseline]["seeds"])
                     for judge in judged}
            leaks = {works(reference, uniform_chance(results),
                           defenses[baseline]["attacks"][LOOKUP], judge) for judge in judged}
            if trapdoor_not_formed(scores):
                word = NOT_FORMED
            elif len(leaks) > 1:
                word = JUDGES_DISAGREE
            elif not leaks.pop():
                word = WORKS_ON_BASELINE
            else:
                word, tested = None, tested + [(len(rows), found)]
            ratio = found["aa1"].ratio
            rows.append((
                label, defense, estimate_text(reference["aa1"]), estimate_text(defended["aa1"]),
                None if ratio is None else estimate_text(ratio.as_dict()), word,
            ))
    words = {judge: [decided.word for decided in decide([found[judge] for _, found in tested])]
             for judge in judged}
    for position, (index, _) in enumerate(tested):
        rows[index] = rows[index][:-1] + (_agreed({j: words[j][position] for j in judged}),)
    return rows


def _group(judge):
    """The per-reconstruction outcome behind a judge's top-1 (`summary.PER_IMAGE_METRICS`)."""
    from trapmid_tf.experiments.summary import PER_IMAGE_METRICS

    return {name: key for key, name in PER_IMAGE_METRICS.items()}[judge]


def _agreed(words):
    """The verdict of `{judge: word}`: the word all judges give, else `JUDGES_DISAGREE`."""
    if len(set(words.values())) == 1:
        return next(iter(words.values()))
    return f"{JUDGES_DISAGREE} (" + ", ".join(
        f"{JUDGES[judge]}: {word}" for judge, word in words.items()) + ")"


def paper_comparison(results, baseline="none"):
    """Our defended / undefended top-1 ratio beside the paper's, per defense and attack.

    Args:
        results: The pipeline's results dict.
        baseline: The undefended defense's name.

    Returns:
        Rows `(attack, defense, our ratio "mean [low, high]", paper ratio, agreement)` for
        the defenses and attacks the paper reports; our ratio is `intervals.compare`'s
        (paired by training seed); agreement says whether the paper's ratio lies inside our
        interval, below it or above it. With one seed there is no interval: our ratio is
        None and agreement `intervals.NEEDS_SEEDS`.
    """
    from trapmid_tf.metrics.intervals import NEEDS_SEEDS, compare

    defenses = results["defenses"]
    if baseline not in defenses:
        return []
    rows = []
    for attack in attack_names(results):
        if attack not in PAPER_TOP1[baseline]:
            continue
        reference = defenses[baseline]["attacks"][attack]["groups"]["top1"]
        for defense, scores in defenses.items():
            if defense == baseline or defense not in PAPER_TOP1:
                continue
            ours = compare(scores["attacks"][attack]["groups"]["top1"], reference,
                           scores["seeds"], defenses[baseline]["seeds"]).ratio
            paper = PAPER_TOP1[defense][attack] / PAPER_TOP1[baseline][attack]
            if ours is None:
                rows.append((attack, defense, None, round(paper, 3), NEEDS_SEEDS))
                continue
            if ours.low <= paper <= ours.high:
                agreement = "inside our interval"
            else:
                agreement = "ours higher" if ours.low > paper else "ours lower"
            rows.append((attack, defense, estimate_text(ours.as_dict()), round(paper, 3),
                         agreement))
    return rows


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
        The table as a string: per defense, the first seed's prior and inversion steps.
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


def attack_grid(private_images, private_labels, reconstructions, classes):
    """Grid of a row per class: private samples, then each defense's reconstructions.

    Args:
        private_images, private_labels: The private training images and labels.
        reconstructions: `{defense: {"images", "labels"}}` of one attack, in column order.
        classes: The classes to show, one row each.

    Returns:
        A uint8 picture (see `labelled_grid`): columns named "private" and by defense, rows
        by class.
    """
    private = [private_images[private_labels == c][:GRID_PRIVATE_SAMPLES] for c in classes]
    groups = [("private", private)] + [
        (defense, [stored["images"][stored["labels"] == c] for c in classes])
        for defense, stored in reconstructions.items()
    ]
    return labelled_grid(groups, [f"class {c}" for c in classes])


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
    import os

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


def _attack_cells(scores, chance, lookup):
    """The `ATTACK_COLUMNS` cells of one attack against one model, top-1s marked `AT_FLOOR`
    (a judge that did not run, None, leaves its cell empty)."""
    cells = [estimate_text(scores.get(column)) for column in ATTACK_COLUMNS]
    for judge in JUDGES:
        if scores.get(judge) is not None:
            cells[ATTACK_COLUMNS.index(judge)] += floor_mark(scores, chance, lookup, judge)
    return cells


def _convergence_lines(results):
    """The measured-convergence paragraph and a blank line, or nothing without a measurement."""
    from trapmid_tf.experiments.measured_convergence import gap_paragraph

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
    from trapmid_tf.metrics.intervals import VERDICT_WORDS

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


def judges_lines(results):
    """The pixel judge's top-1 table, what the judges and the transfer null are, and where
    the judges disagree.

    Args:
        results: The pipeline's results dict.

    Returns:
        A list of lines, ending in a blank one: with the pixel judge its `summary_table`,
        then `JUDGES_RULE`, then the `(attack, defense)` pairs whose leakage (`works`) the
        judges disagree on (or that they agree on all) and the targets on which each judge
        accepts the transfer null; without it, a line saying that it did not run.
    """
    judged, leakage = judges(results), judged_leakage(results)
    lines = []
    if "pixel_aa1" in judged:
        lines += ["Top-1 by the pixel judge, under the same rule with its own floors:", "",
                  summary_table(results, "pixel_aa1")]
    lines += [JUDGES_RULE, ""]
    if len(judged) == 1:
        found = ("The pixel judge did not run (it judges only images of at most "
                 f"{PIXEL_JUDGE_MAX_SIDE} pixels a side): the verdicts rest on the evaluation "
                 "model alone.")
    else:
        split = sorted(leakage["aa1"] ^ leakage["pixel_aa1"])
        found = ("The judges disagree on leakage for: "
                 + ", ".join(f"{attack} on {defense}" for attack, defense in split) + "."
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
        f"{_cell(evaluation['accuracy'])}. FID and PRDC features: `{results['fid_features']}`.",
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
                ["defense"] + list(ATTACK_COLUMNS),
                [[d] + (_attack_cells(entries[d], uniform, scored[d]["attacks"][LOOKUP])
                        if d in ran
                        else [not_applicable(entries[d])] + [None] * (len(ATTACK_COLUMNS) - 1))
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
