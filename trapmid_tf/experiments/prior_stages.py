"""The pipeline's prior stages: per training seed the GMI prior, per target its own priors.

Which priors the selected attacks need (`pipeline_priors`) and which one each attack searches
(`attack_priors`); the GMI prior of each training seed, shared by that seed's targets; a
target's own priors (KED-MI's, PLG-MI's, LOMMA's surrogates, and each PLG-MI++ attack's
penalised PLG-MI prior, the estimated variant's signatures a stage before it); what each
target's priors trained for (`prior_steps`, `penalised_prior_records`).
"""

import os

import numpy as np
from absl import logging

from trapmid_tf.attacks import suite
from trapmid_tf.attacks.plgmi_adaptive import estimate_signatures
from trapmid_tf.experiments.attacks import PLGMI_LOSS_SCALE, attacked_classes
from trapmid_tf.experiments.evaluation import DETECTOR_CLEAN_IMAGES
from trapmid_tf.experiments.priors import train_prior
from trapmid_tf.experiments.target_config import ADAM_RULE, identity
from trapmid_tf.experiments.target_stages import stage_target
from trapmid_tf.files import atomic_path, build_or_reuse

REFERENCE_N_CRITIC = 5
REFERENCE_BATCH_SIZE = 64
PRIOR_STEPS = {
    "gmi": "gmi_steps", "kedmi": "kedmi_steps", "plgmi": "plgmi_steps",
    "lomma": "surrogate_steps",
}
# The priors that are GANs trained with Adam (LOMMA's surrogates distil with SGD).
GAN_PRIORS = ("gmi", "kedmi", "plgmi")
# Why PLG-MI++ with the defender's signatures does not run against a target without triggers.
NO_TRAPDOOR = "no trapdoor"
# PLG-MI++ at full strength: each of its attacks searches its own PLG-MI prior (stage
# priors/<attack>/ of a target), trained with the plain PLG-MI prior's budget and seed but
# with the signature penalty in its top-n ranking and generator loss; the estimated variant's
# signatures are a stage of their own (signatures/<attack>/), made before its prior.
PENALISED_PRIORS = ("plgmi_adaptive", "plgmi_adaptive_estimated")
ESTIMATED = "plgmi_adaptive_estimated"
SIGNATURES_FILE = "signatures.npy"
# Where each PLG-MI++ attack's signatures come from (part of its stages' settings).
SIGNATURE_SOURCES = {
    "plgmi_adaptive": "the defender's: its triggers over the first "
                      f"{DETECTOR_CLEAN_IMAGES} private training images",
    ESTIMATED: "estimated: mean feature of a plain PLG-MI round minus that of the top-n public "
               "images, per class",
}


def pipeline_priors(attacks):
    """The priors the pipeline trains for `attacks`, in training order.

    `suite.priors_needed`'s, except that each PLG-MI++ attack searches its own penalised
    prior (named as the attack, `PENALISED_PRIORS`), trained after the others: the plain
    PLG-MI prior only where `plgmi` or the estimated variant's first round needs it.

    Args:
        attacks: Attack names among `suite.ATTACKS`.

    Returns:
        A list of prior names.
    """
    plain = suite.priors_needed([name for name in attacks if name != "plgmi_adaptive"])
    return plain + [name for name in PENALISED_PRIORS if name in attacks]


def attack_priors(name):
    """`{suite.build_attack's prior key: pipeline prior}` of the attack `name`.

    A PLG-MI++ attack searches its own penalised prior (`PENALISED_PRIORS`) as its "plgmi".
    """
    if name in PENALISED_PRIORS:
        return {"plgmi": name}
    return {prior: prior for prior in suite.PRIORS_OF_ATTACK[name]}


def gmi_directory(run, seed):
    """The folder of the GMI prior of training seed `seed`, under --out."""
    return os.path.join(run.out, "priors", "gmi", f"seed_{seed}")


