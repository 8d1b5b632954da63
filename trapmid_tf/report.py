"""Image grids (PNG) and the markdown tables of the privacy report."""

import numpy as np
from PIL import Image

from trapmid_tf.files import atomic_path

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


# An attack "works" against a model when its top-1 accuracy beats the higher of its two
# chance levels (uniform guessing; the un-optimised starting samples) by this margin.
CLEAR_MARGIN = 0.2
GRID_PRIVATE_SAMPLES = 3
ATTACK_COLUMNS = (
    "aa1", "aa5", "knn", "fid", "precision", "recall", "density", "coverage",
    "trapdoor_similarity", "trapdoor_detection", "chance_aa1",
)


# How a Trap-MID target whose trapdoor did not form is shown (train_target's results.json
# records `trapdoor_formed`): its numbers are not a defense's.
NOT_FORMED = "trapdoor not formed: no protection expected"


def trapdoor_not_formed(scores):
    """Whether a defense's scores say its trapdoor did not form.

    Args:
        scores: One defense's entry of the pipeline's results (`trapdoor_formed` optional).

    Returns:
        True only when `trapdoor_formed` is recorded as False.
    """
    return scores.get("trapdoor_formed") is False


def attack_names(results):
    """The attacks scored in a pipeline results dict, in run order.

    Args:
        results: The pipeline's results dict (as in results.json).

    Returns:
        A list of attack names.
    """
    first = next(iter(results["defenses"].values()))
    return [name for name, value in first.items() if isinstance(value, dict)]


def uniform_chance(results):
    """Top-1 accuracy of uniform guessing by the evaluation model.

    Args:
        results: The pipeline's results dict.

    Returns:
        1 / the evaluation model's number of classes.
    """
    return 1.0 / results["evaluation_model"]["classes"]


def works(scores, uniform):
    """Whether an attack's top-1 accuracy clearly beats both of its chance levels.

    Args:
        scores: One attack's metrics against one model (with aa1 and chance_aa1).
        uniform: Uniform chance, see `uniform_chance`.

    Returns:
        True when aa1 >= max(uniform, chance_aa1) + `CLEAR_MARGIN`.
    """
    return scores["aa1"] >= max(uniform, scores["chance_aa1"]) + CLEAR_MARGIN


def verdicts(results, baseline="none"):
    """Compares each defense's top-1 attack accuracy with the undefended model's.

    Args:
        results: The pipeline's results dict.
        baseline: The undefended defense's name.

    Returns:
        A list of `(attack, defense, baseline_aa1, aa1, verdict)` with verdict one of
        "attack fails on the baseline", "at most half", "lower", "not lower", or `NOT_FORMED`
        for a Trap-MID target whose trapdoor did not form.
    """
    defenses = results["defenses"]
    if baseline not in defenses:
        return []
    rows = []
    for attack in attack_names(results):
        reference = defenses[baseline][attack]
        for defense, scores in defenses.items():
            if defense == baseline:
                continue
            aa1 = scores[attack]["aa1"]
            if trapdoor_not_formed(scores):
                verdict = NOT_FORMED
            elif not works(reference, uniform_chance(results)):
                verdict = "attack fails on the baseline"
            elif aa1 <= reference["aa1"] / 2:
                verdict = "at most half"
            elif aa1 < reference["aa1"]:
                verdict = "lower"
            else:
                verdict = "not lower"
            rows.append((attack, defense, reference["aa1"], aa1, verdict))
    return rows


def summary_table(results):
    """Markdown table: per defense natural/trapdoor accuracy and each attack's top-1.

    A defense whose trapdoor did not form is named with `NOT_FORMED`.

    Args:
        results: The pipeline's results dict.

    Returns:
        The table as a string.
    """
    attacks = attack_names(results)
    rows = [
        [f"{defense} ({NOT_FORMED})" if trapdoor_not_formed(scores) else defense,
         scores["accuracy"], scores["trapdoor_accuracy"]]
        + [scores[attack]["aa1"] for attack in attacks]
        for defense, scores in results["defenses"].items()
    ]
    header = ["defense", "accuracy", "trapdoor acc."] + [f"{a} aa1" for a in attacks]
    return markdown_table(header, rows)


