"""Trains a target classifier with a defense (or none) and writes its artefacts.

Defenses: none, trapmid, negls, trapmid_negls (Trap-MID with NegLS as main and trapdoor loss),
mid (variational information bottleneck) and bido (HSIC dependency regularisation).

Example:
    trapmid-train --dataset=digits --defense=trapmid --out=runs/trapmid

Writes into --out: flags.json, results.json (test_accuracy, trapdoor_accuracy, epochs,
seconds of training, best_epoch, skipped_images and skipped_files: the images that
--skip_unreadable left out, trapdoor_formed and trapdoor_warning_threshold), classifier.keras
(the best epoch, by test accuracy as the reference) and, for Trap-MID defenses, triggers.npz
(secret: owner-only permissions).

A trapdoor that did not form (the kept epoch's test trapdoor accuracy below
--trapdoor_warning_threshold) gives no protection: training warns, results.json records
trapdoor_formed false, the last line printed says so, and with --require_trapdoor the recipe
exits non-zero once every artefact is written (see docs/trapdoor_formation.md).

Fault tolerance: with --backup_dir, the whole training state is backed up after every epoch
(trapmid_tf.callbacks.TrapMIDBackup); a run killed at any moment and started again with the
same command continues from its last completed epoch and ends as an uninterrupted run. Each
epoch's data order is a function of (--seed, epoch), so it does not depend on restarts.
Training stops at the first non-finite loss, naming the epoch, batch and loss, before it
overwrites any file.

Several machines: --strategy=multi_worker with TF_CONFIG set on every worker; only the chief
writes --out and --backup_dir (see docs/guide.md, "Training on several machines").
"""

import functools
import json
import os
import shutil
import sys
import tempfile

from absl import app, flags, logging

from trapmid_tf.cli import console
from trapmid_tf.experiments import defenses as defense_registry

DEFENSES = tuple(defense_registry.DEFENSES)
MODELS = ("small_cnn", "vgg16_bn", "ir18", "facenet64", "ir152", "facenet_eval")

