"""The privacy report: trains targets with each defense, attacks them all, evaluates, reports.

Example:
    python recipes/pipeline.py --dataset=digits --preset=quick --out=runs/pipeline

Stages (each reused when --out already holds it finished with the same settings; --overwrite
redoes them): one target per defense (recipes/train_target.py; any of its flags except
--defense and --out applies to every target), the evaluation model, the GMI prior (shared),
per target the priors that depend on it (KED-MI, PLG-MI, LOMMA) and every attack, then the
evaluation. Writes into --out: flags.json, results.json, report.md, grids/*.png (private
samples next to each defense's reconstructions; the triggers), TensorBoard logs under logs/,
and each stage's folder (targets/<defense>/..., evaluator/, priors/gmi/).

Presets: tiny (a smoke test, about a minute), quick (`make demo`), full (reference budgets:
GAN priors 120 epochs, 1,500 / 600 inversion steps; hours on a CPU).
"""

import json
import os
import time

from absl import app, flags, logging

import attack as attack_recipe
import evaluate as evaluate_recipe
import train_prior as prior_recipe
import train_target

FLAGS = flags.FLAGS

PRESETS = {
    "tiny": dict(
        defenses=["none", "trapmid"], target_epochs=2, evaluation_epochs=1, gan_epochs=1,
        kedmi_epochs=1, kedmi_n_critic=1, kedmi_batch_size=32, plgmi_epochs=1,
        surrogate_epochs=1, base_channels=8, top_n=4, per_class=2, iterations=4,
        plgmi_iterations=4, mi_face_iterations=4,
    ),
    "quick": dict(
        defenses=["none", "trapmid", "negls", "trapmid_negls"], target_epochs=None,
        evaluation_epochs=10, gan_epochs=30, kedmi_epochs=8, kedmi_n_critic=1,
        kedmi_batch_size=32, plgmi_epochs=40, surrogate_epochs=3, base_channels=16, top_n=30,
        per_class=5, iterations=100, plgmi_iterations=100, mi_face_iterations=300,
    ),
    "full": dict(
        defenses=["none", "trapmid", "negls", "trapmid_negls", "mid", "bido"], target_epochs=None,
        evaluation_epochs=20, gan_epochs=120, kedmi_epochs=120, kedmi_n_critic=5,
        kedmi_batch_size=64, plgmi_epochs=200, surrogate_epochs=20, base_channels=64,
        top_n=30, per_class=5, iterations=None, plgmi_iterations=None, mi_face_iterations=None,
    ),
}
PRESET_KEYS = tuple(PRESETS["quick"])
EVALUATION_ARCHITECTURE = "small_cnn_wide"
REFERENCE_N_CRITIC = 5
REFERENCE_BATCH_SIZE = 64
PRIOR_EPOCHS = {
    "gmi": "gan_epochs", "kedmi": "kedmi_epochs", "plgmi": "plgmi_epochs",
    "lomma": "surrogate_epochs",
}

flags.DEFINE_enum("preset", "quick", sorted(PRESETS), "Budget preset; the flags below override it.")
flags.DEFINE_list("defenses", None, "Defenses to train and attack (default: preset).")
flags.DEFINE_list("attacks", None, "Attacks to run (default: all six).")
flags.DEFINE_integer("target_epochs", None, "Target epochs (default: preset, else train_target's).")
flags.DEFINE_integer("evaluation_epochs", None, "Evaluation-model epochs.")
flags.DEFINE_integer("gan_epochs", None, "GMI prior epochs.")
flags.DEFINE_integer("kedmi_epochs", None, "KED-MI prior epochs (per target).")
flags.DEFINE_integer("kedmi_n_critic", None,
                     "KED-MI discriminator steps per generator step (reference 5).")
flags.DEFINE_integer("kedmi_batch_size", None,
                     "KED-MI batch size (reference 64; its minibatch discrimination costs "
                     "batch^2).")
flags.DEFINE_integer("plgmi_epochs", None, "PLG-MI prior epochs (per target).")
flags.DEFINE_integer("surrogate_epochs", None, "LOMMA distillation epochs (per target).")
flags.DEFINE_integer("base_channels", None, "Width of the GAN priors (reference 64).")
flags.DEFINE_integer("top_n", None, "PLG-MI public images pseudo-labelled per class.")
flags.DEFINE_integer("per_class", None, "Reconstructions per attacked class.")
flags.DEFINE_integer("iterations", None, "GMI/KED-MI/LOMMA inversion steps.")
flags.DEFINE_integer("plgmi_iterations", None, "PLG-MI inversion steps.")
flags.DEFINE_integer("mi_face_iterations", None, "MI-Face inversion steps.")
flags.DEFINE_string("fid_weights", None, "Local InceptionV3 no-top weights for FID (optional).")
flags.DEFINE_bool("overwrite", False, "Redo every stage even if stored.")


