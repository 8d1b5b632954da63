"""Is an attack budget converged? The pipeline at 1x, 2x and 4x its budgets, top-1 tabulated.

Example:
    python recipes/convergence.py --preset=quick --scales=1,2,4 --out=runs/convergence

Runs `trapmid-pipeline` once per scale (`--budget_scale`, which multiplies every prior and
inversion step budget) against the targets of --defenses (default: the unprotected target and
Trap-MID, so that a budget is also checked against a protected target), each into
--out/x<scale>/ (stages reused as the pipeline reuses them; every scale runs the same training
seeds), then writes --out/convergence.json and --out/convergence.md: per defense, attack and
scale the top-1 attack accuracy with its interval, and the gain from each scale to the next,
paired by training seed: the mean of the per-seed top-1 differences with its Student t
interval on seeds - 1 degrees of freedom (`trapmid_tf.metrics.compare`). The rule, judged on
the upper end of the gain interval: a scale's budget is converged for an attack when the upper
end of the next scale's gain is at most --tolerance, not converged when its lower end is above
--tolerance, undecided otherwise; with one training seed there is no interval and no verdict
("needs 2+ seeds": use --seeds=0,1,2). Any other flag is the pipeline's and is passed on.
"""

import json
import os
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS

PIPELINE = (sys.executable, "-m", "trapmid_tf.cli.pipeline")
# The verdicts on a budget (`convergence_verdict`).
CONVERGED = "converged"
NOT_CONVERGED = "not converged"
UNDECIDED = "undecided"


def rule_text(tolerance):
    """The convergence rule in words, for convergence.md and convergence.json."""
    from trapmid_tf.metrics.intervals import NEEDS_SEEDS

    return (
        "Gain: top-1 at a budget scale minus top-1 at the previous scale, paired by training "
        "seed (every scale runs the same seeds): the mean of the per-seed differences with its "
        "95% Student t interval on seeds - 1 degrees of freedom (`trapmid_tf.metrics.compare`). "
        f"A scale's budget is converged when the upper end of the next scale's gain is at most "
        f"{tolerance}, not converged when its lower end is above {tolerance}, undecided "
        f"otherwise; with one seed there is no interval and no verdict (\"{NEEDS_SEEDS}\")."
    )


def convergence_verdict(gain, tolerance):
    """Whether a budget was converged, judged on the interval of the next scale's gain.

    Args:
        gain: The paired gain (`compare(...).difference`, an `Estimate`), or None with one
            seed.
        tolerance: The largest gain (in top-1) that counts as converged.

    Returns:
        `CONVERGED` when `gain.high <= tolerance`, `NOT_CONVERGED` when `gain.low >
        tolerance`, `UNDECIDED` otherwise; `intervals.NEEDS_SEEDS` without an interval.
    """
    from trapmid_tf.metrics.intervals import NEEDS_SEEDS

    if gain is None:
        return NEEDS_SEEDS
    if gain.high <= tolerance:
        return CONVERGED
    return NOT_CONVERGED if gain.low > tolerance else UNDECIDED


def convergence_rows(results_by_scale, tolerance):
    """Per defense, attack and scale: top-1, its paired gain over the previous scale, a verdict.

    Args:
        results_by_scale: `{scale: {defense: results}}`, each `results` as the pipeline's
            results.json holds a defense: `seeds` (the training seeds, in order) and
            `attacks` (`{attack: summary}`; a summary has `aa1`, an `Estimate.as_dict()`, and
            `groups["top1"]`, the per-seed 0/1 top-1 outcomes). The lookup baseline (no
            budget) and attacks that did not apply to a defense are left out.
        tolerance: The largest gain (in top-1) that counts as converged.

    Returns:
        Rows `(defense, attack, scale, top-1 "mean [low, high]", gain or None, verdict or
        None)`, scales increasing. The gain of a scale over the previous one pairs the seeds
        both ran (`trapmid_tf.metrics.compare`): "mean [low, high]" of the per-seed
        differences, or "mean (1 seed)" without an interval, None for the first scale. The
        verdict of a scale says whether its budget was converged (`convergence_verdict` on
        the next scale's gain), None for the last scale.
    """
    from trapmid_tf.attacks.suite import LOOKUP, TRANSFER_NULL
    from trapmid_tf.metrics.evaluator import NOT_APPLICABLE
    from trapmid_tf.metrics.intervals import compare
    from trapmid_tf.report import estimate_text

    scales = sorted(results_by_scale)
    rows = []
    for defense, first in results_by_scale[scales[0]].items():
        runs = [results_by_scale[scale][defense] for scale in scales]
        for attack, summary in first["attacks"].items():
            if attack in (LOOKUP, TRANSFER_NULL) or NOT_APPLICABLE in summary:
                continue
            gains = [None] + [
                compare(later["attacks"][attack]["groups"]["top1"],
                        earlier["attacks"][attack]["groups"]["top1"],
                        later["seeds"], earlier["seeds"])
                for earlier, later in zip(runs, runs[1:])
            ]
            for index, scale in enumerate(scales):
                verdict = None
                if index + 1 < len(scales):
                    verdict = convergence_verdict(gains[index + 1].difference, tolerance)
                rows.append((defense, attack, scale,
                             estimate_text(runs[index]["attacks"][attack]["aa1"]),
                             _gain_text(gains[index]), verdict))
    return rows


