"""The privacy-report experiment: targets per defense and seed, priors, attacks, scores, report.

`run_pipeline(run, settings)` goes through the stages and reuses each one that `run.out`
already holds, finished with the same settings (`trapmid_tf.files.build_or_reuse`): per
training seed one target per defense, the evaluation model, the held-out judge (a second
learned judge, trained on images no target trains on: `held_out_judge`), per training seed
the GMI prior
(trained with that seed, shared by that seed's targets), per target the priors that depend on
it (each PLG-MI++ attack its own PLG-MI prior, penalised with its trapdoor signatures, and
the estimated variant its signatures first) and every attack (always with the lookup
baseline, the floor of the report's verdicts, and the transfer null, the test of its
judges), then the scores and the report. A stage's identity is what its artefacts depend on,
never where they are written, so a run folder can be moved and reused. `trapmid-pipeline` is
its command line (its help lists the stages and the files written).
"""

import dataclasses
import json
import os
import time

from absl import logging

from trapmid_tf.experiments.attacks import attacked_classes, run_attack
from trapmid_tf.experiments.evaluation import (
    DETECTOR_CLEAN_IMAGES, evaluation_model, load_evaluation_classifier, make_detector,
    make_evaluator, private_arrays, score_attack,
)
from trapmid_tf.experiments.priors import default_public_split, train_prior
from trapmid_tf.experiments.progress import StageProgress
from trapmid_tf.experiments import defenses as defense_registry
from trapmid_tf.experiments.target_config import (
    DEFAULTS, DEFENSES, TRAPDOOR_KEYS, identity, resolve_config,
)
from trapmid_tf.experiments.targets import train


@dataclasses.dataclass(frozen=True)
class PipelineRun:
    """What a pipeline runs on and where it writes, besides its budgets (`pipeline_settings`).

    Attributes:
        out: Folder of the run (every stage's artefacts, results.json, report.md).
        dataset: Dataset name (`trapmid_tf.data.load`).
        data_dir: Its folder (None for the embedded digits).
        seed: Seed of the private/public split and the evaluation model (each training
            seed's GMI prior is trained with that training seed, on this split's public data).
        preset: The preset the settings started from (for the measured convergence gap).
        public_split: Digit datasets' public split, or None for the dataset's default.
        target_settings: trapmid-train settings shared by every target (`resolve_config`
            keys; each target sets its own defense, seed and folder).
        overwrite: Redo every stage even if stored.
        fid_weights: Local InceptionV3 weights for FID, or None.
        evaluation_model: A saved evaluation classifier, or None to train one.
        verbose: Show per-epoch logs and inversion progress bars.
    """

    out: str
    dataset: str = "digits"
    data_dir: str | None = None
    seed: int = 0
    preset: str = "quick"
    public_split: str | None = None
    target_settings: dict = dataclasses.field(default_factory=dict)
    overwrite: bool = False
    fid_weights: str | None = None
    evaluation_model: str | None = None
    verbose: bool = False

    @property
    def fit_verbosity(self):
        """`keras.Model.fit`'s verbosity: one line per epoch when verbose, else silent."""
        return 2 if self.verbose else 0

    @property
    def progress_verbosity(self):
        """The inversion loops' verbosity: a progress bar when verbose, else silent."""
        return 1 if self.verbose else 0