def pipeline_settings():
    """The preset with the flags that were given, checked.

    Raises:
        app.UsageError: For an unknown defense or attack or a bad number.
    """
    from trapmid_tf.attacks import suite

    settings = dict(PRESETS[FLAGS.preset])
    for key in PRESET_KEYS:
        if FLAGS[key].present:
            settings[key] = FLAGS[key].value
    settings["attacks"] = FLAGS.attacks or list(suite.ATTACKS)
    for key, allowed in (("defenses", train_target.DEFENSES), ("attacks", suite.ATTACKS)):
        unknown = [name for name in settings[key] if name not in allowed]
        if unknown or not settings[key]:
            raise app.UsageError(
                f"--{key} must list names among {list(allowed)}; received {settings[key]}."
            )
    for key in PRESET_KEYS:
        value = settings[key]
        if isinstance(value, int) and value < (0 if "iterations" in key else 1):
            raise app.UsageError(f"--{key} must be positive; received {value}.")
    if FLAGS.defense != "trapmid" or FLAGS["defense"].present:
        raise app.UsageError("--defense is train_target's; use --defenses here.")
    if not FLAGS.out:
        raise app.UsageError("--out must be set.")
    return settings


def train_targets(settings):
    """Trains (or reuses) one target per defense; returns `{defense: (config, results)}`."""
    from trapmid_tf.files import build_or_reuse

    targets = {}
    for defense in settings["defenses"]:
        out = os.path.join(FLAGS.out, "targets", defense)
        changes = dict(defense=defense, out=out)
        if settings["target_epochs"] is not None and not FLAGS["epochs"].present:
            changes["epochs"] = settings["target_epochs"]
        config = train_target.config_from_flags(**changes)

        def load(out=out):
            with open(os.path.join(out, "results.json"), encoding="utf-8") as stream:
                return json.load(stream)

        logging.info("target %s", defense)
        results = build_or_reuse(
            out, config, lambda config=config: train_target.train(config), load,
            FLAGS.overwrite, logging.info,
        )
        targets[defense] = (config, results)
    return targets


def target_priors(defense, target, config, public, gmi, settings):
    """Trains (or reuses) the priors the selected attacks need against one target.

    Args:
        defense, target, config: The target's defense, model and train_target settings.
        public: Unbatched public images.
        gmi: `(networks, settings)` of the shared GMI prior, or None.
        settings: The pipeline settings.

    Returns:
        `(priors, prior_settings)`: dicts by prior name of networks and stage settings.
    """
    from trapmid_tf.attacks import suite

    priors, prior_settings = {}, {}
    for name in suite.priors_needed(settings["attacks"]):
        if name == "gmi":
            priors[name], prior_settings[name] = gmi
            continue
        prior_settings[name] = prior_budget(settings, name, config)
        out = os.path.join(FLAGS.out, "targets", defense, "priors", name)
        priors[name] = prior_recipe.train_prior(
            name, public, target, prior_settings[name], out, FLAGS.overwrite
        )
    return priors, prior_settings


def prior_budget(settings, name, target_config=None):
    """The settings of the prior `name`'s stage (with the target's, for target priors)."""
    return dict(
        epochs=settings[PRIOR_EPOCHS[name]],
        batch_size=settings["kedmi_batch_size"] if name == "kedmi" else REFERENCE_BATCH_SIZE,
        base_channels=settings["base_channels"], top_n=settings["top_n"],
        n_critic=settings["kedmi_n_critic"] if name == "kedmi" else REFERENCE_N_CRITIC,
        seed=FLAGS.seed, public_split=settings["public_split"], target=target_config,
    )


