"""Trains one attack prior on a dataset's public split and writes its networks.

Priors: gmi (WGAN-GP GAN, target-independent), kedmi (semi-supervised GAN with the target's
soft labels), plgmi (conditional GAN on the target's top-n pseudo-labelled public images),
lomma (surrogate models distilled from the target, and its mean public feature p_reg).

Example:
    trapmid-prior --prior=gmi --steps=2000 --out=runs/priors/gmi
    trapmid-prior --prior=plgmi --target=runs/none/classifier.keras \\
        --out=runs/none/priors/plgmi

Budgets are optimiser steps (--steps: generator steps of the GAN priors, each after
--n_critic opponent steps; distillation steps of each LOMMA surrogate).

Writes into --out: flags.json, the networks and steps.json with the steps actually run
(`trapmid_tf.attacks.suite.save_prior`) and stage.json when finished; a finished --out made
with the same flags is reused unless --overwrite (also one made before the priors used
PyTorch's Adam, `trapmid_tf.TorchAdam`).
"""

import os
import sys

from absl import app, flags

import trapmid_tf as tm
from trapmid_tf.cli import console
from trapmid_tf.experiments.priors import (
    PRIORS, check_settings, default_public_split, train_prior,
)
from trapmid_tf.files import write_json

FLAGS = flags.FLAGS

SETTING_NAMES = ("dataset", "data_dir", "public_split", "prior", "target", "steps", "batch_size",
                 "base_channels", "top_n", "n_critic", "seed")


def define_flags():
    """Defines this recipe's command-line flags (only when it runs as a script)."""
    flags.DEFINE_enum("dataset", "digits",
                      ["digits", "mnist", "fashion_mnist", "celeba", "ffhq", "facescrub", "folder"],
                      "Dataset whose public split trains the prior.")
    flags.DEFINE_string("data_dir", None, "Folder with the dataset files (not needed for digits).")
    flags.DEFINE_enum("public_split", None, ["classes", "samples"],
                      "Digit datasets: public data = classes 5-9 or also half of the private "
                      "classes' images (default: samples for digits, classes otherwise).")
    flags.DEFINE_enum("prior", None, PRIORS, "Prior to train.")
    flags.DEFINE_string("target", None,
                        "Attacked classifier (.keras); needed by kedmi, plgmi, lomma.")
    flags.DEFINE_integer("steps", 2000,
                         "Generator steps (gmi, kedmi, plgmi) or distillation steps per "
                         "surrogate (lomma); the reference's are in "
                         "trapmid_tf.attacks.REFERENCE_BUDGETS.")
    flags.DEFINE_integer("batch_size", 64, "Batch size.")
    flags.DEFINE_integer("base_channels", 64, "Width of the GAN networks (reference 64).")
    flags.DEFINE_integer("top_n", 30, "plgmi: public images pseudo-labelled per class.")
    flags.DEFINE_integer("n_critic", 5,
                         "gmi, kedmi, plgmi: opponent steps per generator step (reference 5).")
    flags.DEFINE_integer("seed", 0, "Seed.")
    flags.DEFINE_string("out", None, "Output folder.")
    flags.DEFINE_bool("overwrite", False, "Retrain even if --out holds a finished prior.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    settings = {name: FLAGS[name].value for name in SETTING_NAMES}
    settings["public_split"] = default_public_split(settings["dataset"], settings["public_split"])
    if not FLAGS.out:
        raise app.UsageError("--out must be set.")
    try:
        check_settings(settings)
    except ValueError as error:
        raise app.UsageError(console.flag_message(str(error))) from error
    console.start()
    splits = tm.data.load(
        settings["dataset"], settings["data_dir"], seed=settings["seed"],
        public_split=settings["public_split"],
    )
    target = tm.models.load_classifier(settings["target"]) if settings["target"] else None
    write_json(os.path.join(FLAGS.out, "flags.json"), settings)
    train_prior(settings["prior"], splits.public, target, settings, FLAGS.out, FLAGS.overwrite,
                console.fit_verbosity())
    print(f"prior {settings['prior']} written to {FLAGS.out}")


def run():
    """The console command `trapmid-prior`."""
    define_flags()
    console.run_command(main, sys.modules[__name__])


if __name__ == "__main__":
    run()