# Defaults; any flag given on the command line wins. A preset is the dataset's entry, updated
# by MODEL_PRESETS for its model and then by DEFENSE_PRESETS for its defense (`preset`). The
# face and MNIST numbers are the reference's (ntuaislab/Trap-MID config/*/*.json, named on each
# entry; tests/recipes/test_train_target.py checks them); the digits defaults were chosen by
# measurement (docs/measurements.md, "Choosing the digits defaults"). `lr_decay_epoch`: the
# epochs at which the learning rate drops tenfold (PyTorch's MultiStepLR, gamma 0.1); digits
# give a fraction of --epochs instead.
PRESETS = {
    "digits": dict(
        model="small_cnn", epochs=40, batch_size=64, optimizer="adam", learning_rate=1e-3,
        lr_decay_fraction=0.75, alpha=0.1, beta=0.2, trigger_step_size=0.01, mid_beta=0.01,
        public_split="samples", min_trapdoor_accuracy=0.9, flip=False, image_size=None,
    ),
    # config/mnist/classify.json and classify_trap.json, entry "IR18".
    "mnist": dict(
        model="ir18", epochs=10, batch_size=64, optimizer="sgd", learning_rate=1e-2,
        lr_decay_epoch=(), alpha=0.02, beta=0.2, trigger_step_size=0.01, mid_beta=0.01,
        public_split="classes", min_trapdoor_accuracy=0.0, flip=False, image_size=None,
    ),
    # config/celeba/classify_trap.json, entry "VGG16" (FaceNet64 the same); dataset.py flips
    # the training images.
    "celeba": dict(
        model="vgg16_bn", epochs=50, batch_size=64, optimizer="sgd", learning_rate=1e-2,
        lr_decay_epoch=(), alpha=0.02, beta=0.2, trigger_step_size=0.01, mid_beta=0.003,
        public_split="classes", min_trapdoor_accuracy=0.0, flip=True, image_size=None,
    ),
}
PRESETS["fashion_mnist"] = PRESETS["mnist"]
MODEL_PRESETS = {
    # config/celeba/classify_trap.json, entry "IR152".
    ("celeba", "ir152"): dict(epochs=40),
    # The face evaluation classifier (run with --defense=none): plgmi/baselines/config/
    # classify.json, entry "FaceNet" (its adjust_lr/adjust_epochs are unused: engine.train_reg
    # has no scheduler), on 112x112 CelebA crops, flipped (plgmi/baselines/dataloader.py).
    ("celeba", "facenet_eval"): dict(epochs=30, image_size=112),
}
# config/celeba/classify_trap_negls.json, every entry (VGG16, FaceNet64, IR152): Adam,
# weight decay 0, MultiStepLR [75, 90].
CELEBA_NEGLS = dict(
    epochs=100, batch_size=128, optimizer="adam", learning_rate=1e-3, lr_decay_epoch=(75, 90)
)
# config/mnist/classify_negls.json, entry "IR18": the SGD entry with MultiStepLR [7, 9]. The
# reference has no MNIST Trap-MID + NegLS configuration; it gets the same.
MNIST_NEGLS = dict(lr_decay_epoch=(7, 9))
NEGLS_DEFENSES = tuple(d.name for d in defense_registry.DEFENSES.values() if d.negls)
DEFENSE_PRESETS = {
    **{("celeba", defense): CELEBA_NEGLS for defense in NEGLS_DEFENSES},
    **{(name, defense): MNIST_NEGLS for name in ("mnist", "fashion_mnist")
       for defense in NEGLS_DEFENSES},
}
# The reference's optimiser constants (utils.init_optimizer and every config entry): SGD with
# momentum 0.9 and weight decay 1e-4 as PyTorch applies it (trapmid_tf.TorchSGD); Adam with
# PyTorch's epsilon (Keras's default is 1e-7) and no weight decay.
SGD_MOMENTUM = 0.9
SGD_WEIGHT_DECAY = 1e-4
ADAM_EPSILON = 1e-8

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "digits", sorted(PRESETS), "Dataset name (trapmid_tf.data.load).")
flags.DEFINE_string("data_dir", None, "Folder with the dataset files (not needed for digits).")
flags.DEFINE_enum("public_split", None, ["classes", "samples"],
                  "Digit datasets: public data = classes 5-9 (reference) or also a disjoint half "
                  "of the private classes' images (default: dataset preset; see README).")
flags.DEFINE_bool("skip_unreadable", False, "CelebA: leave out missing or undecodable images "
                  "(counted in results.json) instead of stopping at the first, named.")
flags.DEFINE_enum("model", None, MODELS, "Classifier architecture (default: dataset preset); "
                  "facenet_eval with --defense=none trains the face evaluation classifier.")
flags.DEFINE_integer("image_size", None, "Side of the training images (default: the dataset's, "
                     "112 for facenet_eval on CelebA).")
flags.DEFINE_bool("flip", None, "Flip training images left-right at random, a new draw each "
                  "epoch (default: preset; CelebA yes, as the reference).")
flags.DEFINE_integer("width", None, "small_cnn: channels of the first conv block (default 32); "
                     "smaller trains faster, e.g. for smoke tests.")
flags.DEFINE_enum("defense", "trapmid", DEFENSES, "Defense to train with.")
flags.DEFINE_integer("epochs", None, "Training epochs (default: preset).")
flags.DEFINE_integer("batch_size", None, "Global batch size (default: preset).")
flags.DEFINE_enum("optimizer", None, ["sgd", "adam"], "Optimiser (default: preset): sgd is "
                  "PyTorch's SGD (trapmid_tf.TorchSGD, momentum 0.9, weight decay 1e-4 added to "
                  "every gradient), adam is Adam (epsilon 1e-8, no weight decay), as the "
                  "reference.")