# The full preset's budgets: these keys of `trapmid_tf.attacks.REFERENCE_BUDGETS`.
REFERENCE_KEYS = dict(
    gmi_steps="gmi_generator_steps", kedmi_steps="kedmi_generator_steps",
    plgmi_steps="plgmi_generator_steps", surrogate_steps="surrogate_steps",
    kedmi_n_critic="n_critic", kedmi_batch_size="batch_size", top_n="top_n",
    iterations="iterations", plgmi_iterations="plgmi_iterations",
)
# The option attacks' budgets in the full preset, for lack of reference values: the paper runs
# no trigger recovery (TriggerRecoveryAttack's default), and BREP-MI's authors walk until 1000
# accepted steps pass without growth, with no cap (BREPMIAttack's default cap).
FULL_RECOVERY_ITERATIONS = 500
FULL_BREP_ITERATIONS = 10_000
# `brep_initial_batches`: BREP-MI's bound on the batches of 256 latents searched for starting
# points; None is `BREPMIAttack`'s default (`brep_mi.MAX_INITIAL_BATCHES`, 10,000), 4 keeps the
# tiny preset's untrained prior from spending it (its classes without a start are listed apart).
PRESETS = {
    "tiny": dict(
        defenses=["none", "trapmid"], seeds=[0], target_epochs=2, evaluation_epochs=1,
        gmi_steps=2, kedmi_steps=4, kedmi_n_critic=1, kedmi_batch_size=32, plgmi_steps=2,
        surrogate_steps=4, base_channels=8, top_n=4, per_class=2, iterations=4,
        plgmi_iterations=4, mi_face_iterations=4, recovery_iterations=4, brep_iterations=4,
        brep_initial_batches=4, require_trapdoor=False,
    ),
    # The session-2 demo budgets, as steps on the digits public split (21 batches of 64).
    "quick": dict(
        defenses=["none", "trapmid", "negls", "trapmid_negls"], seeds=[0], target_epochs=None,
        evaluation_epochs=10, gmi_steps=126, kedmi_steps=336, kedmi_n_critic=1,
        kedmi_batch_size=32, plgmi_steps=24, surrogate_steps=63, base_channels=16, top_n=30,
        per_class=5, iterations=100, plgmi_iterations=100, mi_face_iterations=300,
        recovery_iterations=300, brep_iterations=1000, brep_initial_batches=None,
        require_trapdoor=True,
    ),
    # The protection claims: the quick preset's prior budgets x4 (the PLG-MI prior's x16: at
    # x4 its reconstructions were still mode-collapsed blobs) and inversion budgets x2; 5 seeds
    # (the paired t-interval on 4 degrees of freedom), 20 reconstructions per class.
    # recipes/convergence.py checks it (README).
    "strong": dict(
        defenses=["none", "trapmid", "trapmid_negls"], seeds=[0, 1, 2, 3, 4], target_epochs=None,
        evaluation_epochs=10, gmi_steps=504, kedmi_steps=1344, kedmi_n_critic=1,
        kedmi_batch_size=32, plgmi_steps=400, surrogate_steps=252, base_channels=16, top_n=30,
        per_class=20, iterations=200, plgmi_iterations=200, mi_face_iterations=600,
        recovery_iterations=600, brep_iterations=2000, brep_initial_batches=None,
        require_trapdoor=True,
    ),
    "full": dict(
        dict.fromkeys(REFERENCE_KEYS), seeds=[0, 1, 2], target_epochs=None,
        defenses=["none", "trapmid", "negls", "trapmid_negls", "mid", "bido"],
        evaluation_epochs=20, base_channels=64, per_class=20, mi_face_iterations=1000,
        recovery_iterations=FULL_RECOVERY_ITERATIONS, brep_iterations=FULL_BREP_ITERATIONS,
        brep_initial_batches=None, require_trapdoor=True,
    ),
}
PRESET_KEYS = tuple(PRESETS["quick"])
STEP_KEYS = ("gmi_steps", "kedmi_steps", "plgmi_steps", "surrogate_steps", "iterations",
             "plgmi_iterations", "mi_face_iterations", "recovery_iterations", "brep_iterations")
# The judge trained when --evaluation_model is not given: the reference's FaceNet (IR-50 at
# 112x112) for faces, a wide CNN without batch norm for the digit datasets.
EVALUATION_ARCHITECTURES = {"celeba": "facenet_eval"}
DEFAULT_EVALUATION_ARCHITECTURE = "small_cnn_wide"
# The held-out judge (stage held_out_judge/), trained only on part of the private test split
# (`evaluation.held_out_split`), for the digit datasets: IR-18 (residual, batch-normalised,
# globally pooled: unlike the evaluation model's plain three-convolution CNN), or VGG16-BN
# where a target is itself an IR-18 (the MNIST preset's), so that it shares its architecture
# with neither the evaluation model nor a target. CelebA has none: its private test split
# holds about 3 images per identity, too few to train a face classifier on.
HELD_OUT_ARCHITECTURES = ("ir18", "vgg16_bn")
HELD_OUT_DATASETS = ("digits", "mnist", "fashion_mnist")
# Its data are about a tenth of the evaluation model's (digits: 145 vs 1,437 images), so it
# trains this many times the evaluation model's epochs (measured on digits, seed 0: IR-18's
# held-out accuracy 0.66 after 10 epochs, 0.91 after 40).
HELD_OUT_EPOCH_FACTOR = 4
HELD_OUT_FOLDER = "held_out_judge"
REFERENCE_N_CRITIC = 5
REFERENCE_BATCH_SIZE = 64
PRIOR_STEPS = {
    "gmi": "gmi_steps", "kedmi": "kedmi_steps", "plgmi": "plgmi_steps",
    "lomma": "surrogate_steps",
}
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
# Pipeline-only defense names: a train_target defense with other settings.
VARIANTS = {
    # The paper's blend ratio and the reference's best-epoch rule (clean accuracy only).
    "trapmid_paper": ("trapmid", dict(alpha=0.02, min_trapdoor_accuracy=0.0)),
    # Random fixed triggers: never optimised through the classifier, so they carry nothing of
    # their class (no trigger leakage); they need a larger blend weight to form the trapdoor
    # (on digits 0.1 does not in 40 epochs, 0.2 does; docs/adaptive_attacks.md).
    "trapmid_random": ("trapmid", dict(optimize_triggers=False, alpha=0.2)),
}


def preset_settings(name):
    """The preset `name`, the full preset's budgets read from the reference's."""
    from trapmid_tf.attacks import suite

    settings = dict(PRESETS[name])
    for key, reference_key in REFERENCE_KEYS.items():
        if settings[key] is None:
            settings[key] = suite.REFERENCE_BUDGETS[reference_key]
    return settings