def _gain_text(gain):
    """A paired gain (`Comparison` of a scale with the previous one) for the table, or None."""
    from trapmid_tf.report import estimate_text

    if gain is None:
        return None
    if gain.difference is None:
        return f"{gain.defended.mean - gain.baseline.mean:.3f} (1 seed)"
    return estimate_text(gain.difference.as_dict())


def convergence_markdown(rows, tolerance):
    """convergence.md: the rule, then one table per defense.

    Args:
        rows: `convergence_rows`.
        tolerance: The tolerance the verdicts used.

    Returns:
        Markdown text.
    """
    from trapmid_tf.report import markdown_table

    blocks = [rule_text(tolerance) + "\n"]
    for defense in dict.fromkeys(row[0] for row in rows):
        table = markdown_table(["attack", "budget scale", "top-1", "gain", "budget"],
                               [row[1:] for row in rows if row[0] == defense])
        blocks.append(f"## {defense}\n\n{table}")
    return "\n".join(blocks)


def define_flags():
    """Defines this recipe's flags; only when it runs as a script (--defenses is also
    the pipeline's flag, which importing the pipeline's command defines)."""
    flags.DEFINE_list("scales", ["1", "2", "4"], "Budget multipliers, increasing.")
    flags.DEFINE_list("defenses", ["none", "trapmid"],
                      "The defenses whose targets are attacked (the pipeline's names).")
    flags.DEFINE_float("tolerance", 0.05,
                       "Largest top-1 gain from doubling a converged budget (upper end of its "
                       "interval).")
    flags.DEFINE_string("out", None, "Output folder.")


def main(passed_on):
    """Runs the pipeline at every scale and writes the tables.

    Args:
        passed_on: Command-line flags that are not this recipe's, for the pipeline.
    """
    if any(not arg.startswith("--") for arg in passed_on):
        raise app.UsageError(f"Unexpected arguments: {passed_on}")
    try:
        scales = sorted(int(scale) for scale in FLAGS.scales)
    except ValueError as error:
        raise app.UsageError(f"--scales must list integers; received {FLAGS.scales}.") from error
    if not scales or scales[0] < 1:
        raise app.UsageError(f"--scales must list integers >= 1; received {FLAGS.scales}.")
    if not FLAGS.out:
        raise app.UsageError("--out must be set.")
    if not FLAGS.defenses:
        raise app.UsageError("--defenses must list at least one defense; received none.")
    from trapmid_tf.files import atomic_path, write_json

    results = {}
    for scale in scales:
        out = os.path.join(FLAGS.out, f"x{scale}")
        command = [*PIPELINE, *passed_on, f"--defenses={','.join(FLAGS.defenses)}",
                   f"--budget_scale={scale}", f"--out={out}"]
        print(f"convergence: budgets x{scale} -> {out}", flush=True)
        subprocess.run(command, check=True)
        with open(os.path.join(out, "results.json"), encoding="utf-8") as stream:
            defenses = json.load(stream)["defenses"]
        results[scale] = {defense: defenses[defense] for defense in FLAGS.defenses}
    rows = convergence_rows(results, FLAGS.tolerance)
    write_json(os.path.join(FLAGS.out, "convergence.json"), dict(
        defenses=FLAGS.defenses, tolerance=FLAGS.tolerance, rule=rule_text(FLAGS.tolerance),
        top1={defense: {str(scale): {name: summary.get("aa1") for name, summary
                                     in results[scale][defense]["attacks"].items()}
                        for scale in scales}
              for defense in FLAGS.defenses},
        rows=[list(row) for row in rows],
    ))
    text = convergence_markdown(rows, FLAGS.tolerance)
    with atomic_path(os.path.join(FLAGS.out, "convergence.md")) as temporary:
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(text)
    print(text)


if __name__ == "__main__":
    define_flags()
    try:
        main(FLAGS(sys.argv, known_only=True)[1:])
    except app.UsageError as error:
        sys.exit(f"convergence: {error}")
