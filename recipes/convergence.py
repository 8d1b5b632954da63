"""Is an attack budget converged? The pipeline at 1x, 2x and 4x its budgets, top-1 tabulated.

Example:
    python recipes/convergence.py --preset=quick --scales=1,2,4 --out=runs/convergence

Runs `trapmid-pipeline` once per scale (`--budget_scale`, which multiplies every prior and
inversion step budget) against the defenses of --defenses (default: the unprotected target
alone), each into --out/x<scale>/ (stages reused as the pipeline reuses them), then writes
--out/convergence.json and --out/convergence.md: per attack and scale the top-1 attack accuracy
with its interval, and the change from each scale to the next with its interval. A budget is converged for an
attack when doubling it raises top-1 by at most --tolerance. Any other flag is the pipeline's
and is passed on.
"""

import json
import os
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS

PIPELINE = (sys.executable, "-m", "trapmid_tf.cli.pipeline")


def convergence_rows(top1_by_scale, tolerance):
    """Per attack and scale: top-1, its gain over the previous scale, and a verdict.

    Args:
        top1_by_scale: `{scale: {attack: summary}}`, scales increasing; a summary holds `aa1`
            (`Estimate.as_dict()`) and `groups["top1"]` (per-seed top-1 outcomes), as the
            pipeline's results.json has them.
        tolerance: The largest gain (in top-1) that counts as converged.

    Returns:
        Rows `(attack, scale, top-1 "mean [low, high]", gain "mean [low, high]" or None,
        verdict)`; the gain is the difference of the means with its bootstrap interval
        (`intervals.bootstrap_difference`: seeds, then reconstructions, resampled on both
        sides). The verdict of a scale says whether its budget was converged: the mean gain
        of the next (doubled) scale was at most `tolerance` ("converged"), or not ("not
        converged"), or None for the last scale.
    """
    from trapmid_tf.metrics.intervals import bootstrap_difference
    from trapmid_tf.report import estimate_text

    scales = sorted(top1_by_scale)
    rows = []
    for attack in top1_by_scale[scales[0]]:
        summaries = [top1_by_scale[scale][attack] for scale in scales]
        gains = [None] + [
            bootstrap_difference(later["groups"]["top1"], earlier["groups"]["top1"])
            for earlier, later in zip(summaries, summaries[1:])
        ]
        for index, scale in enumerate(scales):
            verdict = None
            if index + 1 < len(scales):
                verdict = "converged" if gains[index + 1].mean <= tolerance else "not converged"
            gain = None if gains[index] is None else estimate_text(gains[index].as_dict())
            rows.append((attack, scale, estimate_text(summaries[index]["aa1"]), gain, verdict))
    return rows


def define_flags():
    """Defines this recipe's flags; only when it runs as a script (--defense is also
    train_target's flag, which importing the pipeline defines)."""
    flags.DEFINE_list("scales", ["1", "2", "4"], "Budget multipliers, increasing.")
    flags.DEFINE_string("defense", "none", "The defense whose target is attacked.")
    flags.DEFINE_float("tolerance", 0.05, "Largest top-1 gain from doubling a converged budget.")
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
    from trapmid_tf.attacks.suite import LOOKUP
    from trapmid_tf.files import atomic_path, write_json
    from trapmid_tf.report import markdown_table

    top1 = {}
    for scale in scales:
        out = os.path.join(FLAGS.out, f"x{scale}")
        command = [*PIPELINE, *passed_on, f"--defenses={FLAGS.defense}",
                   f"--budget_scale={scale}", f"--out={out}"]
        print(f"convergence: budgets x{scale} -> {out}", flush=True)
        subprocess.run(command, check=True)
        with open(os.path.join(out, "results.json"), encoding="utf-8") as stream:
            attacks = json.load(stream)["defenses"][FLAGS.defense]["attacks"]
        # The lookup baseline, which every pipeline runs, has no budget to converge.
        top1[scale] = {name: summary for name, summary in attacks.items() if name != LOOKUP}
    rows = convergence_rows(top1, FLAGS.tolerance)
    write_json(os.path.join(FLAGS.out, "convergence.json"), dict(
        defense=FLAGS.defense, tolerance=FLAGS.tolerance,
        top1={str(scale): {name: summary["aa1"] for name, summary in attacks.items()}
              for scale, attacks in top1.items()},
        rows=[list(row) for row in rows],
    ))
    table = markdown_table(["attack", "budget scale", "top-1", "gain", "budget"], rows)
    with atomic_path(os.path.join(FLAGS.out, "convergence.md")) as temporary:
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(table)
    print(table)


if __name__ == "__main__":
    define_flags()
    try:
        main(FLAGS(sys.argv, known_only=True)[1:])
    except app.UsageError as error:
        sys.exit(f"convergence: {error}")