flags.DEFINE_float("learning_rate", None, "Learning rate (default: preset).")
flags.DEFINE_multi_integer("lr_decay_epoch", None,
                           "Epoch from which the learning rate is 10x lower; repeat for several "
                           "drops (PyTorch's MultiStepLR), 0 for a constant rate (default: "
                           "preset; digits 3/4 of --epochs, face NegLS 75 and 90, MNIST NegLS 7 "
                           "and 9, others none).")
flags.DEFINE_float("alpha", None, "Trigger blend weight (default: dataset preset).")
flags.DEFINE_float("beta", None, "Trapdoor loss weight (default: dataset preset).")
flags.DEFINE_float("trigger_step_size", None, "Signed trigger step (default: dataset preset).")
flags.DEFINE_bool("discriminator", True, "Train triggers against a naturalness discriminator.")
flags.DEFINE_bool("augment", True, "Use the reference augmentation in Trap-MID training.")
flags.DEFINE_float("min_trapdoor_accuracy", None, "Trap-MID: the best epoch (highest test "
                   "accuracy) must have at least this test trapdoor accuracy once an epoch has "
                   "it (default: digits 0.9, others 0, the reference's rule).")
flags.DEFINE_float("trapdoor_warning_threshold", None, "Trap-MID: test trapdoor accuracy of the "
                   "kept epoch below which the trapdoor counts as not formed (default: "
                   "TrapMIDCallback's, 0.9).")
flags.DEFINE_bool("require_trapdoor", False, "Exit non-zero (after writing every artefact) when "
                  "a Trap-MID trapdoor did not form; no effect on defenses without triggers.")
flags.DEFINE_bool("optimize_triggers", True, "Optimise the triggers (else random, fixed).")
flags.DEFINE_bool("fast_trapmid", False, "Trap-MID as trapmid_tf.defenses.FastTrapMIDModel "
                  "(trigger gradient shared with the classifier step, discriminator every 4th "
                  "step): a faster algorithm of its own; one replica only.")
flags.DEFINE_float("negls_smoothing", -0.05, "Full NegLS smoothing (negls defenses).")
flags.DEFINE_float("mid_beta", None, "MID: weight of the KL term (default: digits/MNIST 0.01, "
                   "CelebA 0.003).")
flags.DEFINE_float("bido_lambda_xz", 0.05, "BiDO: weight of HSIC(hidden, input).")
flags.DEFINE_float("bido_lambda_yz", 0.5, "BiDO: weight of HSIC(hidden, label).")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("split_seed", None,
                     "Seed of the private/public split (default: --seed); training seeds "
                     "that share a split attack the same private data.")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                  "tf.distribute strategy; multi_worker reads the cluster from TF_CONFIG.")
flags.DEFINE_string("out", None, "Output folder.")
flags.DEFINE_string("backup_dir", None,
                    "Folder for an end-of-epoch backup of the whole training state (owner-only "
                    "files); a killed run restarted with the same command resumes from it. "
                    "Multi-worker: a folder every worker reads.")
flags.mark_flag_as_required("out")
FLAG_NAMES = (
    "dataset", "data_dir", "public_split", "skip_unreadable", "model", "image_size", "flip",
    "width", "defense", "epochs", "batch_size", "optimizer", "learning_rate", "lr_decay_epoch",
    "alpha", "beta",
    "trigger_step_size", "min_trapdoor_accuracy", "trapdoor_warning_threshold",
    "require_trapdoor", "discriminator", "augment",
    "optimize_triggers", "fast_trapmid", "negls_smoothing", "mid_beta", "bido_lambda_xz",
    "bido_lambda_yz", "seed", "split_seed", "strategy", "out", "backup_dir",
)
# Settings that may change between a run and its resumption from a backup.
# Where a target is written, not what it is: left out of its stage identity (`identity`), so that
# a run folder can be moved and reused.
LOCATION_KEYS = ("out", "backup_dir")
RESUMABLE_CHANGES = ("backup_dir", "strategy", "trapdoor_warning_threshold", "require_trapdoor")


class TrapdoorNotFormedError(RuntimeError):
    """Raised by `train` under `require_trapdoor` when the trapdoor did not form.

    Every artefact is written before it is raised.

    Attributes:
        results: The results dict written to `results.json`.
    """

    def __init__(self, message, results):
        super().__init__(message)
        self.results = results