def pipeline_settings(preset="quick", overrides=None, attacks=None, budget_scale=1,
                      adaptive_weight=1.0, recovery_alpha=None):
    """The preset with `overrides` applied, checked, with the budget scale applied.

    Args:
        preset: A key of `PRESETS`.
        overrides: `{key: value}` replacing the preset's (keys of `PRESET_KEYS`).
        attacks: Attack names, or None for every attack but the option attacks; the lookup
            baseline (`suite.LOOKUP`, the floor of the report's verdicts) and the transfer
            null (`suite.TRANSFER_NULL`, the report's test of its judges) are always run,
            first.
        budget_scale: Factor (>= 1) applied to every step budget (`STEP_KEYS`).
        adaptive_weight: Penalty weight of the adaptive PLG-MI attacks (finite, >= 0).
        recovery_alpha: Blend weight of trigger recovery in (0, 1), or None for the target's.

    Returns:
        The settings dict of the run (the preset's keys, `attacks`, `budget_scale`,
        `adaptive_weight`, `recovery_alpha`).

    Raises:
        ValueError: for an unknown preset, defense or attack, or a bad number; the message
            names the flag of `trapmid-pipeline`.
    """
    from trapmid_tf.attacks import suite

    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)}; received {preset!r}.")
    settings = preset_settings(preset)
    unknown = sorted(set(overrides or {}) - set(PRESET_KEYS))
    if unknown:
        raise ValueError(f"`overrides` must have keys among {list(PRESET_KEYS)}; got {unknown}.")
    settings.update(overrides or {})
    chosen = list(attacks or [
        name for name in suite.ATTACKS if name not in suite.OPTION_ATTACKS
    ])
    always = [suite.LOOKUP, suite.TRANSFER_NULL]
    settings["attacks"] = always + [name for name in chosen if name not in always]
    defenses = (*DEFENSES, *VARIANTS)
    for key, allowed in (("defenses", defenses), ("attacks", suite.ATTACKS)):
        unknown = [name for name in settings[key] if name not in allowed]
        if unknown or not settings[key]:
            raise ValueError(
                f"--{key} must list names among {list(allowed)}; received {settings[key]}."
            )
    seeds = settings["seeds"]
    if not seeds or any(type(seed) is not int or seed < 0 for seed in seeds) or len(
        set(seeds)
    ) < len(seeds):
        raise ValueError(f"--seeds must list distinct integers >= 0; received {seeds}.")
    if budget_scale < 1:
        raise ValueError(f"--budget_scale must be >= 1; received {budget_scale}.")
    if not adaptive_weight >= 0 or adaptive_weight == float("inf"):
        raise ValueError(
            f"--adaptive_weight must be a finite number >= 0; received {adaptive_weight}."
        )
    if recovery_alpha is not None and not 0 < recovery_alpha < 1:
        raise ValueError(f"--recovery_alpha must lie in (0, 1); received {recovery_alpha}.")
    settings.update(adaptive_weight=adaptive_weight, recovery_alpha=recovery_alpha)
    for key in PRESET_KEYS:
        value = settings[key]
        if type(value) is int and value < (0 if "iterations" in key else 1):
            raise ValueError(f"--{key} must be positive; received {value}.")
    settings["budget_scale"] = budget_scale
    for key in STEP_KEYS:
        settings[key] *= budget_scale
    return settings


def measured_gap(settings, preset, dataset):
    """The preset's measured distance from convergence (`MEASURED_GAPS`) as a dict, or None.

    Only a run at the preset's own step budgets on the embedded digits has one: the
    measurement says nothing about other budgets or data.

    Args:
        settings: The run's `pipeline_settings`.
        preset: The preset they started from.
        dataset: The dataset name.
    """
    from trapmid_tf.experiments.measured_convergence import MEASURED_GAPS

    gap = MEASURED_GAPS.get(preset)
    budgets_changed = settings["budget_scale"] != 1 or any(
        settings[key] != preset_settings(preset)[key] for key in STEP_KEYS
    )
    if gap is None or budgets_changed or dataset != "digits":
        return None
    return gap.as_dict()


def target_dir(run, defense, seed):
    """The folder of the target of `defense` trained with `seed`, under --out."""
    return os.path.join(run.out, "targets", defense, f"seed_{seed}")


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
    from trapmid_tf.attacks import suite

    plain = suite.priors_needed([name for name in attacks if name != "plgmi_adaptive"])
    return plain + [name for name in PENALISED_PRIORS if name in attacks]


def attack_priors(name):
    """`{suite.build_attack's prior key: pipeline prior}` of the attack `name`.

    A PLG-MI++ attack searches its own penalised prior (`PENALISED_PRIORS`) as its "plgmi".
    """
    from trapmid_tf.attacks import suite

    if name in PENALISED_PRIORS:
        return {"plgmi": name}
    return {prior: prior for prior in suite.PRIORS_OF_ATTACK[name]}


def stage_count(settings):
    """The number of stages `main` goes through with `settings` (for its progress line)."""
    priors = pipeline_priors(settings["attacks"])
    targets = len(settings["seeds"]) * len(settings["defenses"])
    # Per target: its training, its own priors (PLG-MI++'s penalised ones too, and the
    # estimated variant's signatures before its prior), each attack, its scores.
    own = len([name for name in priors if name != "gmi"]) + int(ESTIMATED in priors)
    per_target = 1 + own + len(settings["attacks"]) + 1
    gmi = len(settings["seeds"]) * int("gmi" in priors)  # one GMI prior per training seed
    # + evaluator, held-out judge (entered even where it does not apply), GMI priors, report
    return targets * per_target + 1 + 1 + gmi + 1


