"""The preset and budget flags that trapmid-pipeline and trapmid-audit share, and their settings.

Both commands take a preset (`trapmid_tf.experiments.presets.PRESETS`) whose budgets these
flags override; `settings_from_flags` turns them into `presets.pipeline_settings`. Each flag
sets the setting of its name.
"""

from absl import app, flags

from trapmid_tf.cli import console
from trapmid_tf.experiments.presets import PRESET_KEYS, PRESETS, pipeline_settings

FLAGS = flags.FLAGS

flags.DEFINE_enum("preset", "quick", sorted(PRESETS), "Budget preset; the flags below override it.")
flags.DEFINE_list("attacks", None,
                  "Attacks to run (default: the six that need no knowledge of the defense; "
                  "also plgmi_adaptive, plgmi_adaptive_estimated, trigger_recovery, brep_mi). "
                  "The lookup baseline and the transfer null always run too.")
flags.DEFINE_list("seeds", None, "Seeds (default: preset): trapmid-pipeline trains one target "
                  "per seed, trapmid-audit trains the priors and runs the attacks once per seed.")
flags.DEFINE_integer("budget_scale", 1,
                     "Multiplies every prior and inversion step budget (convergence checks).")
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
                   "reconstruction's target feature and its class's trapdoor signature (>= 0), "
                   "in the inversion and in the training and top-n selection of its own "
                   "PLG-MI prior.")
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
    """The pipeline settings the flags give (`presets.pipeline_settings`).

    A preset key without a flag of its own in the command (trapmid-audit has no --defenses)
    keeps the preset's value.

    Returns:
        The `presets.PipelineSettings`.

    Raises:
        app.UsageError: for an unknown attack, a bad number or bad seeds, naming the flag.
    """
    overrides = {key: FLAGS[key].value for key in PRESET_KEYS
                 if key in FLAGS and FLAGS[key].present}
    if FLAGS.seeds is not None:
        try:
            overrides["seeds"] = [int(seed) for seed in FLAGS.seeds]
        except ValueError as error:
            raise app.UsageError(
                f"--seeds must list integers >= 0; received {FLAGS.seeds}."
            ) from error
    try:
        return pipeline_settings(
            FLAGS.preset, overrides, FLAGS.attacks, FLAGS.budget_scale, FLAGS.adaptive_weight,
            FLAGS.recovery_alpha,
        )
    except ValueError as error:
        raise app.UsageError(console.flag_message(str(error))) from error
