"""The privacy report: trains targets with each defense, attacks them all, evaluates, reports.

Example:
    trapmid-pipeline --dataset=digits --preset=quick --out=runs/pipeline

Stages (each reused when --out already holds it finished with the same settings; --overwrite
redoes them): per training seed one target per defense (trapmid-train; any of its
flags except --defense, --seed and --out applies to every target; every seed shares the
private/public split of --seed), the evaluation model, per training seed the GMI prior (trained
with that seed on the public split, shared by that seed's targets), per target the priors that
depend on it (KED-MI, PLG-MI, LOMMA) and every attack, then the evaluation. Writes
into --out: flags.json, results.json, report.md, grids/*.png (private samples next to each
defense's reconstructions; the triggers), TensorBoard logs under logs/, and each stage's folder
(targets/<defense>/seed_<s>/..., evaluator/, priors/gmi/seed_<s>/).

Budgets are optimiser steps: generator steps of the GAN priors, distillation steps of the LOMMA
surrogates, inversion iterations; results.json records the steps every stage ran.
--budget_scale multiplies all of them (recipes/convergence.py compares 1x, 2x, 4x).

Every target is also attacked by the lookup baseline (always, whatever --attacks says): per
class the public images the target is surest of, no prior and no optimisation. The report
credits an attack with leakage only above it and above chance (1 / attacked classes). And by
the transfer null (always too): per class random public images moved 10 signed-gradient steps
of 2/255 toward the class on the target; a judge that accepts them measures transfer, not
leakage. Images of at most 32 pixels a side are also judged in pixel space (the nearest
private test image); a verdict needs both judges to agree.

Attackers who know the defense (not run by default; name them in --attacks, see
docs/adaptive_attacks.md): plgmi_adaptive (PLG-MI++ with the signatures of the target's own
triggers, computed as the defender computes them; "not applicable: no trapdoor" against a
target without triggers), plgmi_adaptive_estimated (PLG-MI++ estimating the signatures from a
first plain PLG-MI round), both with the penalty weight --adaptive_weight and
--plgmi_iterations steps per round; trigger_recovery (one blend pattern per reconstruction on
the public images, --recovery_iterations steps at the blend weight --recovery_alpha; its
patterns are also compared with the target's true triggers); brep_mi (label-only, on the GMI
prior, at most --brep_iterations steps). Every Trap-MID target's report also holds its trigger
leakage: the evaluation model's top-1 on the triggers and on their class-specific parts.

A Trap-MID target whose trapdoor did not form is trained, attacked and marked in the report;
with --require_trapdoor (on in the quick, strong and full presets) the pipeline then exits non-zero.

Presets: tiny (a smoke test, about a minute), quick (`make demo`, one seed, far below the
reference's budgets; its distance from convergence is measured in the README), strong (the
README's protection claims: larger budgets, 3 seeds), full (the reference's budgets exactly,
`trapmid_tf.attacks.REFERENCE_BUDGETS`, 3 seeds, 20 reconstructions per class; days on a CPU).
"""

import os
import sys

from absl import app, flags

from trapmid_tf.cli import console
from trapmid_tf.cli import train_target
from trapmid_tf.experiments import pipeline
from trapmid_tf.experiments.pipeline import PRESET_KEYS, PRESETS, VARIANTS

FLAGS = flags.FLAGS

flags.DEFINE_enum("preset", "quick", sorted(PRESETS), "Budget preset; the flags below override it.")
flags.DEFINE_list("defenses", None,
                  "Defenses to train and attack (default: preset); train_target's names and "
                  f"{sorted(VARIANTS)}.")
flags.DEFINE_list("attacks", None,
                  "Attacks to run (default: the six that need no knowledge of the defense; "
                  "also plgmi_adaptive, plgmi_adaptive_estimated, trigger_recovery, brep_mi). "
                  "The lookup baseline and the transfer null always run too.")
flags.DEFINE_list("seeds", None, "Target training seeds (default: preset).")
flags.DEFINE_integer("budget_scale", 1,
                     "Multiplies every prior and inversion step budget (convergence checks).")
flags.DEFINE_integer("target_epochs", None, "Target epochs (default: preset, else train_target's).")
flags.DEFINE_integer("evaluation_epochs", None, "Evaluation-model epochs.")
flags.DEFINE_integer("gmi_steps", None, "GMI prior generator steps (reference 11,232).")
flags.DEFINE_integer("kedmi_steps", None,
                     "KED-MI prior generator steps, per target (reference 11,232).")
