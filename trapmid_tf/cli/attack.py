"""Runs model-inversion attacks against a classifier and writes the reconstructions.

Attacks: gmi, kedmi, lomma_gmi, lomma_kedmi, plgmi (each needs priors from
trapmid-prior) and the prior-free mi_face. The attacks that take options (PLG-MI++,
trigger recovery, BREP-MI: `trapmid_tf.attacks.suite.OPTION_ATTACKS`) run through
trapmid-pipeline, which supplies their options.

Example:
    trapmid-attack --target=runs/none/classifier.keras --attacks=gmi,plgmi \\
        --gmi_prior=runs/priors/gmi --plgmi_prior=runs/none/priors/plgmi --out=runs/none/attacks

Writes into --out/<attack>/: reconstructions.npz (`images`, `labels`, `latents`,
`initial_images`: the un-optimised starting samples, which measure the attack's chance
level, and `iterations`: the optimisation steps that ran) and stage.json; finished attacks
with the same flags are reused unless --overwrite (also ones made before the KED-MI and PLG-MI
inversions used PyTorch's Adam, `trapmid_tf.TorchAdam`).
With --evaluation_model=PATH (any saved Keras classifier, e.g. the face FaceNet; see
trapmid-evaluate), each attack's reconstructions are also judged at once, as the
reference's attack scripts do: attack_accuracy.json holds aa1 and aa5 (top-1/top-5).
"""

import os
import sys

from absl import app, flags

import trapmid_tf as tm
from trapmid_tf.attacks import suite
from trapmid_tf.cli import console
from trapmid_tf.experiments.attacks import attacked_classes, run_attacks
from trapmid_tf.experiments.evaluation import load_evaluation_classifier

FLAGS = flags.FLAGS


def define_flags():
    """Defines this recipe's command-line flags (only when it runs as a script)."""
    flags.DEFINE_string("target", None, "Attacked classifier (.keras).")
    flags.DEFINE_list("attacks", None,
                      "Attacks to run (default: all but the option attacks, which "
                      "trapmid-pipeline runs).")
    for prior in ("gmi", "kedmi", "plgmi", "lomma"):
        flags.DEFINE_string(f"{prior}_prior", None, f"Folder of the trained {prior} prior.")
    flags.DEFINE_integer("num_classes", None,
                         "Attack classes 0..N-1 (default: all, at most 300).")
    flags.DEFINE_integer("per_class", 5, "Reconstructions per class.")
    flags.DEFINE_integer("iterations", None, "Latent attacks' steps (default: reference 1500).")
    flags.DEFINE_integer("plgmi_iterations", None, "PLG-MI steps (default: reference 600).")
    flags.DEFINE_integer("mi_face_iterations", None, "MI-Face steps (default 1000).")
    flags.DEFINE_integer("kedmi_batch_size", 64,
                         "Batch size the KED-MI prior was trained with (reference 64).")
    flags.DEFINE_string("evaluation_model", None,
                        "Saved Keras classifier (.keras) that judges each attack's "
                        "reconstructions at once (attack_accuracy.json); optional.")
    flags.DEFINE_integer("seed", 0, "Seed of the restarts.")
    flags.DEFINE_string("out", None, "Output folder.")
    flags.DEFINE_bool("overwrite", False, "Rerun attacks whose results are stored.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    attacks = FLAGS.attacks or [a for a in suite.ATTACKS if a not in suite.OPTION_ATTACKS]
    try:
        needed = suite.priors_needed(attacks)
    except ValueError as error:
        raise app.UsageError(f"--attacks: {error}") from error
    with_options = [a for a in attacks if a in suite.OPTION_ATTACKS]
    if with_options:
        raise app.UsageError(
            f"--attacks: {with_options} take options (signatures, public images, ...) that "
            "trapmid-pipeline supplies; run them there (--attacks)."
        )
    missing = [p for p in needed if not FLAGS[f"{p}_prior"].value]
    if missing:
        raise app.UsageError(
            f"--attacks={','.join(attacks)} needs " + ", ".join(f"--{p}_prior" for p in missing)
        )
    for flag in ["target"] + [f"{p}_prior" for p in needed]:
        path = FLAGS[flag].value
        if not path or not os.path.exists(path):
            raise app.UsageError(f"--{flag} {path!r} does not exist.")
    if FLAGS.evaluation_model and not os.path.isfile(FLAGS.evaluation_model):
        raise app.UsageError(
            f"--evaluation_model {FLAGS.evaluation_model!r} is not a saved classifier file."
        )
    if not FLAGS.out:
        raise app.UsageError("--out must be set.")
    console.start()
    target = tm.models.load_classifier(FLAGS.target)
    judge = None
    if FLAGS.evaluation_model:
        try:
            judge = load_evaluation_classifier(FLAGS.evaluation_model, target.input_shape[1:])
        except ValueError as error:
            raise app.UsageError(console.flag_message(str(error))) from error
    settings = dict(
        target=os.path.abspath(FLAGS.target),
        num_classes=FLAGS.num_classes or attacked_classes(target),
        per_class=FLAGS.per_class, seed=FLAGS.seed, iterations=FLAGS.iterations,
        plgmi_iterations=FLAGS.plgmi_iterations, mi_face_iterations=FLAGS.mi_face_iterations,
        kedmi_batch_size=FLAGS.kedmi_batch_size,
    )
    run_attacks(attacks, target, {p: FLAGS[f"{p}_prior"].value for p in needed}, settings,
                FLAGS.out, FLAGS.overwrite, judge, FLAGS.evaluation_model,
                console.progress_verbosity())
    print(f"reconstructions written to {FLAGS.out}")


def run():
    """The console command `trapmid-attack`."""
    define_flags()
    console.run_command(main, sys.modules[__name__])


if __name__ == "__main__":
    run()