def target_configs(run, settings):
    """The checked trapmid-train settings of every target: `{(defense, seed): config}`.

    The trapdoor's own settings (`TRAPDOOR_KEYS`) reach only the defenses with triggers.

    Raises:
        ValueError, FileNotFoundError: as `resolve_config`, for bad target settings, or
            for a dataset without public data ("class_folder").
    """
    if run.dataset == "class_folder":
        raise ValueError(
            "--dataset=class_folder has no public images for the attacks; the pipeline needs "
            "a dataset with a public split (train targets on it with trapmid-train)."
        )
    configs = {}
    for seed in settings["seeds"]:
        for defense in settings["defenses"]:
            base, variant = VARIANTS.get(defense, (defense, {}))
            # A target without a trapdoor is kept and reported; the pipeline fails at the end.
            changes = dict(
                variant, dataset=run.dataset, data_dir=run.data_dir,
                public_split=run.public_split, defense=base,
                out=target_dir(run, defense, seed), seed=seed, split_seed=run.seed,
                require_trapdoor=False,
            )
            if settings["target_epochs"] is not None and run.target_settings.get("epochs") is None:
                changes["epochs"] = settings["target_epochs"]
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
    from trapmid_tf.files import build_or_reuse

    targets = {}
    for seed in settings["seeds"]:
        for defense in settings["defenses"]:
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
    from trapmid_tf.attacks import suite

    if "gmi" not in suite.priors_needed(settings["attacks"]):
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


def target_priors(run, directory, target, config, seed, public, gmi, settings, progress,
                  detector=None, public_images=None):
    """Trains (or reuses) the priors the selected attacks need against one target.

    Each PLG-MI++ attack's prior (`PENALISED_PRIORS`, folder priors/<attack>/) is PLG-MI's
    with the plain one's budget and seed, its top-n ranking and generator loss penalised
    with its signatures at weight `adaptive_weight`: the defender's (`detector`'s) for
    `plgmi_adaptive`, which does not apply to a target without triggers, or
    `estimated_signatures`' for `plgmi_adaptive_estimated`.

    Args:
        directory: The target's folder.
        target, config: The target model and its train_target settings.
        seed: The target's training seed, also the seed of its priors.
        public: Unbatched public images.
        gmi: `(networks, settings)` of the GMI prior of `seed` (`seed_gmi_prior`), or None.
        settings: The pipeline settings.
        progress: The run's `StageProgress`.
        detector: The target's `TrapdoorDetector`, or None without triggers.
        public_images: The public images as one array (the estimated signatures'), or None
            when `plgmi_adaptive_estimated` does not run.

    Returns:
        `(priors, prior_settings, signatures)`: dicts by prior name of networks and stage
        settings, and `{PLG-MI++ attack: the signatures its prior was trained with}`; a
        prior that does not apply is in none of them.
    """
    priors, prior_settings, signatures = {}, {}, {}
    for name in pipeline_priors(settings["attacks"]):
        if name == "gmi":
            priors[name], prior_settings[name] = gmi
            continue
        kind, penalty = name, {}
        if name in PENALISED_PRIORS:
            kind = "plgmi"
            penalty = dict(signature_weight=settings["adaptive_weight"],
                           signatures=SIGNATURE_SOURCES[name])
        if name == ESTIMATED:
            signatures[name], penalty["estimated_from"] = estimated_signatures(
                run, directory, target, seed, (priors["plgmi"], prior_settings["plgmi"]),
                settings, public_images, progress,
            )
        elif kind != name and detector is not None:
            signatures[name] = detector.signatures
        with progress.stage(f"{name} prior, {stage_target(directory)}"):
            if kind != name and name not in signatures:
                logging.info("prior %s: not applicable to this target (%s)", name, NO_TRAPDOOR)
                continue
            prior_settings[name] = dict(prior_budget(settings, kind, seed, config), **penalty)
            priors[name] = train_prior(
                kind, public, target, prior_settings[name],
                os.path.join(directory, "priors", name), run.overwrite, run.fit_verbosity,
                signatures=signatures.get(name),
            )
    return priors, prior_settings, signatures


def estimated_signatures(run, directory, target, seed, plain, settings, public_images,
                         progress):
    """Trains (or reuses) the model-only attacker's signatures: stage signatures/<ESTIMATED>/.

    A plain PLG-MI round on the plain PLG-MI prior, with PLG-MI++'s budget
    (`plgmi_iterations`), classes, reconstructions per class and seed, then
    `estimate_signatures` of its reconstructions against the target's top-n public images.

    Args:
        directory: The target's folder.
        target: The target model.
        seed: The target's training seed (the round's seed).
        plain: `(networks, stage settings)` of the target's plain PLG-MI prior.
        settings: The pipeline settings.
        public_images: The public images as one array.
        progress: The run's `StageProgress`.

    Returns:
        `(signatures, stage settings)`: a float64 array `(target classes, feature dims)`.
    """
    import numpy as np

    from trapmid_tf.attacks import suite
    from trapmid_tf.attacks.plgmi_adaptive import estimate_signatures
    from trapmid_tf.files import atomic_path, build_or_reuse

    networks, prior = plain
    classes = attacked_classes(target)
    out = os.path.join(directory, "signatures", ESTIMATED)
    path = os.path.join(out, SIGNATURES_FILE)
    stage = dict(
        signatures=SIGNATURE_SOURCES[ESTIMATED], top_n=settings["top_n"],
        public_split=settings["public_split"],
        first_round=dict(prior=prior, iterations=settings["plgmi_iterations"], classes=classes,
                         per_class=settings["per_class"], seed=seed),
    )

    def build():
        budget = suite.InversionSettings(plgmi_iterations=settings["plgmi_iterations"])
        first = suite.build_attack("plgmi", {"plgmi": networks}, budget).invert(
            target, range(classes), per_class=settings["per_class"], seed=seed,
            verbose=run.progress_verbosity,
        )
        estimated = estimate_signatures(
            target, first.images, first.labels, public_images, settings["top_n"]
        )
        with atomic_path(path) as temporary:
            np.save(temporary, estimated)
        return estimated

    with progress.stage(f"{ESTIMATED} signatures, {stage_target(directory)}"):
        found = build_or_reuse(out, stage, build, lambda: np.load(path), run.overwrite,
                               logging.info)
    return found, stage


