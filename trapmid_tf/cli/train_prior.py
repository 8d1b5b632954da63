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
(`trapmid_tf.attacks.suite.save_prior`) and stage.json when finished; a finished --out made with the same flags is reused unless
--overwrite.
"""

import os
import sys

from absl import app, flags, logging

from trapmid_tf.cli import console

PRIORS = ("gmi", "kedmi", "plgmi", "lomma")

FLAGS = flags.FLAGS

SETTING_NAMES = ("dataset", "data_dir", "public_split", "prior", "target", "steps", "batch_size",
                 "base_channels", "top_n", "n_critic", "seed")


def default_public_split(dataset, public_split):
    """The public split the recipes use: `public_split`, else samples for digits."""
    if public_split is not None:
        return public_split
    return "samples" if dataset == "digits" else "classes"


def check_settings(settings):
    """Rejects contradictory or out-of-range prior settings.

    Raises:
        ValueError: naming the flag and the received value.
    """
    if settings["prior"] is None:
        raise ValueError(f"--prior must be one of {list(PRIORS)}; it is not set.")
    if settings["prior"] != "gmi" and not settings.get("target"):
        raise ValueError(f"--prior={settings['prior']} attacks a model: set --target.")
    if settings["prior"] == "gmi" and settings.get("target"):
        raise ValueError("--prior=gmi does not depend on a target; --target must not be set.")
    if settings.get("target") and not os.path.isfile(settings["target"]):
        raise ValueError(f"--target {settings['target']!r} is not an existing .keras file.")
    for key in ("steps", "batch_size", "base_channels", "top_n", "n_critic"):
        if settings[key] < 1:
            raise ValueError(f"--{key} must be >= 1; received {settings[key]}.")


def train_prior(name, public, target, settings, out, overwrite=False):
    """Trains (or reuses) the prior `name` and returns its networks.

    Args:
        name: One of `PRIORS`.
        public: Unbatched dataset of public images.
        target: The attacked classifier, or None for "gmi".
        settings: Dict with steps, batch_size, base_channels, top_n, n_critic (PLG-MI's
            n_dis), seed; stored in stage.json, together with anything else it holds.
        out: Output folder.
        overwrite: Retrain even if `out` holds a finished prior with the same settings.

    Returns:
        `PriorNetworks` or, for "lomma", `LOMMAModels`.
    """
    import numpy as np
    from trapmid_tf.attacks import suite
    from trapmid_tf.files import build_or_reuse

    def build():
        steps = settings["steps"]
        common = dict(batch_size=settings["batch_size"], seed=settings["seed"],
                      verbose=console.fit_verbosity())
        gan = dict(common, base_channels=settings["base_channels"])
        critic = dict(gan, n_critic=settings["n_critic"])
        if name == "gmi":
            prior = suite.train_gmi_prior(public, steps, **critic)
        elif name == "kedmi":
            prior = suite.train_kedmi_prior(public, target, steps, **critic)
        elif name == "plgmi":
            images = np.stack(list(public.as_numpy_iterator()))
            prior = suite.train_plgmi_prior(
                images, target, steps, top_n=settings["top_n"], n_dis=settings["n_critic"],
                **gan,
            )
        else:
            prior = suite.train_lomma_surrogates(public, target, steps, **common)
        suite.save_prior(name, prior, out)
        return suite.load_prior(name, out)

    return build_or_reuse(
        out, settings, build, lambda: suite.load_prior(name, out), overwrite, logging.info
    )


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
        raise app.UsageError(str(error)) from error
    import trapmid_tf as tm
    from trapmid_tf.files import write_json

    console.start()
    splits = tm.data.load(
        settings["dataset"], settings["data_dir"], seed=settings["seed"],
        public_split=settings["public_split"],
    )
    target = tm.models.load_classifier(settings["target"]) if settings["target"] else None
    write_json(os.path.join(FLAGS.out, "flags.json"), settings)
    train_prior(settings["prior"], splits.public, target, settings, FLAGS.out, FLAGS.overwrite)
    print(f"prior {settings['prior']} written to {FLAGS.out}")


def run():
    """The console command `trapmid-prior`."""
    define_flags()
    console.run_command(main, sys.modules[__name__])


if __name__ == "__main__":
    run()
