"""Trains a target classifier with a defense (or none) and writes its artefacts.

Defenses: none, trapmid, negls, trapmid_negls (Trap-MID with NegLS as main and trapdoor loss),
mid (variational information bottleneck) and bido (HSIC dependency regularisation).

Example:
    python recipes/train_target.py --dataset=digits --defense=trapmid --out=runs/trapmid

Writes into --out: flags.json, results.json (test_accuracy, trapdoor_accuracy, epochs,
seconds, best_epoch), classifier.keras (the best epoch, by test accuracy as the reference)
and, for Trap-MID defenses, triggers.npz (secret: owner-only permissions).
"""

import json
import os
import time

from absl import app, flags, logging

DEFENSES = ("none", "trapmid", "negls", "trapmid_negls", "mid", "bido")
MODELS = ("small_cnn", "vgg16_bn", "ir18", "facenet64", "ir152")

# Per-dataset defaults; any flag given on the command line wins. The face defaults are the
# paper's; the digits defaults were chosen by measurement (see README, "Choosing the digits
# defaults").
PRESETS = {
    "digits": dict(
        model="small_cnn", epochs=40, batch_size=64, optimizer="adam", learning_rate=1e-3,
        lr_decay_fraction=0.75, alpha=0.1, beta=0.2, trigger_step_size=0.01, mid_beta=0.01,
        public_split="samples",
    ),
    "mnist": dict(
        model="ir18", epochs=10, batch_size=64, optimizer="sgd", learning_rate=1e-2,
        lr_decay_fraction=0.0, alpha=0.02, beta=0.2, trigger_step_size=0.01, mid_beta=0.01,
        public_split="classes",
    ),
    "celeba": dict(
        model="vgg16_bn", epochs=50, batch_size=64, optimizer="sgd", learning_rate=1e-2,
        lr_decay_fraction=0.0, alpha=0.02, beta=0.2, trigger_step_size=0.01, mid_beta=0.003,
        public_split="classes",
    ),
}
PRESETS["fashion_mnist"] = PRESETS["mnist"]

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "digits", sorted(PRESETS), "Dataset name (trapmid_tf.data.load).")
flags.DEFINE_string("data_dir", None, "Folder with the dataset files (not needed for digits).")
flags.DEFINE_enum("public_split", None, ["classes", "samples"],
                  "Digit datasets: public data = classes 5-9 (reference) or also a disjoint half "
                  "of the private classes' images (default: dataset preset; see README).")
flags.DEFINE_enum("model", None, MODELS, "Classifier architecture (default: dataset preset).")
flags.DEFINE_enum("defense", "trapmid", DEFENSES, "Defense to train with.")
flags.DEFINE_integer("epochs", None, "Training epochs (default: dataset preset).")
flags.DEFINE_integer("batch_size", None, "Global batch size (default: dataset preset).")
flags.DEFINE_enum("optimizer", None, ["sgd", "adam"], "Optimiser (default: dataset preset).")
flags.DEFINE_float("learning_rate", None, "Learning rate (default: dataset preset).")
flags.DEFINE_integer("lr_decay_epoch", None,
                     "Epoch from which the learning rate is 10x lower; 0 for a constant rate "
                     "(default: digits 3/4 of --epochs, others 0).")
flags.DEFINE_float("alpha", None, "Trigger blend weight (default: dataset preset).")
flags.DEFINE_float("beta", None, "Trapdoor loss weight (default: dataset preset).")
flags.DEFINE_float("trigger_step_size", None, "Signed trigger step (default: dataset preset).")
flags.DEFINE_bool("discriminator", True, "Train triggers against a naturalness discriminator.")
flags.DEFINE_bool("augment", True, "Use the reference augmentation in Trap-MID training.")
flags.DEFINE_bool("optimize_triggers", True, "Optimise the triggers (else random, fixed).")
flags.DEFINE_float("negls_smoothing", -0.05, "Full NegLS smoothing (negls defenses).")
flags.DEFINE_float("mid_beta", None, "MID: weight of the KL term (default: digits/MNIST 0.01, "
                   "CelebA 0.003).")