def prior_budget(settings, name, seed, target_config=None):
    """The settings of the prior `name`'s stage (with the target's, for target priors)."""
    return dict(
        steps=settings[PRIOR_STEPS[name]],
        batch_size=settings["kedmi_batch_size"] if name == "kedmi" else REFERENCE_BATCH_SIZE,
        base_channels=settings["base_channels"], top_n=settings["top_n"],
        n_critic=settings["kedmi_n_critic"] if name == "kedmi" else REFERENCE_N_CRITIC,
        seed=seed, public_split=settings["public_split"],
        target=target_config and identity(target_config),
    )


def attack_options(name, config, signatures, public_images, settings):
    """The keyword options of one attack against one target, and what identifies them.

    Args:
        name: Attack name.
        config: The target's train_target settings.
        signatures: The signatures of a PLG-MI++ attack's prior (`target_priors`), or None
            where it does not apply (`plgmi_adaptive` against a target without triggers).
        public_images: The attacker's public images, float32 NHWC in [0, 1].
        settings: The pipeline settings.

    Returns:
        `(options, description)`: the `suite.build_attack` keywords and a JSON-able
        description of them for the stage's settings (None for the attacks without options);
        None when the attack does not apply to the target.
    """
    from trapmid_tf.attacks import suite

    weight = settings["adaptive_weight"]
    if name == suite.LOOKUP:
        return dict(public_images=public_images), dict(public_split=settings["public_split"])
    if name == suite.TRANSFER_NULL:
        from trapmid_tf.attacks.transfer_null import TRANSFER_STEP_SIZE, TRANSFER_STEPS

        options = dict(iterations=TRANSFER_STEPS, step_size=TRANSFER_STEP_SIZE)
        return (dict(options, public_images=public_images),
                dict(options, public_split=settings["public_split"]))
    if name in PENALISED_PRIORS:
        if signatures is None:
            return None
        description = dict(penalty_weight=weight, signatures=SIGNATURE_SOURCES[name])
        if name == ESTIMATED:
            description.update(top_n=settings["top_n"], public_split=settings["public_split"])
        return dict(signatures=signatures, penalty_weight=weight), description
    if name == "trigger_recovery":
        alpha = settings["recovery_alpha"] or config["alpha"]
        options = dict(alpha=alpha, iterations=settings["recovery_iterations"])
        return (dict(options, public_images=public_images),
                dict(options, public_split=settings["public_split"]))
    if name == "brep_mi":
        from trapmid_tf.attacks.brep_mi import MAX_INITIAL_BATCHES

        options = dict(max_iterations=settings["brep_iterations"],
                       max_initial_batches=settings["brep_initial_batches"] or MAX_INITIAL_BATCHES)
        return options, options
    return {}, None


def attack_target(run, directory, target, config, seed, priors, prior_settings, settings, progress,
                  signatures=None, public_images=None):
    """Runs (or reuses) every selected attack against one target.

    Each attack searches the priors of `attack_priors` (a PLG-MI++ attack its own).

    Args:
        directory: The target's folder.
        target, config: The target model and its train_target settings.
        seed: The target's training seed, also the attacks' seed.
        priors, prior_settings: As `target_priors` returns them.
        settings: The pipeline settings.
        progress: The run's `StageProgress`.
        signatures: `{PLG-MI++ attack: signatures}` as `target_priors` returns them, or None
            when none runs.
        public_images: Public images as an array (the lookup's, the transfer null's and
            trigger recovery's), or None when none of them runs.

    Returns:
        `{attack: stored arrays}`, None for an attack that does not apply to the target.
    """
    results = {}
    for name in settings["attacks"]:
        applicable = attack_options(name, config, (signatures or {}).get(name), public_images,
                                    settings)
        with progress.stage(f"attack {name}, {stage_target(directory)}"):
            if applicable is None:
                logging.info("attack %s: not applicable to this target (%s)", name, NO_TRAPDOOR)
                results[name] = None
                continue
            options, description = applicable
            searched = attack_priors(name)
            attack_settings = dict(
                num_classes=attacked_classes(target),
                per_class=settings["per_class"],
                seed=seed, iterations=settings["iterations"],
                plgmi_iterations=settings["plgmi_iterations"],
                mi_face_iterations=settings["mi_face_iterations"],
                kedmi_batch_size=settings["kedmi_batch_size"], target=identity(config),
                priors={prior: prior_settings[prior] for prior in searched.values()},
            )
            if description is not None:
                attack_settings["options"] = description
            # With its signatures estimated beforehand (`estimated_signatures`), the
            # estimated variant's search is PLG-MI++ with given signatures.
            results[name] = run_attack(
                "plgmi_adaptive" if name == ESTIMATED else name, target,
                {key: priors[prior] for key, prior in searched.items()}, attack_settings,
                os.path.join(directory, "attacks", name), run.overwrite, options,
                run.progress_verbosity,
            )
    return results