def attack_target(defense, target, config, priors, prior_settings, settings):
    """Runs (or reuses) every selected attack against one target; returns stored arrays."""
    from trapmid_tf.attacks import suite

    results = {}
    for name in settings["attacks"]:
        attack_settings = dict(
            num_classes=int(target.output_shape[-1]), per_class=settings["per_class"],
            seed=FLAGS.seed, iterations=settings["iterations"],
            plgmi_iterations=settings["plgmi_iterations"],
            mi_face_iterations=settings["mi_face_iterations"], target=config,
            priors={p: prior_settings[p] for p in suite.PRIORS_OF_ATTACK[name]},
        )
        out = os.path.join(FLAGS.out, "targets", defense, "attacks", name)
        results[name] = attack_recipe.run_attack(
            name, target, priors, attack_settings, out, FLAGS.overwrite
        )
    return results


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
    from trapmid_tf.files import write_json

    logging.set_verbosity(logging.INFO)
    start = time.perf_counter()
    write_json(os.path.join(FLAGS.out, "flags.json"), dict(
        settings, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, seed=FLAGS.seed,
        preset=FLAGS.preset,
    ))
    (private_train, _), public = tm.data.load(
        FLAGS.dataset, FLAGS.data_dir, seed=FLAGS.seed, public_split=settings["public_split"]
    )
    targets = train_targets(settings)
    evaluation_settings = dict(
        architecture=EVALUATION_ARCHITECTURE, epochs=settings["evaluation_epochs"],
        seed=FLAGS.seed,
    )
    evaluation_model, evaluation_accuracy = evaluate_recipe.evaluation_model(
        FLAGS.dataset, FLAGS.data_dir, evaluation_settings,
        os.path.join(FLAGS.out, "evaluator"), FLAGS.overwrite,
    )
    evaluator = evaluate_recipe.make_evaluator(evaluation_model, private_train, FLAGS.fid_weights)
    gmi = None
    if "gmi" in suite.priors_needed(settings["attacks"]):
        gmi_settings = prior_budget(settings, "gmi")
        gmi = prior_recipe.train_prior(
            "gmi", public, None, gmi_settings, os.path.join(FLAGS.out, "priors", "gmi"),
            FLAGS.overwrite,
        ), gmi_settings
    defenses = {}
    reconstructions = {}
    for defense, (config, target_results) in targets.items():
        target_dir = os.path.join(FLAGS.out, "targets", defense)
        target = tm.models.load_classifier(os.path.join(target_dir, "classifier.keras"))
        priors, prior_settings = target_priors(defense, target, config, public, gmi, settings)
        stored = attack_target(defense, target, config, priors, prior_settings, settings)
        trigger_path = os.path.join(target_dir, "triggers.npz")
        detector = (
            evaluate_recipe.make_detector(target, trigger_path, private_train)
            if os.path.isfile(trigger_path) else None
        )
        defenses[defense] = dict(
            accuracy=target_results["test_accuracy"],
            trapdoor_accuracy=target_results["trapdoor_accuracy"],
            **{name: evaluate_recipe.score_attack(evaluator, arrays, detector)
               for name, arrays in stored.items()},
        )
        reconstructions[defense] = stored
    results = dict(
        dataset=FLAGS.dataset, public_split=settings["public_split"], preset=FLAGS.preset,
        settings=settings, evaluation_model=dict(
            architecture=EVALUATION_ARCHITECTURE, accuracy=evaluation_accuracy,
            classes=int(evaluation_model.output_shape[-1]),
        ),
        fid_features=evaluator.fid_features, defenses=defenses,
        seconds=round(time.perf_counter() - start, 1),
    )
    write_json(os.path.join(FLAGS.out, "results.json"), results)
    private_images, private_labels = evaluate_recipe.private_arrays(private_train)
    grids = report.write(
        FLAGS.out, results, private_images, private_labels, reconstructions,
        stored_triggers(targets),
    )
    log_grids(os.path.join(FLAGS.out, "logs"), grids)
    print(report.summary_table(results))
    print(f"report: {os.path.join(FLAGS.out, 'report.md')} ({results['seconds']:.0f} s)")


def stored_triggers(targets):
    """`{defense: triggers}` of the targets that have a triggers.npz."""
    import numpy as np

    triggers = {}
    for defense in targets:
        path = os.path.join(FLAGS.out, "targets", defense, "triggers.npz")
        if os.path.isfile(path):
            with np.load(path) as stored:
                triggers[defense] = stored["triggers"]
    return triggers


def log_grids(log_dir, grids):
    """Writes the report's grids as TensorBoard images, in an owner-only folder (triggers)."""
    import tensorflow as tf
    from trapmid_tf.files import secret_folder

    with tf.summary.create_file_writer(secret_folder(log_dir)).as_default():
        for name, picture in grids.items():
            tf.summary.image(name, picture[None], step=0)


if __name__ == "__main__":
    app.run(main)