flags.DEFINE_float("bido_lambda_xz", 0.05, "BiDO: weight of HSIC(hidden, input).")
flags.DEFINE_float("bido_lambda_yz", 0.5, "BiDO: weight of HSIC(hidden, label).")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                  "tf.distribute strategy; multi_worker reads TF_CONFIG.")
flags.DEFINE_string("out", None, "Output folder.")
flags.mark_flag_as_required("out")
FLAG_NAMES = (
    "dataset", "data_dir", "public_split", "model", "defense", "epochs", "batch_size", "optimizer",
    "learning_rate", "lr_decay_epoch", "alpha", "beta", "trigger_step_size", "discriminator",
    "augment", "optimize_triggers", "negls_smoothing", "mid_beta", "bido_lambda_xz",
    "bido_lambda_yz", "seed", "strategy", "out",
)


def resolve_config(overrides):
    """Fills unset (None) settings from the dataset preset and checks them.

    Args:
        overrides: Dict of settings; None values take the preset's.

    Returns:
        The complete settings dict.

    Raises:
        ValueError: for contradictory or out-of-range settings.
    """
    config = dict(overrides)
    preset = dict(PRESETS[config["dataset"]])
    decay_fraction = preset.pop("lr_decay_fraction")
    for key, value in preset.items():
        if config.get(key) is None:
            config[key] = value
    if config.get("lr_decay_epoch") is None:
        config["lr_decay_epoch"] = round(decay_fraction * config["epochs"])
    if config["dataset"] != "digits" and not config.get("data_dir"):
        raise ValueError(
            f"--dataset={config['dataset']} reads its files from --data_dir, which is not set "
            "(only digits is embedded; nothing is downloaded)."
        )
    uses_triggers = config["defense"].startswith("trapmid")
    if not uses_triggers:
        for key in ("discriminator", "augment", "optimize_triggers"):
            if overrides.get(key) is False:
                raise ValueError(
                    f"--no{key} only applies to the trapmid defenses; --defense is "
                    f"{config['defense']!r}."
                )
    for key in ("epochs", "batch_size"):
        if config[key] < 1:
            raise ValueError(f"--{key} must be >= 1; received {config[key]}.")
    if not 0 <= config["lr_decay_epoch"] <= config["epochs"]:
        raise ValueError(
            f"--lr_decay_epoch must be in [0, --epochs]; received {config['lr_decay_epoch']}."
        )
    if config["learning_rate"] <= 0:
        raise ValueError(f"--learning_rate must be > 0; received {config['learning_rate']}.")
    return config


def make_strategy(name):
    """Returns the tf.distribute strategy called `name`."""
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def make_optimizer(config, steps_per_epoch):
    """The classifier optimiser; with `lr_decay_epoch`, the rate drops tenfold from that epoch."""
    import keras

    learning_rate = config["learning_rate"]
    if config["lr_decay_epoch"]:
        learning_rate = keras.optimizers.schedules.PiecewiseConstantDecay(
            [config["lr_decay_epoch"] * steps_per_epoch], [learning_rate, learning_rate / 10]
        )
    if config["optimizer"] == "adam":
        return keras.optimizers.Adam(learning_rate)
    return keras.optimizers.SGD(learning_rate, momentum=0.9, weight_decay=1e-4)