def seed_gmi_prior(run, settings, public, seed, progress):
    """Trains (or reuses) the GMI prior of training seed `seed`, shared by that seed's targets.

    Every defense of one seed is attacked through the same prior, so a defense and the
    unprotected target of that seed (a pair of `trapmid_tf.metrics.intervals.compare`)
    differ by the defense alone; each seed trains its own (with that seed), so the prior's
    training variation is part of the variation over seeds. Every seed's prior trains on
    the same public data: the split of `run.seed`, part of the stage's identity.

    Args:
        run: The `PipelineRun`.
        settings: The pipeline settings.
        public: Unbatched public images.
        seed: The training seed.
        progress: The run's `StageProgress`.

    Returns:
        `(networks, stage settings)`, or None when no selected attack needs the GMI prior.
    """
    if "gmi" not in suite.priors_needed(settings.attacks):
        return None
    gmi_settings = dict(
        prior_budget(settings, "gmi", seed), dataset=run.dataset, data_dir=run.data_dir,
        split_seed=run.seed,
    )
    with progress.stage(f"gmi prior, seed {seed}"):
        networks = train_prior("gmi", public, None, gmi_settings, gmi_directory(run, seed),
                               run.overwrite, run.fit_verbosity)
    return networks, gmi_settings


def gmi_prior_per_seed(run, settings, public, progress):
    """`prior(seed)`: the GMI prior of a training seed (`seed_gmi_prior`), made on first call.

    Ask for it seed by seed, as `train_targets` orders the targets: it holds one seed's
    prior, returned for every target of that seed, and trains (or reuses) the next seed's
    when asked for it.

    Args:
        run: The `PipelineRun`.
        settings: The pipeline settings.
        public: Unbatched public images.
        progress: The run's `StageProgress`.

    Returns:
        A function `seed -> (networks, stage settings)` (None for every seed where no
        selected attack needs the GMI prior).
    """
    held = {}

    def prior(seed):
        if seed not in held:
            held.clear()
            held[seed] = seed_gmi_prior(run, settings, public, seed, progress)
        return held[seed]

    return prior


def target_priors(run, target, public, gmi, settings, progress, public_images=None):
    """Trains (or reuses) the priors the selected attacks need against one target.

    Each PLG-MI++ attack's prior (`PENALISED_PRIORS`, folder priors/<attack>/) is PLG-MI's
    with the plain one's budget and seed, its top-n ranking and generator loss penalised
    with its signatures at weight `adaptive_weight`: the defender's (`target.detector`'s)
    for `plgmi_adaptive`, which does not apply to a target without triggers, or
    `estimated_signatures`' for `plgmi_adaptive_estimated`.

    Args:
        run: The `PipelineRun`.
        target: The `target_stages.TrainedTarget` (its seed is its priors').
        public: Unbatched public images.
        gmi: `(networks, settings)` of the GMI prior of the target's seed
            (`seed_gmi_prior`), or None.
        settings: The pipeline settings.
        progress: The run's `StageProgress`.
        public_images: The public images as one array (the estimated signatures'), or None
            when `plgmi_adaptive_estimated` does not run.

    Returns:
        `(priors, prior_settings, signatures)`: dicts by prior name of networks and stage
        settings, and `{PLG-MI++ attack: the signatures its prior was trained with}`; a
        prior that does not apply is in none of them.
    """
    priors, prior_settings, signatures = {}, {}, {}
    for name in pipeline_priors(settings.attacks):
        if name == "gmi":
            priors[name], prior_settings[name] = gmi
            continue
        kind, penalty = name, {}
        if name in PENALISED_PRIORS:
            kind = "plgmi"
            penalty = dict(signature_weight=settings.adaptive_weight,
                           signatures=SIGNATURE_SOURCES[name])
        if name == ESTIMATED:
            signatures[name], penalty["estimated_from"] = estimated_signatures(
                run, target, (priors["plgmi"], prior_settings["plgmi"]), settings,
                public_images, progress,
            )
        elif kind != name and target.detector is not None:
            signatures[name] = target.detector.signatures
        with progress.stage(f"{name} prior, {stage_target(target.directory)}"):
            if kind != name and name not in signatures:
                logging.info("prior %s: not applicable to this target (%s)", name, NO_TRAPDOOR)
                continue
            prior_settings[name] = dict(
                prior_budget(settings, kind, target.seed, target.config), **penalty
            )
            priors[name] = train_prior(
                kind, public, target.model, prior_settings[name],
                os.path.join(target.directory, "priors", name), run.overwrite,
                run.fit_verbosity, signatures=signatures.get(name),
            )
    return priors, prior_settings, signatures