def resolve_config(overrides):
    """Fills unset (None) settings from the preset (`preset`) and checks them.

    Args:
        overrides: Dict of settings; None values take the preset's. `width`,
            `backup_dir`, `image_size`, `flip` and `lr_decay_epoch` may be left out (None).
            `lr_decay_epoch` is an int or a list of ints (0 or an empty list: no drop).

    Returns:
        The complete settings dict.

    Raises:
        ValueError: for contradictory or out-of-range settings.
        FileNotFoundError: if `data_dir` is not an existing folder.
    """
    config = dict(overrides)
    for key in ("width", "backup_dir", "trapdoor_warning_threshold", "split_seed", "image_size",
                "flip", "lr_decay_epoch"):
        config.setdefault(key, None)
    for key in ("skip_unreadable", "fast_trapmid", "require_trapdoor"):
        config.setdefault(key, False)
    defaults = preset(config["dataset"], config["defense"], config.get("model"))
    decay_fraction = defaults.pop("lr_decay_fraction", None)
    for key, value in defaults.items():
        if config.get(key) is None:
            config[key] = value
    if config["lr_decay_epoch"] is None and decay_fraction is not None:
        config["lr_decay_epoch"] = round(decay_fraction * config["epochs"])
    config["lr_decay_epoch"] = _decay_epochs(config["lr_decay_epoch"], config["epochs"])
    _check_data_dir(config)
    if config["skip_unreadable"] and config["dataset"] != "celeba":
        raise ValueError(
            "--skip_unreadable applies to image files (--dataset=celeba); --dataset is "
            f"{config['dataset']!r}."
        )
    if not defense_registry.get_defense(config["defense"]).trapdoor:
        for key in ("discriminator", "augment", "optimize_triggers"):
            if overrides.get(key) is False:
                raise ValueError(
                    f"--no{key} only applies to the trapmid defenses; --defense is "
                    f"{config['defense']!r}."
                )
        if overrides.get("min_trapdoor_accuracy") is not None:
            raise ValueError(
                f"--min_trapdoor_accuracy only applies to the trapmid defenses; --defense is "
                f"{config['defense']!r}."
            )
        if config["fast_trapmid"]:
            raise ValueError(
                f"--fast_trapmid only applies to the trapmid defenses; --defense is "
                f"{config['defense']!r}."
            )
    if config["fast_trapmid"] and config["strategy"] != "default":
        raise ValueError(
            "--fast_trapmid runs on one replica (its discriminator skips steps); --strategy is "
            f"{config['strategy']!r}."
        )
    for key in ("epochs", "batch_size", "width"):
        if config[key] is not None and config[key] < 1:
            raise ValueError(f"--{key} must be >= 1; received {config[key]}.")
    for key in ("min_trapdoor_accuracy", "trapdoor_warning_threshold"):
        if config[key] is not None and not 0.0 <= config[key] <= 1.0:
            raise ValueError(f"--{key} must be in [0, 1]; received {config[key]}.")
    if config["split_seed"] is None:
        config["split_seed"] = config["seed"]
    for key in ("seed", "split_seed"):
        if config[key] < 0:
            raise ValueError(f"--{key} must be >= 0; received {config[key]}.")
    if config["width"] is not None and config["model"] != "small_cnn":
        raise ValueError(
            f"--width only applies to --model=small_cnn; --model is {config['model']!r}."
        )
    _check_backup_dir(config)
    if config["strategy"] == "multi_worker":
        workers = _cluster_size(os.environ.get("TF_CONFIG"))
        if config["batch_size"] % workers:
            raise ValueError(
                f"--batch_size must be a multiple of the {workers} workers in TF_CONFIG; "
                f"received {config['batch_size']}."
            )
    if config["image_size"] is not None and config["image_size"] < 1:
        raise ValueError(f"--image_size must be >= 1; received {config['image_size']}.")
    if config["learning_rate"] <= 0:
        raise ValueError(f"--learning_rate must be > 0; received {config['learning_rate']}.")
    return config


