"""Trains (or reuses) one attack prior on public data as a stage.

`trapmid-prior` is its command line; `trapmid-pipeline` calls `train_prior` for every prior.
"""

import os

import numpy as np
from absl import logging

from trapmid_tf.attacks import suite
from trapmid_tf.files import build_or_reuse

PRIORS = ("gmi", "kedmi", "plgmi", "lomma")


def default_public_split(dataset, public_split):
    """The public split the recipes use: `public_split`, else samples for digits."""
    if public_split is not None:
        return public_split
    return "samples" if dataset == "digits" else "classes"


def check_settings(settings):
    """Rejects contradictory or out-of-range prior settings.

    Raises:
        ValueError: naming the setting and the received value.
    """
    if settings["prior"] is None:
        raise ValueError(f"`prior` must be one of {list(PRIORS)}; it is not set.")
    if settings["prior"] != "gmi" and not settings.get("target"):
        raise ValueError(f"`prior` {settings['prior']!r} attacks a model: set `target`.")
    if settings["prior"] == "gmi" and settings.get("target"):
        raise ValueError("`prior` 'gmi' does not depend on a target; `target` must not be set.")
    if settings.get("target") and not os.path.isfile(settings["target"]):
        raise ValueError(f"`target` {settings['target']!r} is not an existing .keras file.")
    for key in ("steps", "batch_size", "base_channels", "top_n", "n_critic"):
        if settings[key] < 1:
            raise ValueError(f"`{key}` must be >= 1; received {settings[key]}.")


def train_prior(name, public, target, settings, out, overwrite=False, verbose=0,
                signatures=None):
    """Trains (or reuses) the prior `name` and returns its networks.

    Args:
        name: One of `PRIORS`.
        public: Unbatched dataset of public images.
        target: The attacked classifier, or None for "gmi".
        settings: Dict with steps, batch_size, base_channels, top_n, n_critic (PLG-MI's
            n_dis), seed; stored in stage.json, together with anything else it holds.
        out: Output folder.
        overwrite: Retrain even if `out` holds a finished prior with the same settings.
        verbose: `keras.Model.fit`'s verbosity.
        signatures: For "plgmi" only: the target's `(classes, feature_dims)` trapdoor
            signatures, to train PLG-MI++'s penalised prior with `settings["signature_weight"]`
            (`suite.train_plgmi_prior`); `settings` must then describe them. None: plain.

    Returns:
        `PriorNetworks` or, for "lomma", `LOMMAModels`.

    Raises:
        ValueError: If `signatures` are given for a prior other than "plgmi".
    """
    if signatures is not None and name != "plgmi":
        raise ValueError(
            f"`signatures` penalise only the 'plgmi' prior; received them for {name!r}."
        )
    penalty = {} if signatures is None else dict(
        signatures=signatures, signature_weight=settings["signature_weight"]
    )

    def build():
        steps = settings["steps"]
        common = dict(batch_size=settings["batch_size"], seed=settings["seed"],
                      verbose=verbose)
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
                **gan, **penalty,
            )
        else:
            prior = suite.train_lomma_surrogates(public, target, steps, **common)
        suite.save_prior(name, prior, out)
        return suite.load_prior(name, out)

    return build_or_reuse(
        out, settings, build, lambda: suite.load_prior(name, out), overwrite, logging.info
    )