flags.DEFINE_integer("kedmi_n_critic", None,
                     "KED-MI discriminator steps per generator step (reference 5).")
flags.DEFINE_integer("kedmi_batch_size", None,
                     "KED-MI batch size (reference 64; its minibatch discrimination costs "
                     "batch^2, and the inversion shows the discriminator batches of this size).")
flags.DEFINE_integer("plgmi_steps", None,
                     "PLG-MI prior generator steps, per target (reference 30,000).")
flags.DEFINE_integer("surrogate_steps", None,
                     "LOMMA distillation steps per surrogate, per target (reference 8,892).")
flags.DEFINE_integer("base_channels", None, "Width of the GAN priors (reference 64).")
flags.DEFINE_integer("top_n", None, "PLG-MI public images pseudo-labelled per class.")
flags.DEFINE_integer("per_class", None, "Reconstructions per attacked class.")
flags.DEFINE_integer("iterations", None, "GMI/KED-MI/LOMMA inversion steps (reference 1500).")
flags.DEFINE_integer("plgmi_iterations", None, "PLG-MI inversion steps (reference 600).")
flags.DEFINE_integer("mi_face_iterations", None, "MI-Face inversion steps.")
flags.DEFINE_integer("recovery_iterations", None, "Trigger-recovery steps (Adam on the patterns).")
flags.DEFINE_integer("brep_iterations", None,
                     "BREP-MI's cap on its iterations (its walks also stop after 1000 accepted "
                     "steps without growth, the authors' rule).")
flags.DEFINE_integer("brep_initial_batches", None,
                     "BREP-MI's bound on the batches of 256 latents searched for starting points "
                     "(default: the preset's; quick, strong and full 10,000); classes still "
                     "without one are left out of its scores and listed apart.")
flags.DEFINE_float("adaptive_weight", 1.0,
                   "PLG-MI++: weight of the penalty on the cosine similarity between a "
                   "reconstruction's target feature and its class's trapdoor signature (>= 0).")
flags.DEFINE_float("recovery_alpha", None,
                   "Trigger recovery's blend weight in (0, 1) (default: the target's alpha as "
                   "train_target resolves it: a Trap-MID target's own, the dataset preset's for "
                   "the others).")
flags.DEFINE_string("fid_weights", None, "Local InceptionV3 no-top weights for FID (optional).")
flags.DEFINE_string("evaluation_model", None,
                    "A saved Keras classifier (.keras) to judge the attacks with, e.g. the face "
                    "FaceNet (docs/reproducing_on_gpu.md); default: train one (evaluator/).")
flags.DEFINE_bool("overwrite", False, "Redo every stage even if stored.")



def settings_from_flags():
    """The pipeline settings the flags give (`pipeline.pipeline_settings`).

    Raises:
        app.UsageError: for an unknown defense or attack, a bad number or a missing --out.
    """
    if FLAGS.defense != "trapmid" or FLAGS["defense"].present:
        raise app.UsageError("--defense is train_target's; use --defenses here.")
    if not FLAGS.out:
        raise app.UsageError("--out must be set.")
    overrides = {key: FLAGS[key].value for key in PRESET_KEYS if FLAGS[key].present}
    if FLAGS.seeds is not None:
        try:
            overrides["seeds"] = [int(seed) for seed in FLAGS.seeds]
        except ValueError as error:
            raise app.UsageError(
                f"--seeds must list integers >= 0; received {FLAGS.seeds}."
            ) from error
    try:
        return pipeline.pipeline_settings(
            FLAGS.preset, overrides, FLAGS.attacks, FLAGS.budget_scale, FLAGS.adaptive_weight,
            FLAGS.recovery_alpha,
        )
    except ValueError as error:
        raise app.UsageError(str(error)) from error


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
        configs = pipeline.target_configs(run, settings)
    except (ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from error
    console.start()
    from trapmid_tf import report

    results = pipeline.run_pipeline(run, settings, configs)
    print(report.summary_table(results))
    print(f"report: {os.path.join(run.out, 'report.md')} ({results['seconds']:.0f} s)")
    failed = pipeline.failed_trapdoors(results)
    if failed and settings["require_trapdoor"]:
        raise SystemExit(
            f"pipeline: the trapdoor did not form for {failed} (in at least one seed): no "
            "protection expected from them; see the report. --norequire_trapdoor accepts this."
        )


def run():
    """The console command `trapmid-pipeline`."""
    console.run_command(main, sys.modules[__name__], train_target)


if __name__ == "__main__":
    run()