def stage_target(directory):
    """"<defense>, seed <s>" of a target folder (targets/<defense>/seed_<s>), for stage names."""
    defense, seed = os.path.normpath(directory).split(os.sep)[-2:]
    return f"{defense}, seed {seed.removeprefix('seed_')}"


def prior_steps(directory, gmi_folder, priors):
    """`{prior: steps.json contents}` of the priors one target's attacks used.

    Args:
        directory: The target's folder (its own priors are under priors/).
        gmi_folder: The folder of the GMI prior of the target's seed (`gmi_directory`).
        priors: The names of the priors trained for the target (`target_priors`' keys).
    """
    from trapmid_tf.attacks import suite

    return {
        name: suite.load_training_steps(
            gmi_folder if name == "gmi" else os.path.join(directory, "priors", name)
        )
        for name in priors
    }


def attack_seed(evaluator, detector, stored, target_results, steps, evaluation_model=None,
                triggers=None, searched=None):
    """The scores of one target (one defense and seed).

    Args:
        evaluator: The `AttackEvaluator`.
        detector: The target's `TrapdoorDetector`, or None.
        stored: `{attack: stored arrays or None}` (`attack_target`).
        target_results: The target's train_target results.
        steps: `prior_steps` of the target.
        evaluation_model: The evaluation classifier (judges the triggers); needed with
            `triggers`.
        triggers: The target's triggers `(classes, H, W, C)`, or None.
        searched: `{attack: the prior it searched}` (`penalised_prior_records`), or None.

    Returns:
        Dict: accuracies, `trapdoor_formed`, `prior_steps`, `trigger_leakage` (None without
        triggers) and `attacks`: per attack its scores, `{"not_applicable": reason}` for an
        attack that did not apply, for trigger recovery against triggers the comparison
        of its patterns with them and `trigger_classes`, for BREP-MI
        `classes_without_start` (classes left out of its scores: no starting point found),
        and for the attacks in `searched` their `prior`.
    """
    from trapmid_tf.attacks.trigger_recovery import compare_with_triggers
    from trapmid_tf.metrics.evaluator import NOT_APPLICABLE
    from trapmid_tf.metrics.leakage import trigger_leakage

    attacks = {}
    for name, arrays in stored.items():
        if arrays is None:
            attacks[name] = {NOT_APPLICABLE: NO_TRAPDOOR}
            continue
        attacks[name] = dict(
            score_attack(evaluator, arrays, detector),
            inversion_steps=int(arrays["iterations"]),
        )
        if "classes_without_start" in arrays:
            attacks[name]["classes_without_start"] = arrays["classes_without_start"].tolist()
        if name in (searched or {}):
            attacks[name]["prior"] = searched[name]
        if name == "trigger_recovery" and triggers is not None:
            attacks[name].update(
                compare_with_triggers(arrays["images"], arrays["labels"], triggers),
                trigger_classes=len(triggers),
            )
    leakage = None
    if triggers is not None:
        leakage = dict(trigger_leakage(evaluation_model, triggers), triggers=len(triggers))
    return dict(
        accuracy=target_results["test_accuracy"],
        trapdoor_accuracy=target_results["trapdoor_accuracy"],
        trapdoor_formed=target_results.get("trapdoor_formed"),
        trigger_leakage=leakage,
        prior_steps=steps,
        attacks=attacks,
    )


def judge(run, private_train, settings, held_out=None):
    """The evaluation model: --evaluation_model as given, else trained (or reused) in evaluator/.

    Args:
        run: The `PipelineRun`.
        private_train: The private training split (its image shape).
        settings: The pipeline settings.
        held_out: `(train, test, num_classes, description)`: the data to train and test the
            judge on instead of the dataset's evaluation data, `description` (a dict) saying
            what they are in the stage's settings; or None.

    Returns:
        `(model, description)`: the description holds architecture (or the file), test
        accuracy (None for a given file) and classes.
    """
    if run.evaluation_model:
        image_shape = private_train.element_spec[0].shape
        model = load_evaluation_classifier(run.evaluation_model, image_shape)
        architecture, accuracy = os.path.abspath(run.evaluation_model), None
    else:
        architecture = EVALUATION_ARCHITECTURES.get(run.dataset, DEFAULT_EVALUATION_ARCHITECTURE)
        stage = dict(architecture=architecture, epochs=settings["evaluation_epochs"],
                     seed=run.seed)
        data = None
        if held_out is not None:
            *data, stage["data"] = held_out
        model, accuracy = evaluation_model(
            run.dataset, run.data_dir, stage, os.path.join(run.out, "evaluator"),
            run.overwrite, run.fit_verbosity, data,
        )
    return model, dict(
        architecture=architecture, accuracy=accuracy, classes=int(model.output_shape[-1])
    )