def preset(dataset, defense, model=None):
    """The default settings of a run: dataset preset, then model and defense overrides.

    Args:
        dataset: Dataset name (a key of `PRESETS`).
        defense: Defense name (one of `DEFENSES`).
        model: Architecture, or None for the dataset preset's.

    Returns:
        A new dict of settings (digits give `lr_decay_fraction` instead of `lr_decay_epoch`).
    """
    settings = dict(PRESETS[dataset])
    model = model or settings["model"]
    settings.update(MODEL_PRESETS.get((dataset, model), {}))
    settings.update(DEFENSE_PRESETS.get((dataset, defense), {}))
    return settings


def _decay_epochs(value, epochs):
    """The sorted learning-rate drop epochs of an int or list setting, zeros left out."""
    values = [value] if isinstance(value, int) else list(value)
    for epoch in values:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= epochs:
            raise ValueError(
                f"--lr_decay_epoch must be ints in [0, --epochs={epochs}]; received {value!r}."
            )
    return sorted({epoch for epoch in values if epoch})


def _check_data_dir(config):
    data_dir = config.get("data_dir")
    if config["dataset"] == "digits":
        if data_dir:
            raise ValueError(
                f"--dataset=digits is embedded and reads no --data_dir; received {data_dir!r}."
            )
    elif not data_dir:
        raise ValueError(
            f"--dataset={config['dataset']} reads its files from --data_dir, which is not set "
            "(only digits is embedded; nothing is downloaded)."
        )
    elif not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data_dir {data_dir!r} is not an existing folder.")


def _check_backup_dir(config):
    backup_dir = config["backup_dir"]
    if backup_dir and config.get("out") and (
        os.path.realpath(backup_dir) == os.path.realpath(config["out"])
    ):
        raise ValueError(
            f"--backup_dir must differ from --out (e.g. a subfolder); both are {backup_dir!r}."
        )


def _cluster_size(tf_config):
    """The number of chief and worker tasks in a TF_CONFIG string.

    Raises:
        ValueError: if `tf_config` is unset or describes no cluster.
    """
    if not tf_config:
        raise ValueError(
            "--strategy=multi_worker reads the cluster from the TF_CONFIG environment variable, "
            "which is not set (see README, \"Training on several machines\")."
        )
    try:
        cluster = json.loads(tf_config)["cluster"]
        size = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            "TF_CONFIG must be JSON with a \"cluster\" of \"chief\"/\"worker\" addresses and a "
            f"\"task\"; received {tf_config!r} ({error!r})."
        ) from error
    if size < 1:
        raise ValueError(f"TF_CONFIG lists no chief or worker task; received {tf_config!r}.")
    return size


@functools.cache
def make_strategy(name):
    """Returns the tf.distribute strategy called `name`, one per process.

    Call it before any other TensorFlow work: a multi-worker strategy configures the
    collective ops when TensorFlow starts.
    """
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return _multi_worker_strategy()
    return tf.distribute.get_strategy()


def _multi_worker_strategy():
    import tensorflow as tf

    class KerasMultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        """`MultiWorkerMirroredStrategy` whose `reduce` takes what Keras 3.15's `fit` gives it.

        With this strategy `fit` reduces a whole `(x, y, ...)` batch to build the model, and
        each replica's scalar logs with `axis=0`; the strategy's own `reduce` takes neither
        (it raises "Attempt to convert a value (PerReplica...)" and "Invalid reduction
        dimension 0 for input with 0 dimensions"). This one reduces structures item by item
        and scalars across replicas only, as `MirroredStrategy`'s path in Keras does.
        """

        def reduce(self, reduce_op, value, axis):
            reduce_one = super().reduce

            def reduce_item(item):
                rank = self.experimental_local_results(item)[0].shape.rank
                return reduce_one(reduce_op, item, None if rank == 0 else axis)

            return tf.nest.map_structure(reduce_item, value)

    return KerasMultiWorkerStrategy()


