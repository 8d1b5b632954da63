"""The pipeline's targets: one per defense and training seed, their folders and triggers.

`target_configs` checks every target's trapmid-train settings (a pipeline-only defense name of
`presets.VARIANTS` is a defense with other settings), `train_targets` trains (or reuses) them
in targets/<defense>/seed_<seed>/ (`target_dir`), `target_triggers` reads a target's triggers,
`failed_trapdoors` names the defenses whose trapdoor did not form; a `TrainedTarget` is what
the prior, attack and score stages take of one target.
"""

import dataclasses
import json
import os

import numpy as np
from absl import logging

from trapmid_tf.experiments import defenses as defense_registry
from trapmid_tf.experiments.presets import VARIANTS
from trapmid_tf.experiments.target_config import (
    DEFAULTS, TRAPDOOR_KEYS, identity, resolve_config,
)
from trapmid_tf.experiments.targets import train
from trapmid_tf.files import build_or_reuse
from trapmid_tf.report.interpretation import trapdoor_not_formed


@dataclasses.dataclass(frozen=True)
class TrainedTarget:
    """One trained target as its priors, attacks and scores take it.

    Attributes:
        directory: Its folder (`target_dir`; its priors, signatures and attacks lie below).
        model: The classifier.
        config: What identifies it (its train_target settings; the audit's model hash).
        seed: The seed of its priors and attacks (a pipeline target's training seed).
        results: Its `test_accuracy`, `trapdoor_accuracy` (and `trapdoor_formed`).
        detector: Its `TrapdoorDetector`, or None without triggers.
        triggers: Its triggers `(classes, H, W, C)`, or None.
    """

    directory: str
    model: object
    config: dict
    seed: int
    results: dict
    detector: object = None
    triggers: object = None


def target_dir(run, defense, seed):
    """The folder of the target of `defense` trained with `seed`, under --out."""
    return os.path.join(run.out, "targets", defense, f"seed_{seed}")


def target_configs(run, settings):
    """The checked trapmid-train settings of every target: `{(defense, seed): config}`.

    The trapdoor's own settings (`TRAPDOOR_KEYS`) reach only the defenses with triggers.

    Raises:
        ValueError, FileNotFoundError: as `resolve_config`, for bad target settings, or
            for a dataset without public data ("class_folder").
    """
    if run.dataset == "class_folder":
        raise ValueError(
            "`dataset` 'class_folder' has no public images for the attacks; the pipeline needs "
            "a dataset with a public split (train targets on it with trapmid-train)."
        )
    configs = {}
    for seed in settings.seeds:
        for defense in settings.defenses:
            base, variant = VARIANTS.get(defense, (defense, {}))
            # A target without a trapdoor is kept and reported; the pipeline fails at the end.
            changes = dict(
                variant, dataset=run.dataset, data_dir=run.data_dir,
                public_split=run.public_split, defense=base,
                out=target_dir(run, defense, seed), seed=seed, split_seed=run.seed,
                require_trapdoor=False,
            )
            if settings.target_epochs is not None and run.target_settings.get("epochs") is None:
                changes["epochs"] = settings.target_epochs
            target_settings = dict(run.target_settings)
            if not defense_registry.get_defense(base).trapdoor:
                target_settings.update({key: DEFAULTS[key] for key in TRAPDOOR_KEYS})
            configs[defense, seed] = resolve_config(dict(target_settings, **changes))
    return configs


def train_targets(run, settings, configs, progress):
    """Trains (or reuses) one target per defense and seed.

    Returns:
        `{(defense, seed): (config, results)}`.
    """
    targets = {}
    for seed in settings.seeds:
        for defense in settings.defenses:
            out = target_dir(run, defense, seed)
            config = configs[defense, seed]

            def load(out=out):
                with open(os.path.join(out, "results.json"), encoding="utf-8") as stream:
                    return json.load(stream)

            with progress.stage(f"target {defense}, seed {seed}"):
                results = build_or_reuse(
                    out, identity(config),
                    lambda config=config: train(config, run.fit_verbosity), load,
                    run.overwrite, logging.info,
                )
            targets[defense, seed] = (config, results)
    return targets


def stage_target(directory):
    """"<defense>, seed <s>" of a target folder (targets/<defense>/seed_<s>), for stage names."""
    defense, seed = os.path.normpath(directory).split(os.sep)[-2:]
    return f"{defense}, seed {seed.removeprefix('seed_')}"


def failed_trapdoors(results):
    """The defenses of a pipeline's results whose trapdoor did not form in some seed."""
    return [d for d, scores in results["defenses"].items() if trapdoor_not_formed(scores)]


def target_triggers(run, defense, seed):
    """The triggers `(classes, H, W, C)` of a target from its triggers.npz, or None."""
    path = os.path.join(target_dir(run, defense, seed), "triggers.npz")
    if not os.path.isfile(path):
        return None
    with np.load(path) as stored:
        return stored["triggers"]


def stored_triggers(run, settings):
    """`{defense: triggers}` of the first seed's targets that have a triggers.npz."""
    triggers = {d: target_triggers(run, d, settings.seeds[0]) for d in settings.defenses}
    return {defense: array for defense, array in triggers.items() if array is not None}