def held_out_architecture(dataset, configs):
    """The held-out judge's architecture: the first of `HELD_OUT_ARCHITECTURES` that no
    target has, or None (a dataset outside `HELD_OUT_DATASETS`, or targets of each).

    Args:
        dataset: The dataset name.
        configs: The targets' train_target settings (`target_configs`).
    """
    if dataset not in HELD_OUT_DATASETS:
        return None
    models = {config["model"] for config in configs.values()}
    return next((name for name in HELD_OUT_ARCHITECTURES if name not in models), None)


def held_out_judge(run, private_test, configs, settings, progress):
    """Trains (or reuses) the held-out judge in held_out_judge/: a classifier of the private
    classes of another architecture than the evaluation model's and the targets'
    (`held_out_architecture`), trained on images no target trains on
    (`evaluation.held_out_split` of the private test split, by `run.seed`), for
    `HELD_OUT_EPOCH_FACTOR` times the evaluation model's epochs.

    Args:
        run: The `PipelineRun`.
        private_test: The private test split.
        configs: The targets' train_target settings (`target_configs`).
        settings: The pipeline settings.
        progress: The run's `StageProgress`.

    Returns:
        `(model, description)`: the description holds architecture, test accuracy (on the
        judge's own test part), classes and data (`held_out_split`'s description); `(None,
        None)` for a dataset without a held-out judge.
    """
    from trapmid_tf.experiments.evaluation import held_out_split

    with progress.stage("held-out judge"):
        architecture = held_out_architecture(run.dataset, configs)
        if architecture is None:
            logging.info("held-out judge: none (dataset %s, target models %s)", run.dataset,
                         sorted({config["model"] for config in configs.values()}))
            return None, None
        *data, description = held_out_split(private_test, run.seed)
        stage = dict(architecture=architecture, seed=run.seed, data=description,
                     epochs=settings["evaluation_epochs"] * HELD_OUT_EPOCH_FACTOR)
        model, accuracy = evaluation_model(
            run.dataset, run.data_dir, stage, os.path.join(run.out, HELD_OUT_FOLDER),
            run.overwrite, run.fit_verbosity, data,
        )
    return model, dict(architecture=architecture, accuracy=accuracy,
                       classes=int(model.output_shape[-1]), data=description)



@dataclasses.dataclass(frozen=True)
class Scoring:
    """What attacking and scoring every target of a run shares (`attack_and_score`).

    Attributes:
        public: Unbatched public images.
        public_images: The same as one array.
        gmi: `seed -> GMI prior` (`gmi_prior_per_seed`).
        evaluator: The `AttackEvaluator`.
        evaluation_model: The judge (it also judges the triggers).
    """

    public: object
    public_images: object
    gmi: object
    evaluator: object
    evaluation_model: object


def run_pipeline(run, settings, configs=None, progress=None):
    """Runs every stage (reusing the stored ones) and writes results.json and the report.

    Args:
        run: The `PipelineRun`.
        settings: The run's `pipeline_settings`.
        configs: `target_configs(run, settings)`, if already computed.
        progress: A `StageProgress` over `stage_count(settings)` stages, or None for one on
            standard error.

    Returns:
        The results dict written to results.json.
    """
    import numpy as np

    import trapmid_tf as tm
    from trapmid_tf.files import write_json

    start = time.perf_counter()
    settings = dict(
        settings, public_split=default_public_split(run.dataset, run.public_split)
    )
    configs = configs or target_configs(run, settings)
    progress = progress or StageProgress(stage_count(settings))
    write_json(os.path.join(run.out, "flags.json"), dict(
        settings, dataset=run.dataset, data_dir=run.data_dir, seed=run.seed,
        preset=run.preset,
    ))
    (private_train, private_test), public = tm.data.load(
        run.dataset, run.data_dir, seed=run.seed, public_split=settings["public_split"]
    )
    targets = train_targets(run, settings, configs, progress)
    with progress.stage("evaluation model"):
        evaluation_model, evaluation = judge(run, private_train, settings)
    held_out_model, held_out = held_out_judge(run, private_test, configs, settings, progress)
    evaluator = make_evaluator(evaluation_model, private_train, run.fid_weights, private_test,
                               held_out_model)
    scoring = Scoring(public, np.stack(list(public.as_numpy_iterator())),
                      gmi_prior_per_seed(run, settings, public, progress), evaluator,
                      evaluation_model)
    per_seed, reconstructions = {}, {}
    for (defense, seed), (config, target_results) in targets.items():
        directory = target_dir(run, defense, seed)
        target = tm.models.load_classifier(os.path.join(directory, "classifier.keras"))
        trigger_path = os.path.join(directory, "triggers.npz")
        detector = (
            make_detector(target, trigger_path, private_train)
            if os.path.isfile(trigger_path) else None
        )
        scores, shown = attack_and_score(
            run, settings, scoring, directory, target, config, seed, target_results, progress,
            detector, target_triggers(run, defense, seed),
        )
        per_seed.setdefault(defense, {})[seed] = scores
        attacked = attacked_classes(target)  # the same for every target: one dataset
        if seed == settings["seeds"][0]:
            reconstructions[defense] = shown
    results = run_results(run, settings, evaluation, evaluator, attacked, per_seed, start,
                          progress, held_out)
    write_report(run, results, private_train, reconstructions, stored_triggers(run, settings),
                 progress)
    return results