def make_optimizer(config, steps_per_epoch):
    """The classifier optimiser, PyTorch's SGD or Adam as the reference builds them.

    The learning rate drops tenfold at the start of each epoch in `lr_decay_epoch`, as
    PyTorch's MultiStepLR stepped once per epoch. Trap-MID's discriminator gets a copy.

    Args:
        config: Settings (`optimizer`, `learning_rate`, `lr_decay_epoch`).
        steps_per_epoch: Optimiser steps per epoch.

    Returns:
        A `trapmid_tf.TorchSGD` or `keras.optimizers.Adam`.
    """
    import keras
    import trapmid_tf as tm

    learning_rate = config["learning_rate"]
    drops = config["lr_decay_epoch"]
    if drops:
        # The schedule keeps value i while step <= boundary i: the last step of epoch e - 1.
        learning_rate = keras.optimizers.schedules.PiecewiseConstantDecay(
            [epoch * steps_per_epoch - 1 for epoch in drops],
            [learning_rate / 10**i for i in range(len(drops) + 1)],
        )
    if config["optimizer"] == "adam":
        return keras.optimizers.Adam(learning_rate, epsilon=ADAM_EPSILON)
    return tm.TorchSGD(learning_rate, momentum=SGD_MOMENTUM, weight_decay=SGD_WEIGHT_DECAY)