def make_loss(config):
    import keras
    from trapmid_tf.defenses.negls import NegLSLoss

    if config["defense"].endswith("negls"):
        return NegLSLoss(config["negls_smoothing"], num_epochs=config["epochs"])
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build_model(config, input_shape, num_classes, steps_per_epoch):
    """Builds and compiles the target for `config["defense"]` in the current strategy scope.

    Returns a plain Keras classifier (none, negls) or a wrapper with `export_classifier`
    (`TrapMIDModel`, `MIDModel`, `BiDOModel`).
    """
    import keras
    import trapmid_tf as tm

    classifier = getattr(tm.models, config["model"])(input_shape, num_classes)
    regularized = {
        "mid": lambda: tm.defenses.MIDModel(
            classifier, beta=config["mid_beta"], seed=config["seed"]
        ),
        "bido": lambda: tm.defenses.BiDOModel(
            classifier, lambda_xz=config["bido_lambda_xz"], lambda_yz=config["bido_lambda_yz"]
        ),
    }
    if config["defense"] in regularized:
        model = regularized[config["defense"]]()
        model.compile(optimizer=make_optimizer(config, steps_per_epoch), loss=make_loss(config))
        return model
    if not config["defense"].startswith("trapmid"):
        classifier.compile(
            optimizer=make_optimizer(config, steps_per_epoch),
            loss=make_loss(config),
            metrics=["accuracy"],
        )
        return classifier
    model = tm.TrapMIDModel(
        classifier,
        num_classes,
        alpha=config["alpha"],
        beta=config["beta"],
        trigger_step_size=config["trigger_step_size"],
        optimize_triggers=config["optimize_triggers"],
        discriminator="auto" if config["discriminator"] else None,
        augment=config["augment"],
        seed=config["seed"],
    )
    model.compile(optimizer=make_optimizer(config, steps_per_epoch), loss=make_loss(config))
    return model


def train(config):
    """Trains one target as `config` says and writes its artefacts into `config["out"]`.

    Args:
        config: Settings as returned by `resolve_config`, plus `data_dir`, `strategy`, `out`.

    Returns:
        The results dict that is also written to `results.json`.
    """
    import keras
    import tensorflow as tf
    import trapmid_tf as tm
    from trapmid_tf.files import write_json

    out = config["out"]
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "flags.json"), config)
    keras.utils.set_random_seed(config["seed"])
    (train_set, test_set), _ = tm.data.load(
        config["dataset"], config["data_dir"], seed=config["seed"],
        public_split=config["public_split"],
    )
    input_shape = tuple(train_set.element_spec[0].shape)
    num_classes = int(train_set.reduce(0, lambda m, item: tf.maximum(m, item[1])).numpy()) + 1
    uses_triggers = config["defense"].startswith("trapmid")

    size = int(train_set.cardinality())
    train_data = train_set.cache().shuffle(size, seed=config["seed"])
    test_data = test_set
    if uses_triggers:
        train_data = tm.data.with_trapdoor_labels(train_data, num_classes, seed=config["seed"])
        test_data = tm.data.with_trapdoor_labels(test_set, num_classes, seed=config["seed"] + 1)
    train_data = train_data.batch(config["batch_size"], drop_remainder=True).prefetch(
        tf.data.AUTOTUNE
    )
    test_data = test_data.batch(256).cache().prefetch(tf.data.AUTOTUNE)

    with make_strategy(config["strategy"]).scope():
        model = build_model(config, input_shape, num_classes, size // config["batch_size"])
    callback = tm.TrapMIDCallback(
        validation_data=test_data,
        log_dir=os.path.join(out, "logs"),
        trigger_path=os.path.join(out, "triggers.npz") if uses_triggers else None,
        best_classifier_path=os.path.join(out, "classifier.keras"),
    )
    start = time.perf_counter()
    model.fit(train_data, epochs=config["epochs"], callbacks=[callback], shuffle=False, verbose=2)
    seconds = time.perf_counter() - start
    best = callback.best_logs
    results = {
        "test_accuracy": best["val_accuracy"],
        "trapdoor_accuracy": best.get("val_trapdoor_accuracy") if uses_triggers else None,
        "best_epoch": callback.best_epoch + 1,
        "epochs": config["epochs"],
        "seconds": round(seconds, 1),
    }
    write_json(os.path.join(out, "results.json"), results)
    return results


def config_from_flags(**changes):
    """Resolves the settings given by the command-line flags, with `changes` applied.

    Raises:
        app.UsageError: for contradictory or out-of-range flags.
    """
    settings = {name: FLAGS[name].value for name in FLAG_NAMES}
    settings.update(changes)
    try:
        return resolve_config(settings)
    except ValueError as error:
        raise app.UsageError(str(error)) from error


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = config_from_flags()
    logging.set_verbosity(logging.INFO)
    results = train(config)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    app.run(main)
