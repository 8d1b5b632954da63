"""The privacy report: trains targets with each defense, attacks them all, evaluates, reports.

Example:
    trapmid-pipeline --dataset=digits --preset=quick --out=runs/pipeline

Stages (each reused when --out already holds it finished with the same settings; --overwrite
redoes them): per training seed one target per defense (trapmid-train; any of its
flags except --defense, --seed and --out applies to every target; every seed shares the
private/public split of --seed), the evaluation model, the held-out judge (digit datasets
only: IR-18, or VGG16-BN against IR-18 targets, trained for 4x --evaluation_epochs on 80% of
each class of the judges' references, drawn with --seed, and tested on the rest), per training
seed the GMI prior (trained with that seed on the public split, shared by that seed's
targets), per target the priors that depend on it (KED-MI, PLG-MI, LOMMA; each PLG-MI++
attack's own, below) and every attack, then the evaluation. Writes into --out: flags.json, results.json, report.md, grids/*.png (private
samples next to each defense's reconstructions; the triggers), TensorBoard logs under logs/,
and each stage's folder (targets/<defense>/seed_<s>/..., evaluator/, held_out_judge/,
priors/gmi/seed_<s>/). Scores are recomputed from the stored reconstructions on every run, so
a run folder made before the held-out judge gains it by re-running the same command.

Budgets are optimiser steps: generator steps of the GAN priors, distillation steps of the LOMMA
surrogates, inversion iterations; results.json records the steps every stage ran.
--budget_scale multiplies all of them (recipes/convergence.py compares 1x, 2x, 4x).

Every target is also attacked by the lookup baseline (always, whatever --attacks says): per
class the public images the target is surest of, no prior and no optimisation. The report
credits an attack with leakage only above it and above chance (1 / attacked classes). And by
the transfer null (always too): per class random public images moved 10 signed-gradient steps
of 2/255 toward the class on the target; a judge that accepts them measures transfer, not
leakage. Images of at most 32 pixels a side are also judged in pixel space (the class of the
nearest reference image), and the digit datasets by the held-out judge; a verdict needs all
judges to agree. The judges' references are images no target trains on: the private test split
and, for MNIST and Fashion-MNIST, the test file's images of classes 5-9 (the attacker's public
images come from the training file), so that those judges can call a public look-alike by its
own class; an answer outside the attacked classes is a miss.

Attackers who know the defense (not run by default; name them in --attacks, see
docs/adaptive_attacks.md): plgmi_adaptive (PLG-MI++ with the signatures of the target's own
triggers, computed as the defender computes them; "not applicable: no trapdoor" against a
target without triggers), plgmi_adaptive_estimated (PLG-MI++ estimating the signatures from a
first plain PLG-MI round on the plain PLG-MI prior), both with the penalty weight
--adaptive_weight and --plgmi_iterations steps per round, each searching its own PLG-MI prior
(priors/<attack>/ of a target: the plain prior's budget and seed, the penalty also in its
top-n selection and generator loss); trigger_recovery (one blend pattern per reconstruction on
the public images, --recovery_iterations steps at the blend weight --recovery_alpha; its
patterns are also compared with the target's true triggers); brep_mi (label-only, on the GMI
prior, at most --brep_iterations steps). Every Trap-MID target's report also holds its trigger
leakage: the evaluation model's top-1 on the triggers and on their class-specific parts.

A Trap-MID target whose trapdoor did not form is trained, attacked and marked in the report;
with --require_trapdoor (on in the quick, strong and full presets) the pipeline then exits non-zero.

Presets: tiny (a smoke test, about a minute), quick (`make demo`, one seed, far below the
reference's budgets; its distance from convergence is measured in the README), strong (the
README's protection claims: larger budgets, 5 seeds), full (the reference's budgets exactly,
`trapmid_tf.attacks.REFERENCE_BUDGETS`, 3 seeds, 20 reconstructions per class; days on a CPU).
"""

import os
import sys

from absl import app, flags

from trapmid_tf import report
from trapmid_tf.cli import budgets, console
from trapmid_tf.cli import train_target
from trapmid_tf.experiments import pipeline
from trapmid_tf.experiments.presets import VARIANTS
from trapmid_tf.experiments.target_stages import failed_trapdoors, target_configs

FLAGS = flags.FLAGS

# The preset, budget, judge and --overwrite flags are trapmid_tf.cli.budgets' (shared with
# trapmid-audit).
flags.DEFINE_list("defenses", None,
                  "Defenses to train and attack (default: preset); train_target's names and "
                  f"{sorted(VARIANTS)}.")
flags.DEFINE_integer("target_epochs", None, "Target epochs (default: preset, else train_target's).")



def settings_from_flags():
    """The pipeline settings the flags give (`pipeline.pipeline_settings`).

    Raises:
        app.UsageError: for an unknown defense or attack, a bad number or a missing --out.
    """
    if FLAGS.defense != "trapmid" or FLAGS["defense"].present:
        raise app.UsageError("--defense is train_target's; use --defenses here.")
    if not FLAGS.out:
        raise app.UsageError("--out must be set.")
    return budgets.settings_from_flags()


def run_from_flags():
    """The `pipeline.PipelineRun` the flags describe."""
    return pipeline.PipelineRun(
        out=FLAGS.out, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, seed=FLAGS.seed,
        preset=FLAGS.preset, public_split=FLAGS.public_split,
        target_settings=train_target.flag_settings(), overwrite=FLAGS.overwrite,
        fid_weights=FLAGS.fid_weights, evaluation_model=FLAGS.evaluation_model,
        verbose=console.verbose(),
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    settings = settings_from_flags()
    run = run_from_flags()
    try:
        configs = target_configs(run, settings)
    except (ValueError, FileNotFoundError) as error:
        raise app.UsageError(console.flag_message(str(error))) from error
    console.start()
    results = pipeline.run_pipeline(run, settings, configs)
    print(report.summary_table(results))
    print(f"report: {os.path.join(run.out, 'report.md')} ({results['seconds']:.0f} s)")
    failed = failed_trapdoors(results)
    if failed and settings.require_trapdoor:
        raise SystemExit(
            f"pipeline: the trapdoor did not form for {failed} (in at least one seed): no "
            "protection expected from them; see the report. --norequire_trapdoor accepts this."
        )


def run():
    """The console command `trapmid-pipeline`."""
    console.run_command(main, sys.modules[__name__], budgets, train_target)


if __name__ == "__main__":
    run()