def make_loss(config):
    import keras
    from trapmid_tf.defenses.negls import NegLSLoss

    if defense_registry.get_defense(config["defense"]).negls:
        return NegLSLoss(config["negls_smoothing"], num_epochs=config["epochs"])
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build_model(config, input_shape, num_classes, steps_per_epoch):
    """Builds and compiles the target for `config["defense"]` in the current strategy scope.

    Returns a plain Keras classifier (none, negls) or a wrapper with `export_classifier`
    (`TrapMIDModel`, `MIDModel`, `BiDOModel`).
    """
    import trapmid_tf as tm

    options = {} if config.get("width") is None else {"width": config["width"]}
    classifier = getattr(tm.models, config["model"])(input_shape, num_classes, **options)
    regularized = {
        "mid": lambda: tm.defenses.MIDModel(
            classifier, beta=config["mid_beta"], seed=config["seed"]
        ),
        "bido": lambda: tm.defenses.BiDOModel(
            classifier, lambda_xz=config["bido_lambda_xz"], lambda_yz=config["bido_lambda_yz"]
        ),
    }
    defense = defense_registry.get_defense(config["defense"])
    if defense.regularizer:
        model = regularized[defense.regularizer]()
        model.compile(optimizer=make_optimizer(config, steps_per_epoch), loss=make_loss(config))
        return model
    if not defense.trapdoor:
        classifier.compile(
            optimizer=make_optimizer(config, steps_per_epoch),
            loss=make_loss(config),
            metrics=["accuracy"],
        )
        return classifier
    model_class = tm.defenses.FastTrapMIDModel if config["fast_trapmid"] else tm.TrapMIDModel
    model = model_class(
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


def epoch_seeds(seed, epoch):
    """Three independent int seeds (data order, trapdoor labels, flips) of `(seed, epoch)`."""
    import numpy as np

    return [int(value) for value in np.random.SeedSequence([seed, epoch]).generate_state(3)]


def train_batches(train_set, num_classes, config, first_epoch):
    """The training batches of epochs `first_epoch` to `epochs - 1`, in one dataset.

    Each epoch is shuffled (then, with `flip`, flipped at random, and, for Trap-MID, paired
    with balanced trapdoor labels) with seeds made of (seed, epoch) only, so epoch k holds
    the same batches whether or not this
    process ran the epochs before it; nothing reshuffles when iterated again. Multi-worker
    strategies shard the batches by element (each worker takes its part of every batch).

    Args:
        train_set: Unbatched `(image, label)` dataset.
        num_classes: Number of classes.
        config: Settings (`seed`, `epochs`, `batch_size`, `defense`, `flip`).
        first_epoch: The first epoch to produce, < `epochs`.

    Returns:
        A `tf.data.Dataset` of `(epochs - first_epoch) * (size // batch_size)` batches.
    """
    import tensorflow as tf
    import trapmid_tf as tm

    cached = train_set.cache()
    size = int(train_set.cardinality())

    def epoch_batches(epoch):
        order_seed, label_seed, flip_seed = epoch_seeds(config["seed"], epoch)
        data = cached.shuffle(size, seed=order_seed, reshuffle_each_iteration=False)
        if config.get("flip"):
            data = tm.data.random_horizontal_flip(data, flip_seed)
        if defense_registry.get_defense(config["defense"]).trapdoor:
            data = tm.data.with_trapdoor_labels(
                data, num_classes, seed=label_seed, reshuffle_each_iteration=False
            )
        return data.batch(config["batch_size"], drop_remainder=True)

    batches = functools.reduce(
        tf.data.Dataset.concatenate, map(epoch_batches, range(first_epoch, config["epochs"]))
    )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return batches.with_options(options).prefetch(tf.data.AUTOTUNE)


def identity(config):
    """What a target's artefacts depend on: `config` without where they are written."""
    return {key: value for key, value in config.items() if key not in LOCATION_KEYS}


def train(config):
    """Trains one target as `config` says and writes its artefacts into `config["out"]`.

    With `config["backup_dir"]` it resumes from the backup there, if any. With a
    multi-worker strategy, only the chief writes; the other workers write to temporary
    folders that they remove.

    Args:
        config: Settings as returned by `resolve_config`.

    Returns:
        The results dict that is also written to `results.json`.

    Raises:
        trapmid_tf.callbacks.NonFiniteLossError: at the first non-finite training loss.
        ValueError: if `backup_dir` holds a backup of other settings.
        TrapdoorNotFormedError: with `require_trapdoor`, when the trapdoor did not form (after
            every artefact is written).
    """
    strategy = make_strategy(config["strategy"])  # before any other TensorFlow work
    import keras
    import tensorflow as tf
    import trapmid_tf as tm

    keras.utils.set_random_seed(config["seed"])
    splits = tm.data.load(
        config["dataset"], config["data_dir"], seed=config["split_seed"],
        image_size=config.get("image_size"),
        public_split=config["public_split"], skip_unreadable=config["skip_unreadable"],
    )
    (train_set, test_set), _ = splits
    num_classes = int(train_set.reduce(0, lambda m, item: tf.maximum(m, item[1])).numpy()) + 1
    test_data = test_set
    if defense_registry.get_defense(config["defense"]).trapdoor:
        test_data = tm.data.with_trapdoor_labels(test_set, num_classes, seed=config["seed"] + 1)
    test_data = test_data.batch(256).cache().prefetch(tf.data.AUTOTUNE)

    chief = strategy.extended.should_checkpoint
    out = config["out"] if chief else tempfile.mkdtemp(prefix="train_target_worker_")
    try:
        return _fit_and_write(
            config, strategy, train_set, num_classes, test_data, out, splits.skipped_files
        )
    finally:
        if not chief:
            shutil.rmtree(out, ignore_errors=True)


def _fit_and_write(config, strategy, train_set, num_classes, test_data, out, skipped_files):
    """Builds the model, trains it (from the backup, if any) and writes into `out`."""
    import trapmid_tf as tm
    from trapmid_tf.callbacks import StopOnNonFiniteLoss, TrapMIDBackup
    from trapmid_tf.files import write_json

    uses_triggers = defense_registry.get_defense(config["defense"]).trapdoor
    tracker = tm.TrapMIDCallback(
        validation_data=test_data,
        log_dir=os.path.join(out, "logs"),
        trigger_path=os.path.join(out, "triggers.npz") if uses_triggers else None,
        best_classifier_path=os.path.join(out, "classifier.keras"),
        min_trapdoor_accuracy=config["min_trapdoor_accuracy"],
        **({} if config["trapdoor_warning_threshold"] is None
           else {"trapdoor_warning_threshold": config["trapdoor_warning_threshold"]}),
    )
    callbacks = [StopOnNonFiniteLoss(), tracker]
    first_epoch = 0
    if config["backup_dir"]:
        settings = {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}
        backup = TrapMIDBackup(config["backup_dir"], settings=settings, stateful=[tracker])
        first_epoch = backup.completed_epochs  # checks the backup's settings first
        callbacks.append(backup)  # last: it backs up what the others did this epoch
    input_shape = tuple(train_set.element_spec[0].shape)
    steps_per_epoch = int(train_set.cardinality()) // config["batch_size"]
    with strategy.scope():
        model = build_model(config, input_shape, num_classes, steps_per_epoch)
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "flags.json"), config)
    if first_epoch < config["epochs"]:
        model.fit(
            train_batches(train_set, num_classes, config, first_epoch),
            epochs=config["epochs"], initial_epoch=first_epoch,
            steps_per_epoch=steps_per_epoch, callbacks=callbacks, shuffle=False,
            verbose=console.fit_verbosity(),
        )
    else:  # the backed-up run had finished: restore its bookkeeping only
        backup.set_model(model)
        backup.restore()
    best = tracker.best_logs
    results = {
        "test_accuracy": best["val_accuracy"],
        "trapdoor_accuracy": best.get("val_trapdoor_accuracy") if uses_triggers else None,
        "best_epoch": tracker.best_epoch + 1,
        "epochs": config["epochs"],
        "seconds": round(tracker.seconds, 1),
        "skipped_images": len(skipped_files),
        "skipped_files": list(skipped_files),
        "trapdoor_formed": tracker.trapdoor_formed if uses_triggers else None,
        "trapdoor_warning_threshold": tracker.trapdoor_warning_threshold if uses_triggers else None,
    }
    write_json(os.path.join(out, "results.json"), results)
    if config["require_trapdoor"] and results["trapdoor_formed"] is False:
        raise TrapdoorNotFormedError(
            f"--require_trapdoor: {trapdoor_line(results)} Artefacts are written to {out!r}.",
            results,
        )
    return results