def attack_and_score(run, settings, scoring, directory, target, config, seed, target_results,
                     progress, detector=None, triggers=None):
    """Trains (or reuses) one target's priors, runs (or reuses) its attacks and scores them.

    Args:
        run: The `PipelineRun`.
        settings: The pipeline settings.
        scoring: The run's `Scoring`.
        directory: The target's folder (`target_dir`).
        target, config: The target model and what identifies it (train_target settings).
        seed: The seed of its priors and attacks (a pipeline target's training seed).
        target_results: Its `test_accuracy`, `trapdoor_accuracy` (and `trapdoor_formed`).
        progress: The run's `StageProgress`.
        detector: The target's `TrapdoorDetector`, or None without triggers.
        triggers: The target's triggers `(classes, H, W, C)`, or None.

    Returns:
        `(scores, shown)`: `attack_seed`'s scores and `{attack: stored arrays}` of the
        attacks that applied (for the report's grids).
    """
    priors, prior_settings, signatures = target_priors(
        run, directory, target, config, seed, scoring.public, scoring.gmi(seed), settings,
        progress, detector, scoring.public_images,
    )
    stored = attack_target(run, directory, target, config, seed, priors, prior_settings,
                           settings, progress, signatures, scoring.public_images)
    steps = prior_steps(directory, gmi_directory(run, seed), prior_settings)
    with progress.stage(f"scores, {stage_target(directory)}"):
        scores = attack_seed(scoring.evaluator, detector, stored, target_results, steps,
                             scoring.evaluation_model, triggers,
                             penalised_prior_records(prior_settings, steps))
    return scores, {name: arrays for name, arrays in stored.items() if arrays is not None}


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


def run_results(run, settings, evaluation, evaluator, attacked, per_seed, start, progress,
                held_out=None):
    """The results dict of a run (results.json) from its scores.

    Args:
        run: The `PipelineRun`.
        settings: The pipeline settings.
        evaluation: The judge's description (`judge`).
        evaluator: The run's `AttackEvaluator`.
        attacked: The number of attacked classes.
        per_seed: `{defense: {seed: attack_seed scores}}`.
        start: `time.perf_counter()` at the run's start.
        progress: The run's `StageProgress` (the seconds of each stage so far).
        held_out: The held-out judge's description (`held_out_judge`), or None without one.
    """
    from trapmid_tf.experiments import summarize_seeds

    pixel = evaluator.judges.get("pixel")
    return dict(
        dataset=run.dataset, public_split=settings["public_split"], preset=run.preset,
        settings=settings, evaluation_model=evaluation, attacked_classes=attacked,
        fid_features=evaluator.fid_features,
        pixel_judge=None if pixel is None else dict(
            references="private test split", images=len(pixel.labels)
        ),
        held_out_judge=held_out,
        defenses={d: summarize_seeds(seeds) for d, seeds in per_seed.items()},
        seconds=round(time.perf_counter() - start, 1), stage_seconds=dict(progress.seconds),
        convergence_gap=measured_gap(settings, run.preset, run.dataset),
    )


def write_report(run, results, private_train, reconstructions, triggers, progress):
    """Writes results.json, then, as the run's last stage, report.md, its grids and their
    TensorBoard images, and closes the progress line.

    Args:
        run: The `PipelineRun`.
        results: The run's results dict.
        private_train: The private training split (the grids' private samples).
        reconstructions: `{defense: {attack: stored arrays}}` shown in the grids.
        triggers: `{defense: triggers}` of the targets with triggers.
        progress: The run's `StageProgress`.
    """
    from trapmid_tf import report
    from trapmid_tf.files import write_json

    write_json(os.path.join(run.out, "results.json"), results)
    private_images, private_labels = private_arrays(private_train)
    with progress.stage("report"):
        grids = report.write(run.out, results, private_images, private_labels,
                             reconstructions, triggers)
        log_grids(os.path.join(run.out, "logs"), grids)
    progress.close("done")


def failed_trapdoors(results):
    """The defenses of a pipeline's results whose trapdoor did not form in some seed."""
    from trapmid_tf.report.interpretation import trapdoor_not_formed

    return [d for d, scores in results["defenses"].items() if trapdoor_not_formed(scores)]


def target_triggers(run, defense, seed):
    """The triggers `(classes, H, W, C)` of a target from its triggers.npz, or None."""
    import numpy as np

    path = os.path.join(target_dir(run, defense, seed), "triggers.npz")
    if not os.path.isfile(path):
        return None
    with np.load(path) as stored:
        return stored["triggers"]


def stored_triggers(run, settings):
    """`{defense: triggers}` of the first seed's targets that have a triggers.npz."""
    triggers = {d: target_triggers(run, d, settings["seeds"][0]) for d in settings["defenses"]}
    return {defense: array for defense, array in triggers.items() if array is not None}


def log_grids(log_dir, grids):
    """Writes the report's grids as TensorBoard images, in an owner-only folder (triggers)."""
    import tensorflow as tf
    from trapmid_tf.files import secret_folder

    with tf.summary.create_file_writer(secret_folder(log_dir)).as_default():
        for name, picture in grids.items():
            tf.summary.image(name, picture[None], step=0)