def attack_grid(private_images, private_labels, reconstructions, classes):
    """Grid of a row per class: private samples, then each defense's reconstructions.

    Args:
        private_images, private_labels: The private training images and labels.
        reconstructions: `{defense: {"images", "labels"}}` of one attack, in column order.
        classes: The classes to show, one row each.

    Returns:
        A uint8 picture (see `image_grid`).
    """
    rows = []
    for c in classes:
        row = list(private_images[private_labels == c][:GRID_PRIVATE_SAMPLES])
        for stored in reconstructions.values():
            row += list(stored["images"][stored["labels"] == c])
        rows.append(row)
    return image_grid(rows)


def write(out, results, private_images, private_labels, reconstructions, triggers):
    """Writes `out/report.md` and its PNG grids under `out/grids/`.

    Args:
        out: The pipeline's output folder.
        results: The pipeline's results dict (as in results.json).
        private_images, private_labels: Private training images and labels (numpy).
        reconstructions: `{defense: {attack: {"images", "labels", ...}}}`.
        triggers: `{defense: trigger array (classes, H, W, C)}` of the Trap-MID targets.

    Returns:
        `{name: picture}` of every grid written (for TensorBoard).
    """
    import os

    grids = {}
    attacks = attack_names(results)
    classes = sorted(set(next(iter(reconstructions.values()))[attacks[0]]["labels"]))
    for attack in attacks:
        grids[attack] = attack_grid(
            private_images, private_labels,
            {defense: stored[attack] for defense, stored in reconstructions.items()}, classes,
        )
    for defense, array in triggers.items():
        grids[f"triggers_{defense}"] = image_grid([list(array)])
    for name, picture in grids.items():
        secret = name.startswith("triggers_")
        save_png(os.path.join(out, "grids", f"{name}.png"), picture, secret=secret)
    with atomic_path(os.path.join(out, "report.md")) as temporary:
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(report_markdown(results, list(reconstructions), attacks, triggers))
    return grids


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
    per_class = results["settings"]["per_class"]
    lines = [
        "# Model-inversion privacy report",
        "",
        f"Dataset `{results['dataset']}` (public split `{results['public_split']}`), preset "
        f"`{results['preset']}`, {results['seconds']:.0f} s. Evaluation model: "
        f"`{evaluation['architecture']}` on {evaluation['classes']} classes, test accuracy "
        f"{evaluation['accuracy']:.3f}. FID and PRDC features: `{results['fid_features']}`.",
        "",
        "Chance levels: uniform guessing scores top-1 "
        f"{uniform:.3f} (1/{evaluation['classes']}); the column `chance_aa1` is the "
        "evaluation model's top-1 hit rate on each attack's un-optimised starting samples. "
        f"An attack *works* when its top-1 beats both by {CLEAR_MARGIN:.1f}.",
        "",
        "## Top-1 attack accuracy",
        "",
        summary_table(results),
        "## Defenses against the undefended model",
        "",
        markdown_table(
            ["attack", "defense", "undefended aa1", "defended aa1", "verdict"],
            verdicts(results),
        ),
        "Natural-accuracy cost (undefended minus defended test accuracy, points): "
        + ", ".join(
            f"{d} {100 * (results['defenses']['none']['accuracy'] - s['accuracy']):+.1f}"
            for d, s in results["defenses"].items() if d != "none"
        ) if "none" in results["defenses"] else "",
        "",
    ]
    for attack in attacks:
        lines += [
            f"## {attack}",
            "",
            f"![{attack}](grids/{attack}.png)",
            "",
            f"Each row is a class: {GRID_PRIVATE_SAMPLES} private training images, then "
            f"{per_class} reconstructions for each of: {', '.join(defenses)}.",
            "",
            markdown_table(
                ["defense"] + list(ATTACK_COLUMNS),
                [[d] + [results["defenses"][d][attack][c] for c in ATTACK_COLUMNS]
                 for d in defenses],
            ),
        ]
    for defense in triggers:
        lines += [f"## Triggers of {defense} (secret)", "",
                  f"![triggers](grids/triggers_{defense}.png)", ""]
    return "\n".join(lines)