def trapdoor_line(results):
    """One line saying whether a run's trapdoor formed, from its results dict.

    Args:
        results: The dict written to `results.json`.

    Returns:
        The line, e.g. "Trapdoor formed: test trapdoor accuracy 0.994 >= 0.9."
    """
    if results["trapdoor_formed"] is None:
        return "Trapdoor: none (this defense has no triggers)."
    accuracy, threshold = results["trapdoor_accuracy"], results["trapdoor_warning_threshold"]
    if results["trapdoor_formed"]:
        return f"Trapdoor formed: test trapdoor accuracy {accuracy:.3f} >= {threshold}."
    return (
        f"Trapdoor NOT formed: test trapdoor accuracy {accuracy:.3f} < {threshold}; no "
        "protection expected (see docs/trapdoor_formation.md)."
    )


def config_from_flags(**changes):
    """Resolves the settings given by the command-line flags, with `changes` applied.

    Raises:
        app.UsageError: for contradictory or out-of-range flags, or a missing --data_dir.
    """
    settings = {name: FLAGS[name].value for name in FLAG_NAMES}
    settings.update(changes)
    try:
        return resolve_config(settings)
    except (ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from error


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = config_from_flags()
    console.start()
    from trapmid_tf.callbacks import NonFiniteLossError

    try:
        results = train(config)
    except (FileNotFoundError, NonFiniteLossError) as error:
        raise SystemExit(f"train_target: {error}") from error
    except TrapdoorNotFormedError as error:
        print(json.dumps(error.results, indent=2))
        print(trapdoor_line(error.results))
        raise SystemExit(f"train_target: {error}") from error
    print(json.dumps(results, indent=2))
    print(trapdoor_line(results))


def run():
    """The console command `trapmid-train`."""
    console.run_command(main, sys.modules[__name__])


if __name__ == "__main__":
    run()