def estimated_signatures(run, target, plain, settings, public_images, progress):
    """Trains (or reuses) the model-only attacker's signatures: stage signatures/<ESTIMATED>/.

    A plain PLG-MI round on the plain PLG-MI prior, with PLG-MI++'s budget
    (`plgmi_iterations`), classes, reconstructions per class and seed, then
    `estimate_signatures` of its reconstructions against the target's top-n public images.

    Args:
        run: The `PipelineRun`.
        target: The `target_stages.TrainedTarget` (its seed is the round's).
        plain: `(networks, stage settings)` of the target's plain PLG-MI prior.
        settings: The pipeline settings.
        public_images: The public images as one array.
        progress: The run's `StageProgress`.

    Returns:
        `(signatures, stage settings)`: a float64 array `(target classes, feature dims)`.
    """
    networks, prior = plain
    classes = attacked_classes(target.model)
    out = os.path.join(target.directory, "signatures", ESTIMATED)
    path = os.path.join(out, SIGNATURES_FILE)
    stage = dict(
        signatures=SIGNATURE_SOURCES[ESTIMATED], top_n=settings.top_n,
        public_split=settings.public_split,
        first_round=dict(prior=prior, iterations=settings.plgmi_iterations, classes=classes,
                         per_class=settings.per_class, seed=target.seed,
                         plgmi_loss_scale=PLGMI_LOSS_SCALE),
    )

    def build():
        budget = suite.InversionSettings(plgmi_iterations=settings.plgmi_iterations)
        first = suite.build_attack("plgmi", {"plgmi": networks}, budget).invert(
            target.model, range(classes), per_class=settings.per_class, seed=target.seed,
            verbose=run.progress_verbosity,
        )
        estimated = estimate_signatures(
            target.model, first.images, first.labels, public_images, settings.top_n
        )
        with atomic_path(path) as temporary:
            np.save(temporary, estimated)
        return estimated

    with progress.stage(f"{ESTIMATED} signatures, {stage_target(target.directory)}"):
        found = build_or_reuse(out, stage, build, lambda: np.load(path), run.overwrite,
                               logging.info)
    return found, stage


def prior_budget(settings, name, seed, target_config=None):
    """The settings of the prior `name`'s stage (with the target's, for target priors); the
    GAN priors' (trained with Adam) include its update rule, `ADAM_RULE`."""
    budget = dict(
        steps=getattr(settings, PRIOR_STEPS[name]),
        batch_size=settings.kedmi_batch_size if name == "kedmi" else REFERENCE_BATCH_SIZE,
        base_channels=settings.base_channels, top_n=settings.top_n,
        n_critic=settings.kedmi_n_critic if name == "kedmi" else REFERENCE_N_CRITIC,
        seed=seed, public_split=settings.public_split,
        target=target_config and identity(target_config),
    )
    if name in GAN_PRIORS:
        budget["adam_rule"] = ADAM_RULE
    return budget


def prior_steps(directory, gmi_folder, priors):
    """`{prior: steps.json contents}` of the priors one target's attacks used.

    Args:
        directory: The target's folder (its own priors are under priors/).
        gmi_folder: The folder of the GMI prior of the target's seed (`gmi_directory`).
        priors: The names of the priors trained for the target (`target_priors`' keys).
    """
    return {
        name: suite.load_training_steps(
            gmi_folder if name == "gmi" else os.path.join(directory, "priors", name)
        )
        for name in priors
    }


def penalised_prior_records(prior_settings, steps):
    """`{PLG-MI++ attack: the prior it searched}` for results.json, of the priors trained.

    Args:
        prior_settings: The target's prior stage settings (`target_priors`).
        steps: Its `prior_steps`.

    Returns:
        Per PLG-MI++ attack whose prior was trained: `name` (its folder under priors/),
        `steps` (its steps.json) and `signature_weight`.
    """
    return {
        name: dict(name=name, steps=steps[name],
                   signature_weight=prior_settings[name]["signature_weight"])
        for name in PENALISED_PRIORS if name in prior_settings
    }
