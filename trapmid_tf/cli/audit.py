"""The privacy report of your own saved Keras classifier: every attack against it, judged.

Example:
    trapmid-audit --model=my_classifier.keras --private_dir=faces/train \
        --test_dir=faces/held_out --public_dir=public_faces --preset=quick --out=runs/audit

--model is a saved Keras classifier (.keras) that takes float32 HxWxC images in [0, 1] and
outputs logits (not probabilities) over the private classes: one output per class subfolder
of --private_dir, in sorted folder-name order. --test_dir (the same class subfolders) or
--test_fraction of each class (drawn with --split_seed) are the private images the model never
trained on: you state it; they train the judge (unless --evaluation_model gives yours) and the
pixel judge compares reconstructions with them. --public_dir holds the attacker's unlabelled
public images, which must hold none of the private classes (the report assumes it).
--other_dir (optional, any layout) holds images of other classes, neither private nor the
attacker's (not in --public_dir): both judges learn them as one more class, "other" (with
--evaluation_model only the pixel judge: yours is used as given), so that they can call a
public look-alike of a private class "none of these" (a miss for every attacked class)
instead of the private class it resembles. Images of every folder must have
the model's input size and channels, unless --image_size resizes them all.

Before any work the command refuses, naming the flag, what it cannot handle: a model file
that is missing or does not load; images of another shape than the model's input; a number of
outputs other than the number of class folders; public images of another shape; non-square
images, or a side other than 8, 16, 32, 64, ... for the GAN priors; probabilities instead of
logits; a model that expects another input range (its accuracy on the held-out images is at
chance in [0, 1] but far above on the same images scaled to [0, 255] or [-1, 1]); a model
whose held-out accuracy is at chance anyway (refused, not only warned about); and an
--other_dir that is missing or empty, holds images of another shape, is, lies in or holds
--public_dir, --private_dir or --test_dir, or shares an image file (by SHA-256) with them.

Stages (each reused when --out holds it finished with the same settings; --overwrite redoes
them): the evaluation model (evaluator/: trained on the held-out images and those of
--other_dir, its accuracy measured on the model's training images), per seed of --seeds the
GMI prior (priors/gmi/seed_<s>/), the model's own priors and every attack
(targets/yours/seed_<s>/), the scores, the report. The lookup baseline and the transfer null
always run. The preset and budget flags are trapmid-pipeline's. Writes into --out: flags.json,
results.json, report.md, grids/*.png and TensorBoard logs under logs/.
"""

import os
import sys

from absl import app, flags

from trapmid_tf import report
from trapmid_tf.cli import budgets, console
from trapmid_tf.experiments import audit

FLAGS = flags.FLAGS


def define_flags():
    """Defines this command's own flags (only when it runs as a command: its --model and
    --test_dir differ from trapmid-train's)."""
    flags.DEFINE_string("model", None, "The saved Keras classifier to audit (.keras): images in "
                        "[0, 1] -> logits over the class folders of --private_dir.")
    flags.DEFINE_string("private_dir", None,
                        "The private classes: one subfolder of images per class (label: sorted "
                        "subfolder order).")
    flags.DEFINE_string("test_dir", None,
                        "Images the model never trained on, with the same class subfolders.")
    flags.DEFINE_float("test_fraction", None,
                       "Without --test_dir: the fraction of each class of --private_dir the model "
                       "never trained on (default 0.2), drawn with --split_seed.")
    flags.DEFINE_string("public_dir", None,
                        "The attacker's public images (any layout), none of a private class.")
    flags.DEFINE_string("other_dir", None,
                        "Images (any layout) of classes neither private nor in --public_dir, "
                        "which the attacker does not hold: the judges learn them as the class "
                        "'other' (optional; with --evaluation_model only the pixel judge).")
    flags.DEFINE_integer("image_size", None,
                         "Resize the images of every folder to this square side (default: keep "
                         "the files' size, which must be the model's input size).")
    flags.DEFINE_integer("split_seed", 0, "Seed of the --test_fraction draw and of the judge.")
    flags.DEFINE_string("out", None, "Output folder.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    for name in ("model", "private_dir", "public_dir", "out"):
        if not FLAGS[name].value:
            raise app.UsageError(f"--{name} must be set.")
    settings = budgets.settings_from_flags()
    console.start()
    try:
        inputs = audit.check_audit(
            FLAGS.model, FLAGS.private_dir, FLAGS.public_dir, settings.attacks,
            FLAGS.test_dir, FLAGS.test_fraction, FLAGS.image_size, FLAGS.split_seed,
            FLAGS.evaluation_model, FLAGS.other_dir,
        )
    except (ValueError, FileNotFoundError) as error:
        raise app.UsageError(console.flag_message(str(error))) from error
    results = audit.run_audit(
        FLAGS.out, settings, inputs, FLAGS.preset, FLAGS.overwrite, FLAGS.fid_weights,
        FLAGS.evaluation_model, console.verbose(),
    )
    print(report.summary_table(results))
    print(f"report: {os.path.join(FLAGS.out, 'report.md')} ({results['seconds']:.0f} s)")


def run():
    """The console command `trapmid-audit`."""
    define_flags()
    console.run_command(main, sys.modules[__name__], budgets)


if __name__ == "__main__":
    run()
