"""The privacy report: trains targets with each defense, attacks them all, evaluates, reports.

Example:
    trapmid-pipeline --dataset=digits --preset=quick --out=runs/pipeline

Stages (each reused when --out already holds it finished with the same settings; --overwrite
redoes them): per training seed one target per defense (trapmid-train; any of its
flags except --defense, --seed and --out applies to every target; every seed shares the
private/public split of --seed), the evaluation model, the GMI prior (shared), per target the
priors that depend on it (KED-MI, PLG-MI, LOMMA) and every attack, then the evaluation. Writes
into --out: flags.json, results.json, report.md, grids/*.png (private samples next to each
defense's reconstructions; the triggers), TensorBoard logs under logs/, and each stage's folder
(targets/<defense>/seed_<s>/..., evaluator/, priors/gmi/).

Budgets are optimiser steps: generator steps of the GAN priors, distillation steps of the LOMMA
surrogates, inversion iterations; results.json records the steps every stage ran.
--budget_scale multiplies all of them (recipes/convergence.py compares 1x, 2x, 4x).

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

import json
import os
import sys
import time

from absl import app, flags, logging

from trapmid_tf.cli import attack as attack_recipe
from trapmid_tf.cli import console
from trapmid_tf.cli import evaluate as evaluate_recipe
from trapmid_tf.cli import train_prior as prior_recipe
from trapmid_tf.cli import train_target
from trapmid_tf.experiments.progress import StageProgress

FLAGS = flags.FLAGS

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
PRESETS = {
    "tiny": dict(
        defenses=["none", "trapmid"], seeds=[0], target_epochs=2, evaluation_epochs=1,
        gmi_steps=2, kedmi_steps=4, kedmi_n_critic=1, kedmi_batch_size=32, plgmi_steps=2,
        surrogate_steps=4, base_channels=8, top_n=4, per_class=2, iterations=4,
        plgmi_iterations=4, mi_face_iterations=4, recovery_iterations=4, brep_iterations=4,
        require_trapdoor=False,
    ),
    # The session-2 demo budgets, as steps on the digits public split (21 batches of 64).
    "quick": dict(
        defenses=["none", "trapmid", "negls", "trapmid_negls"], seeds=[0], target_epochs=None,
        evaluation_epochs=10, gmi_steps=126, kedmi_steps=336, kedmi_n_critic=1,
        kedmi_batch_size=32, plgmi_steps=24, surrogate_steps=63, base_channels=16, top_n=30,
        per_class=5, iterations=100, plgmi_iterations=100, mi_face_iterations=300,
        recovery_iterations=300, brep_iterations=1000, require_trapdoor=True,
    ),
    # The protection claims: the quick preset's prior budgets x4 (the PLG-MI prior's x16: at
    # x4 its reconstructions were still mode-collapsed blobs) and inversion budgets x2; 3 seeds,
    # 20 reconstructions per class. recipes/convergence.py checks it (README).
    "strong": dict(
        defenses=["none", "trapmid", "trapmid_negls"], seeds=[0, 1, 2], target_epochs=None,
        evaluation_epochs=10, gmi_steps=504, kedmi_steps=1344, kedmi_n_critic=1,
        kedmi_batch_size=32, plgmi_steps=400, surrogate_steps=252, base_channels=16, top_n=30,
        per_class=20, iterations=200, plgmi_iterations=200, mi_face_iterations=600,
        recovery_iterations=600, brep_iterations=2000, require_trapdoor=True,
    ),
    "full": dict(
        dict.fromkeys(REFERENCE_KEYS), seeds=[0, 1, 2], target_epochs=None,
        defenses=["none", "trapmid", "negls", "trapmid_negls", "mid", "bido"],
        evaluation_epochs=20, base_channels=64, per_class=20, mi_face_iterations=1000,
        recovery_iterations=FULL_RECOVERY_ITERATIONS, brep_iterations=FULL_BREP_ITERATIONS,
        require_trapdoor=True,
    ),
}
PRESET_KEYS = tuple(PRESETS["quick"])
STEP_KEYS = ("gmi_steps", "kedmi_steps", "plgmi_steps", "surrogate_steps", "iterations",
             "plgmi_iterations", "mi_face_iterations", "recovery_iterations", "brep_iterations")
# The judge trained when --evaluation_model is not given: the reference's FaceNet (IR-50 at
# 112x112) for faces, a wide CNN without batch norm for the digit datasets.
EVALUATION_ARCHITECTURES = {"celeba": "facenet_eval"}
DEFAULT_EVALUATION_ARCHITECTURE = "small_cnn_wide"
REFERENCE_N_CRITIC = 5
REFERENCE_BATCH_SIZE = 64
PRIOR_STEPS = {
    "gmi": "gmi_steps", "kedmi": "kedmi_steps", "plgmi": "plgmi_steps",
    "lomma": "surrogate_steps",
}
# Why PLG-MI++ with the defender's signatures does not run against a target without triggers.
NO_TRAPDOOR = "no trapdoor"
# Pipeline-only defense names: a train_target defense with other settings.
VARIANTS = {
    # The paper's blend ratio and the reference's best-epoch rule (clean accuracy only).
    "trapmid_paper": ("trapmid", dict(alpha=0.02, min_trapdoor_accuracy=0.0)),
    # Random fixed triggers: never optimised through the classifier, so they carry nothing of
    # their class (no trigger leakage); they need a larger blend weight to form the trapdoor
    # (on digits 0.1 does not in 40 epochs, 0.2 does; docs/adaptive_attacks.md).
    "trapmid_random": ("trapmid", dict(optimize_triggers=False, alpha=0.2)),
}

flags.DEFINE_enum("preset", "quick", sorted(PRESETS), "Budget preset; the flags below override it.")
flags.DEFINE_list("defenses", None,
                  "Defenses to train and attack (default: preset); train_target's names and "
                  f"{sorted(VARIANTS)}.")
flags.DEFINE_list("attacks", None,
                  "Attacks to run (default: the six that need no knowledge of the defense; "
                  "also plgmi_adaptive, plgmi_adaptive_estimated, trigger_recovery, brep_mi).")
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


def preset_settings(name):
    """The preset `name`, the full preset's budgets read from the reference's."""
    from trapmid_tf.attacks import suite

    settings = dict(PRESETS[name])
    for key, reference_key in REFERENCE_KEYS.items():
        if settings[key] is None:
            settings[key] = suite.REFERENCE_BUDGETS[reference_key]
    return settings


def pipeline_settings():
    """The preset with the flags that were given, checked, with the budget scale applied.

    Raises:
        app.UsageError: For an unknown defense or attack or a bad number.
    """
    from trapmid_tf.attacks import suite

    settings = preset_settings(FLAGS.preset)
    for key in PRESET_KEYS:
        if key != "seeds" and FLAGS[key].present:
            settings[key] = FLAGS[key].value
    if FLAGS.seeds is not None:
        try:
            settings["seeds"] = [int(seed) for seed in FLAGS.seeds]
        except ValueError as error:
            raise app.UsageError(
                f"--seeds must list integers >= 0; received {FLAGS.seeds}."
            ) from error
    settings["attacks"] = FLAGS.attacks or [
        name for name in suite.ATTACKS if name not in suite.OPTION_ATTACKS
    ]
    defenses = (*train_target.DEFENSES, *VARIANTS)
    for key, allowed in (("defenses", defenses), ("attacks", suite.ATTACKS)):
        unknown = [name for name in settings[key] if name not in allowed]
        if unknown or not settings[key]:
            raise app.UsageError(
                f"--{key} must list names among {list(allowed)}; received {settings[key]}."
            )
    if not settings["seeds"] or min(settings["seeds"]) < 0 or len(set(settings["seeds"])) < len(
        settings["seeds"]
    ):
        raise app.UsageError(
            f"--seeds must list distinct integers >= 0; received {settings['seeds']}."
        )
    if FLAGS.budget_scale < 1:
        raise app.UsageError(f"--budget_scale must be >= 1; received {FLAGS.budget_scale}.")
    if not FLAGS.adaptive_weight >= 0 or FLAGS.adaptive_weight == float("inf"):
        raise app.UsageError(
            f"--adaptive_weight must be a finite number >= 0; received {FLAGS.adaptive_weight}."
        )
    if FLAGS.recovery_alpha is not None and not 0 < FLAGS.recovery_alpha < 1:
        raise app.UsageError(
            f"--recovery_alpha must lie in (0, 1); received {FLAGS.recovery_alpha}."
        )
    settings.update(adaptive_weight=FLAGS.adaptive_weight, recovery_alpha=FLAGS.recovery_alpha)
    for key in PRESET_KEYS:
        value = settings[key]
        if type(value) is int and value < (0 if "iterations" in key else 1):
            raise app.UsageError(f"--{key} must be positive; received {value}.")
    settings["budget_scale"] = FLAGS.budget_scale
    for key in STEP_KEYS:
        settings[key] *= FLAGS.budget_scale
    if FLAGS.defense != "trapmid" or FLAGS["defense"].present:
        raise app.UsageError("--defense is train_target's; use --defenses here.")
    if not FLAGS.out:
        raise app.UsageError("--out must be set.")
    return settings


def measured_gap(settings):
    """The preset's measured distance from convergence (`MEASURED_GAPS`) as a dict, or None.

    Only a run at the preset's own step budgets on the embedded digits has one: the
    measurement says nothing about other budgets or data.
    """
    from trapmid_tf.experiments.measured_convergence import MEASURED_GAPS

    gap = MEASURED_GAPS.get(FLAGS.preset)
    budgets_changed = settings["budget_scale"] != 1 or any(
        settings[key] != preset_settings(FLAGS.preset)[key] for key in STEP_KEYS
    )
    if gap is None or budgets_changed or FLAGS.dataset != "digits":
        return None
    return gap.as_dict()


def target_dir(defense, seed):
    """The folder of the target of `defense` trained with `seed`, under --out."""
    return os.path.join(FLAGS.out, "targets", defense, f"seed_{seed}")


def stage_count(settings):
    """The number of stages `main` goes through with `settings` (for its progress line)."""
    from trapmid_tf.attacks import suite

    priors = suite.priors_needed(settings["attacks"])
    targets = len(settings["seeds"]) * len(settings["defenses"])
    # Per target: its training, its own priors, each attack, its scores.
    per_target = 1 + len([name for name in priors if name != "gmi"]) + len(settings["attacks"]) + 1
    return targets * per_target + 1 + int("gmi" in priors) + 1  # + evaluator, GMI, report


def train_targets(settings, progress):
    """Trains (or reuses) one target per defense and seed.

    Returns:
        `{(defense, seed): (config, results)}`.
    """
    from trapmid_tf.files import build_or_reuse

    targets = {}
    for seed in settings["seeds"]:
        for defense in settings["defenses"]:
            out = target_dir(defense, seed)
            base, variant = VARIANTS.get(defense, (defense, {}))
            # A target without a trapdoor is kept and reported; the pipeline fails at the end.
            changes = dict(variant, defense=base, out=out, seed=seed, split_seed=FLAGS.seed,
                           require_trapdoor=False)
            if settings["target_epochs"] is not None and not FLAGS["epochs"].present:
                changes["epochs"] = settings["target_epochs"]
            config = train_target.config_from_flags(**changes)

            def load(out=out):
                with open(os.path.join(out, "results.json"), encoding="utf-8") as stream:
                    return json.load(stream)

            with progress.stage(f"target {defense}, seed {seed}"):
                results = build_or_reuse(
                    out, train_target.identity(config),
                    lambda config=config: train_target.train(config), load,
                    FLAGS.overwrite, logging.info,
                )
            targets[defense, seed] = (config, results)
    return targets


def target_priors(directory, target, config, seed, public, gmi, settings, progress):
    """Trains (or reuses) the priors the selected attacks need against one target.

    Args:
        directory: The target's folder.
        target, config: The target model and its train_target settings.
        seed: The target's training seed, also the seed of its priors.
        public: Unbatched public images.
        gmi: `(networks, settings)` of the shared GMI prior, or None.
        settings: The pipeline settings.
        progress: The run's `StageProgress`.

    Returns:
        `(priors, prior_settings)`: dicts by prior name of networks and stage settings.
    """
    from trapmid_tf.attacks import suite

    priors, prior_settings = {}, {}
    for name in suite.priors_needed(settings["attacks"]):
        if name == "gmi":
            priors[name], prior_settings[name] = gmi
            continue
        prior_settings[name] = prior_budget(settings, name, seed, config)
        with progress.stage(f"{name} prior, {stage_target(directory)}"):
            priors[name] = prior_recipe.train_prior(
                name, public, target, prior_settings[name],
                os.path.join(directory, "priors", name), FLAGS.overwrite,
            )
    return priors, prior_settings


def prior_budget(settings, name, seed, target_config=None):
    """The settings of the prior `name`'s stage (with the target's, for target priors)."""
    return dict(
        steps=settings[PRIOR_STEPS[name]],
        batch_size=settings["kedmi_batch_size"] if name == "kedmi" else REFERENCE_BATCH_SIZE,
        base_channels=settings["base_channels"], top_n=settings["top_n"],
        n_critic=settings["kedmi_n_critic"] if name == "kedmi" else REFERENCE_N_CRITIC,
        seed=seed, public_split=settings["public_split"],
        target=target_config and train_target.identity(target_config),
    )


def attack_options(name, config, detector, public_images, settings):
    """The keyword options of one attack against one target, and what identifies them.

    Args:
        name: Attack name.
        config: The target's train_target settings.
        detector: The target's `TrapdoorDetector` (its signatures are the defender's), or None
            for a target without triggers.
        public_images: The attacker's public images, float32 NHWC in [0, 1].
        settings: The pipeline settings.

    Returns:
        `(options, description)`: the `suite.build_attack` keywords and a JSON-able
        description of them for the stage's settings (None for the attacks without options);
        None when the attack does not apply to the target.
    """
    weight = settings["adaptive_weight"]
    if name == "plgmi_adaptive":
        if detector is None:
            return None
        description = dict(
            penalty_weight=weight,
            signatures="the defender's: its triggers over the first "
                       f"{evaluate_recipe.DETECTOR_CLEAN_IMAGES} private training images",
        )
        return dict(signatures=detector.signatures, penalty_weight=weight), description
    if name == "plgmi_adaptive_estimated":
        return dict(penalty_weight=weight), dict(penalty_weight=weight)
    if name == "trigger_recovery":
        alpha = settings["recovery_alpha"] or config["alpha"]
        options = dict(alpha=alpha, iterations=settings["recovery_iterations"])
        return (dict(options, public_images=public_images),
                dict(options, public_split=settings["public_split"]))
    if name == "brep_mi":
        options = dict(max_iterations=settings["brep_iterations"])
        return options, options
    return {}, None


def attack_target(directory, target, config, seed, priors, prior_settings, settings, progress,
                  detector=None, public_images=None):
    """Runs (or reuses) every selected attack against one target.

    Args:
        directory: The target's folder.
        target, config: The target model and its train_target settings.
        seed: The target's training seed, also the attacks' seed.
        priors, prior_settings: As `target_priors` returns them.
        settings: The pipeline settings.
        progress: The run's `StageProgress`.
        detector: The target's `TrapdoorDetector`, or None without triggers.
        public_images: Public images as an array (trigger recovery's), or None if unused.

    Returns:
        `{attack: stored arrays}`, None for an attack that does not apply to the target.
    """
    from trapmid_tf.attacks import suite

    results = {}
    for name in settings["attacks"]:
        attack_settings = dict(
            num_classes=min(int(target.output_shape[-1]), attack_recipe.MAX_ATTACKED_CLASSES),
            per_class=settings["per_class"],
            seed=seed, iterations=settings["iterations"],
            plgmi_iterations=settings["plgmi_iterations"],
            mi_face_iterations=settings["mi_face_iterations"],
            kedmi_batch_size=settings["kedmi_batch_size"], target=train_target.identity(config),
            priors={p: prior_settings[p] for p in suite.PRIORS_OF_ATTACK[name]},
        )
        applicable = attack_options(name, config, detector, public_images, settings)
        with progress.stage(f"attack {name}, {stage_target(directory)}"):
            if applicable is None:
                logging.info("attack %s: not applicable to this target (%s)", name, NO_TRAPDOOR)
                results[name] = None
                continue
            options, description = applicable
            if description is not None:
                attack_settings["options"] = description
            results[name] = attack_recipe.run_attack(
                name, target, priors, attack_settings, os.path.join(directory, "attacks", name),
                FLAGS.overwrite, options,
            )
    return results


def stage_target(directory):
    """"<defense>, seed <s>" of a target folder (targets/<defense>/seed_<s>), for stage names."""
    defense, seed = os.path.normpath(directory).split(os.sep)[-2:]
    return f"{defense}, seed {seed.removeprefix('seed_')}"


def prior_steps(directory, gmi_directory, attacks):
    """`{prior: steps.json contents}` of the priors one target's attacks used."""
    from trapmid_tf.attacks import suite

    return {
        name: suite.load_training_steps(
            gmi_directory if name == "gmi" else os.path.join(directory, "priors", name)
        )
        for name in suite.priors_needed(attacks)
    }


def attack_seed(evaluator, detector, stored, target_results, steps, evaluation_model=None,
                triggers=None):
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

    Returns:
        Dict: accuracies, `trapdoor_formed`, `prior_steps`, `trigger_leakage` (None without
        triggers) and `attacks`: per attack its scores, `{"not_applicable": reason}` for an
        attack that did not apply, and for trigger recovery against triggers the comparison
        of its patterns with them and `trigger_classes`.
    """
    from trapmid_tf.attacks.trigger_recovery import compare_with_triggers
    from trapmid_tf.experiments.summary import NOT_APPLICABLE
    from trapmid_tf.metrics.leakage import trigger_leakage

    attacks = {}
    for name, arrays in stored.items():
        if arrays is None:
            attacks[name] = {NOT_APPLICABLE: NO_TRAPDOOR}
            continue
        attacks[name] = dict(
            evaluate_recipe.score_attack(evaluator, arrays, detector),
            inversion_steps=int(arrays["iterations"]),
        )
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


def judge(private_train, settings):
    """The evaluation model: --evaluation_model as given, else trained (or reused) in evaluator/.

    Returns:
        `(model, description)`: the description holds architecture (or the file), test
        accuracy (None for a given file) and classes.
    """
    if FLAGS.evaluation_model:
        image_shape = private_train.element_spec[0].shape
        model = evaluate_recipe.load_evaluation_classifier(FLAGS.evaluation_model, image_shape)
        architecture, accuracy = os.path.abspath(FLAGS.evaluation_model), None
    else:
        architecture = EVALUATION_ARCHITECTURES.get(FLAGS.dataset, DEFAULT_EVALUATION_ARCHITECTURE)
        model, accuracy = evaluate_recipe.evaluation_model(
            FLAGS.dataset, FLAGS.data_dir,
            dict(architecture=architecture, epochs=settings["evaluation_epochs"], seed=FLAGS.seed),
            os.path.join(FLAGS.out, "evaluator"), FLAGS.overwrite,
        )
    return model, dict(
        architecture=architecture, accuracy=accuracy, classes=int(model.output_shape[-1])
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    settings = pipeline_settings()
    settings["public_split"] = prior_recipe.default_public_split(
        FLAGS.dataset, FLAGS.public_split
    )
    import trapmid_tf as tm
    from trapmid_tf.attacks import suite
    from trapmid_tf import report
    from trapmid_tf.experiments import summarize_seeds
    from trapmid_tf.files import write_json

    import numpy as np

    console.start()
    start = time.perf_counter()
    progress = StageProgress(stage_count(settings))
    write_json(os.path.join(FLAGS.out, "flags.json"), dict(
        settings, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, seed=FLAGS.seed,
        preset=FLAGS.preset,
    ))
    (private_train, _), public = tm.data.load(
        FLAGS.dataset, FLAGS.data_dir, seed=FLAGS.seed, public_split=settings["public_split"]
    )
    targets = train_targets(settings, progress)
    with progress.stage("evaluation model"):
        evaluation_model, evaluation = judge(private_train, settings)
    evaluator = evaluate_recipe.make_evaluator(evaluation_model, private_train, FLAGS.fid_weights)
    gmi, gmi_directory = None, os.path.join(FLAGS.out, "priors", "gmi")
    if "gmi" in suite.priors_needed(settings["attacks"]):
        gmi_settings = prior_budget(settings, "gmi", FLAGS.seed)
        with progress.stage("gmi prior (shared)"):
            gmi = prior_recipe.train_prior(
                "gmi", public, None, gmi_settings, gmi_directory, FLAGS.overwrite,
            ), gmi_settings
    public_images = (
        np.stack(list(public.as_numpy_iterator()))
        if "trigger_recovery" in settings["attacks"] else None
    )
    per_seed, reconstructions = {}, {}
    for (defense, seed), (config, target_results) in targets.items():
        directory = target_dir(defense, seed)
        target = tm.models.load_classifier(os.path.join(directory, "classifier.keras"))
        priors, prior_settings = target_priors(
            directory, target, config, seed, public, gmi, settings, progress
        )
        trigger_path = os.path.join(directory, "triggers.npz")
        detector = (
            evaluate_recipe.make_detector(target, trigger_path, private_train)
            if os.path.isfile(trigger_path) else None
        )
        stored = attack_target(directory, target, config, seed, priors, prior_settings, settings,
                               progress, detector, public_images)
        steps = prior_steps(directory, gmi_directory, settings["attacks"])
        with progress.stage(f"scores, {stage_target(directory)}"):
            per_seed.setdefault(defense, {})[seed] = attack_seed(
                evaluator, detector, stored, target_results, steps, evaluation_model,
                target_triggers(defense, seed),
            )
        if seed == settings["seeds"][0]:
            reconstructions[defense] = {k: v for k, v in stored.items() if v is not None}
    results = dict(
        dataset=FLAGS.dataset, public_split=settings["public_split"], preset=FLAGS.preset,
        settings=settings, evaluation_model=evaluation,
        fid_features=evaluator.fid_features,
        defenses={d: summarize_seeds(seeds) for d, seeds in per_seed.items()},
        seconds=round(time.perf_counter() - start, 1), convergence_gap=measured_gap(settings),
    )
    write_json(os.path.join(FLAGS.out, "results.json"), results)
    private_images, private_labels = evaluate_recipe.private_arrays(private_train)
    with progress.stage("report"):
        grids = report.write(
            FLAGS.out, results, private_images, private_labels, reconstructions,
            stored_triggers(settings),
        )
        log_grids(os.path.join(FLAGS.out, "logs"), grids)
    progress.close("done")
    print(report.summary_table(results))
    print(f"report: {os.path.join(FLAGS.out, 'report.md')} ({results['seconds']:.0f} s)")
    failed = [d for d, scores in results["defenses"].items() if report.trapdoor_not_formed(scores)]
    if failed and settings["require_trapdoor"]:
        raise SystemExit(
            f"pipeline: the trapdoor did not form for {failed} (in at least one seed): no "
            "protection expected from them; see the report. --norequire_trapdoor accepts this."
        )


def target_triggers(defense, seed):
    """The triggers `(classes, H, W, C)` of a target from its triggers.npz, or None."""
    import numpy as np

    path = os.path.join(target_dir(defense, seed), "triggers.npz")
    if not os.path.isfile(path):
        return None
    with np.load(path) as stored:
        return stored["triggers"]


def stored_triggers(settings):
    """`{defense: triggers}` of the first seed's targets that have a triggers.npz."""
    triggers = {d: target_triggers(d, settings["seeds"][0]) for d in settings["defenses"]}
    return {defense: array for defense, array in triggers.items() if array is not None}


def log_grids(log_dir, grids):
    """Writes the report's grids as TensorBoard images, in an owner-only folder (triggers)."""
    import tensorflow as tf
    from trapmid_tf.files import secret_folder

    with tf.summary.create_file_writer(secret_folder(log_dir)).as_default():
        for name, picture in grids.items():
            tf.summary.image(name, picture[None], step=0)


def run():
    """The console command `trapmid-pipeline`."""
    console.run_command(main, sys.modules[__name__], train_target)


if __name__ == "__main__":
    run()
