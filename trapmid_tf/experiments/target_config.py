"""What a target's training run is: the presets, the checked settings and their identity.

A run's settings are one dict (`resolve_config` fills it from the dataset, model and defense
presets and checks it); `trapmid_tf.experiments.targets.train` trains from it, and
`trapmid-train` builds it from its flags.
"""

import importlib
import json
import math
import os
import re

from trapmid_tf.experiments import defenses as defense_registry
from trapmid_tf.data.loaders import DEFAULT_FOLDERS, default_data_dir
from trapmid_tf.validation import check_positive_int, is_integer

DEFENSES = tuple(defense_registry.DEFENSES)
MODELS = ("small_cnn", "vgg16_bn", "ir18", "facenet64", "ir152", "facenet_eval")
# A model of one's own: "package.module:function" (see `model_function`).
MODEL_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")

# Defaults; any flag given on the command line wins. A preset is the dataset's entry, updated
# by MODEL_PRESETS for its model and then by DEFENSE_PRESETS for its defense (`preset`). The
# face and MNIST numbers are the reference's (ntuaislab/Trap-MID config/*/*.json, named on each
# entry; tests/recipes/test_train_target.py checks them); the digits defaults were chosen by
# measurement (docs/measurements.md, "Choosing the digits defaults"). `lr_decay_epoch`: the
# epochs at which the learning rate drops tenfold (PyTorch's MultiStepLR, gamma 0.1); digits
# give a fraction of --epochs instead. `torch_running_variance` (a preset setting without a
# flag): the model's batch norms update their moving variance as PyTorch does (unbiased batch
# variance, `trapmid_tf.models.FusedBatchNorm`) in the presets that copy the reference, whose
# training reads those statistics (Trap-MID's trigger step runs the classifier in inference
# mode); the digits preset is ours and keeps Keras's rule, under which it was measured. It
# applies to the zoo's models (a model of one's own builds its own batch norms).
PRESETS = {
    "digits": dict(
        model="small_cnn", epochs=40, batch_size=64, optimizer="adam", learning_rate=1e-3,
        lr_decay_fraction=0.75, alpha=0.1, beta=0.2, trigger_step_size=0.01, mid_beta=0.01,
        public_split="samples", min_trapdoor_accuracy=0.9, flip=False, image_size=None,
        torch_running_variance=False,
    ),
    # config/mnist/classify.json and classify_trap.json, entry "IR18".
    "mnist": dict(
        model="ir18", epochs=10, batch_size=64, optimizer="sgd", learning_rate=1e-2,
        lr_decay_epoch=(), alpha=0.02, beta=0.2, trigger_step_size=0.01, mid_beta=0.01,
        public_split="classes", min_trapdoor_accuracy=0.0, flip=False, image_size=None,
        torch_running_variance=True,
    ),
    # config/celeba/classify_trap.json, entry "VGG16" (FaceNet64 the same); dataset.py flips
    # the training images.
    "celeba": dict(
        model="vgg16_bn", epochs=50, batch_size=64, optimizer="sgd", learning_rate=1e-2,
        lr_decay_epoch=(), alpha=0.02, beta=0.2, trigger_step_size=0.01, mid_beta=0.003,
        public_split="classes", min_trapdoor_accuracy=0.0, flip=True, image_size=None,
        torch_running_variance=True,
    ),
}
PRESETS["fashion_mnist"] = PRESETS["mnist"]
# Labelled image folders: the digits recipe (constant-rate Adam, then 10x lower) at the files'
# image size, with the reference's trapdoor rule (no minimum trapdoor accuracy); alpha None:
# `default_alpha` of the loaded images' shape and class count (`with_alpha`).
PRESETS["class_folder"] = dict(
    PRESETS["digits"], public_split="classes", min_trapdoor_accuracy=0.0, alpha=None
)
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

# Every setting of a run, with the value it takes when not given; None: the preset's (or, for
# width, split_seed, backup_dir..., the documented fallback). `trapmid-train` has one flag each.
DEFAULTS = dict(
    dataset="digits", data_dir=None, test_dir=None, test_fraction=None, public_split=None,
    skip_unreadable=False, model=None,
    image_size=None, flip=None, width=None, defense="trapmid", epochs=None, batch_size=None,
    optimizer=None, learning_rate=None, lr_decay_epoch=None, alpha=None, beta=None,
    trigger_step_size=None, discriminator=True, augment=True, min_trapdoor_accuracy=None,
    trapdoor_warning_threshold=None, require_trapdoor=False, optimize_triggers=True,
    fast_trapmid=False, negls_smoothing=-0.05, mid_beta=None, bido_lambda_xz=0.05,
    bido_lambda_yz=0.5, seed=0, split_seed=None, strategy="default", out=None, backup_dir=None,
)
# Settings of the trapdoor alone: refused by `resolve_config` for a defense without triggers
# when changed from their `DEFAULTS`; the pipeline gives them to its trapdoor defenses only.
TRAPDOOR_KEYS = (
    "discriminator", "augment", "optimize_triggers", "min_trapdoor_accuracy", "fast_trapmid",
)
# Where a target is written, not what it is: left out of its stage identity (`identity`), so
# that a run folder can be moved and reused.
LOCATION_KEYS = ("out", "backup_dir")
# How `alpha` was chosen, added by `resolve_config`: given in the settings ("flag", --alpha),
# the dataset preset's ("preset"), or `default_alpha`'s for the loaded images ("measured
# default"). The same alpha trains the same target: left out of `identity`, and resumable.
ALPHA_SOURCE = "alpha_source"
# The update rule of the Adam optimiser (`trapmid_tf.TorchAdam`: PyTorch's), part of the
# identity of every pipeline and audit stage trained with it (Adam targets, the GAN priors and
# the attacks that search them): stages trained with Keras's Adam (before `TorchAdam`) have no
# such entry, so they are trained again rather than reused. Folders of trapmid-prior and
# trapmid-attack do not record it: --overwrite redoes those made before `TorchAdam`.
ADAM_RULE = "pytorch"
# Settings that may change between a run and its resumption from a backup.
RESUMABLE_CHANGES = (
    "backup_dir", "strategy", "trapdoor_warning_threshold", "require_trapdoor", ALPHA_SOURCE,
)
# The point where docs/trapdoor_formation.md measured the blend weight (`default_alpha`): the
# digits and Fashion-MNIST runs, 32x32x1 images of 5 private classes.
MEASURED_IMAGE_SHAPE = (32, 32, 1)
MEASURED_NUM_CLASSES = 5


def resolve_config(overrides):
    """Fills unset (None) settings from the preset (`preset`) and checks them.

    Args:
        overrides: Dict of settings (keys of `DEFAULTS`); a key left out takes its value in
            `DEFAULTS`, and a None value the preset's. `lr_decay_epoch` is an int or a list
            of ints (0 or an empty list: no drop).

    Returns:
        The complete settings dict, with `ALPHA_SOURCE` added ("flag", "preset" or "measured
        default"); for "measured default" (class_folder without alpha) alpha is None until
        `with_alpha` sets it from the loaded images.

    Raises:
        ValueError: for contradictory or out-of-range settings.
        FileNotFoundError: if `data_dir` is not an existing folder.
    """
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown target settings {unknown}; known: {sorted(DEFAULTS)}.")
    config = dict(DEFAULTS, **overrides)
    defaults = preset(config["dataset"], config["defense"], config.get("model"))
    decay_fraction = defaults.pop("lr_decay_fraction", None)
    for key, value in defaults.items():
        if config.get(key) is None:
            config[key] = value
    config[ALPHA_SOURCE] = (
        "flag" if overrides.get("alpha") is not None
        else "preset" if config["alpha"] is not None else "measured default"
    )
    if config["lr_decay_epoch"] is None and decay_fraction is not None:
        config["lr_decay_epoch"] = round(decay_fraction * config["epochs"])
    config["lr_decay_epoch"] = _decay_epochs(config["lr_decay_epoch"], config["epochs"])
    _check_data_dir(config)
    if config["skip_unreadable"] and config["dataset"] not in ("celeba", "class_folder"):
        raise ValueError(
            "`skip_unreadable` applies to image files (`dataset` 'celeba' or 'class_folder'); "
            f"`dataset` is {config['dataset']!r}."
        )
    if config["model"] not in MODELS:
        model_function(config["model"])
    if not defense_registry.get_defense(config["defense"]).trapdoor:
        for key in TRAPDOOR_KEYS:
            value = overrides.get(key, DEFAULTS[key])
            if value != DEFAULTS[key]:
                raise ValueError(
                    f"`{key}` only applies to the trapmid defenses (received {value!r}); "
                    f"`defense` is {config['defense']!r}."
                )
    if config["fast_trapmid"] and config["strategy"] != "default":
        raise ValueError(
            "`fast_trapmid` runs on one replica (its discriminator skips steps); `strategy` is "
            f"{config['strategy']!r}."
        )
    for key in ("epochs", "batch_size", "width"):
        if config[key] is not None and config[key] < 1:
            raise ValueError(f"`{key}` must be >= 1; received {config[key]}.")
    for key in ("min_trapdoor_accuracy", "trapdoor_warning_threshold"):
        if config[key] is not None and not 0.0 <= config[key] <= 1.0:
            raise ValueError(f"`{key}` must be in [0, 1]; received {config[key]}.")
    if config["split_seed"] is None:
        config["split_seed"] = config["seed"]
    for key in ("seed", "split_seed"):
        if config[key] < 0:
            raise ValueError(f"`{key}` must be >= 0; received {config[key]}.")
    if config["width"] is not None and config["model"] != "small_cnn":
        raise ValueError(
            f"`width` only applies to `model` 'small_cnn'; `model` is {config['model']!r}."
        )
    _check_backup_dir(config)
    if config["strategy"] == "multi_worker":
        workers = _cluster_size(os.environ.get("TF_CONFIG"))
        if config["batch_size"] % workers:
            raise ValueError(
                f"`batch_size` must be a multiple of the {workers} workers in TF_CONFIG; "
                f"received {config['batch_size']}."
            )
    if config["image_size"] is not None and config["image_size"] < 1:
        raise ValueError(f"`image_size` must be >= 1; received {config['image_size']}.")
    if config["learning_rate"] <= 0:
        raise ValueError(f"`learning_rate` must be > 0; received {config['learning_rate']}.")
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


def default_alpha(image_shape, num_classes):
    """The blend weight of a class_folder run given no alpha, and why, from its data.

    The rule rests on the runs of docs/trapdoor_formation.md, all at 32x32x1 with 5 classes
    (`MEASURED_IMAGE_SHAPE`, `MEASURED_NUM_CLASSES`). The class_folder preset is the digits
    recipe, whose rows are:

        | data | alpha | augmentation | discriminator | steps | kept epoch: test / trapdoor
          accuracy | first epoch with trapdoor >= 95% (highest) |
        | digits | 0.1 (preset) | on | on | 200 | 98.3% / 100.0% | 21 |
        | digits | 0.05 | on | on | 200 | 99.4% / 82.2% | never (82.2%) |
        | digits | 0.02 | on | on | 200 | 99.4% / 28.9% | never (28.9%) |

    Fashion-MNIST after one epoch reached 74.7% at 0.1 against 35.3% at 0.02, for 1.3 points
    of clean accuracy. Hence:

    * 32x32x1, 5 classes: 0.1, the smallest weight measured to form the trapdoor.
    * At least 1024 pixel values (height x width x channels) and at most 5 classes: 0.1. Not
      measured, but the doc's factors (pixel values that carry the trigger, share of the
      triggered images per class) are at least as favourable; the paper's 0.02 (64x64x3,
      about 21,000 steps) was not measured here.
    * Fewer pixel values or more classes: 0.2. Not measured, and harder (fewer pixel values
      carry the trigger; each class's trigger gets a smaller share of the triggered images),
      so the weight leans toward formation: 0.2 formed digits' random fixed triggers (100%
      on 3 seeds, 99.4-100% clean) where 0.1 did not (36.7-63.9%, docs/adaptive_attacks.md).

    A trapdoor that does not form gives no protection, while a larger weight costs little
    clean accuracy (0.02 to 0.1: 99.4% to 98.3% on digits, 86.4% to 85.1% on Fashion-MNIST).

    Args:
        image_shape: `(height, width, channels)` of the images, positive ints.
        num_classes: Number of classes, a positive int.

    Returns:
        `(alpha, reason)`: the weight and one sentence saying why, starting "default for
        HxWxC images and K classes: ".

    Raises:
        ValueError: if `image_shape` is not three positive ints or `num_classes` is not a
            positive int.
    """
    if not isinstance(image_shape, (tuple, list)) or len(image_shape) != 3 or not all(
        is_integer(side) and side >= 1 for side in image_shape
    ):
        raise ValueError(
            "`image_shape` must be (height, width, channels), positive ints; received "
            f"{image_shape!r}."
        )
    num_classes = check_positive_int("num_classes", num_classes)
    height, width, channels = (int(side) for side in image_shape)
    measured_values = math.prod(MEASURED_IMAGE_SHAPE)
    measured = "x".join(map(str, MEASURED_IMAGE_SHAPE))
    start = f"default for {height}x{width}x{channels} images and {num_classes} classes: "
    if (height, width, channels) == MEASURED_IMAGE_SHAPE and (
        num_classes == MEASURED_NUM_CLASSES
    ):
        return 0.1, start + (
            "measured there, 0.1 formed the digits trapdoor in 200 steps (100%) where 0.05 "
            "reached 82% and 0.02 29%"
        )
    if height * width * channels >= measured_values and num_classes <= MEASURED_NUM_CLASSES:
        return 0.1, start + (
            f"not measured, but at least the {measured_values} pixel values and at most the "
            f"{MEASURED_NUM_CLASSES} classes of the measured {measured}, where 0.1 formed the "
            "trapdoor and 0.02 did not"
        )
    harder = []
    if height * width * channels < measured_values:
        harder.append(f"fewer pixel values than the measured {measured} carry the trigger")
    if num_classes > MEASURED_NUM_CLASSES:
        harder.append(f"more classes than the measured {MEASURED_NUM_CLASSES} share the "
                      "triggered images")
    return 0.2, start + (
        f"not measured; {' and '.join(harder)}, so the weight leans toward formation (0.2 "
        "formed digits' random fixed triggers where 0.1 did not)"
    )


def with_alpha(config, image_shape, num_classes):
    """`config` with alpha set: its own, or `default_alpha`'s when it has none.

    Args:
        config: Settings as returned by `resolve_config`.
        image_shape: `(height, width, channels)` of the loaded images.
        num_classes: Number of classes of the loaded data.

    Returns:
        `(config, reason)`: a new dict with a float alpha, and `default_alpha`'s reason, or
        None when `config` had an alpha.
    """
    if config["alpha"] is not None:
        return config, None
    alpha, reason = default_alpha(image_shape, num_classes)
    return dict(config, alpha=alpha), reason


def model_function(spec):
    """Imports the builder of a model of one's own.

    Args:
        spec: "package.module:function", a function that takes `(input_shape,
            num_classes)` and returns an uncompiled `keras.Model` mapping float32 NHWC
            images in [0, 1] to `num_classes` logits (checked when it is built).

    Returns:
        The function.

    Raises:
        ValueError: if `spec` is malformed, its module cannot be imported, or it names no
            callable; the message names `spec` and what was expected.
    """
    expected = f"`model` must be one of {list(MODELS)} or 'package.module:function'"
    if not isinstance(spec, str) or not MODEL_SPEC.fullmatch(spec):
        raise ValueError(f"{expected}; received {spec!r}.")
    module_name, function_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"{expected}; received {spec!r}, whose module {module_name!r} cannot be imported "
            f"({type(error).__name__}: {error}); put its folder on sys.path, e.g. PYTHONPATH=."
        ) from error
    function = getattr(module, function_name, None)
    if function is None:
        raise ValueError(
            f"{expected}; received {spec!r}, but module {module_name!r} has no attribute "
            f"{function_name!r}."
        )
    if not callable(function):
        raise ValueError(
            f"{expected}; received {spec!r}, whose {function_name!r} is a "
            f"{type(function).__name__}, not callable."
        )
    return function


def _decay_epochs(value, epochs):
    """The sorted learning-rate drop epochs of an int or list setting, zeros left out."""
    values = [value] if isinstance(value, int) else list(value)
    for epoch in values:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= epochs:
            raise ValueError(
                f"`lr_decay_epoch` must be ints in [0, `epochs`={epochs}]; received {value!r}."
            )
    return sorted({epoch for epoch in values if epoch})


def _check_data_dir(config):
    data_dir = config.get("data_dir")
    if config["dataset"] == "digits":
        if data_dir:
            raise ValueError(
                f"`dataset` 'digits' is embedded and reads no `data_dir`; received {data_dir!r}."
            )
    elif not data_dir and default_data_dir(config["dataset"]) is None:
        searched = DEFAULT_FOLDERS.get(config["dataset"])
        raise ValueError(
            f"`dataset` {config['dataset']!r} reads its files from `data_dir`, which is not set "
            f"(only digits is embedded; nothing is downloaded"
            + (f"; none of {list(searched)} holds it" if searched else "") + ")."
        )
    elif data_dir and not os.path.isdir(data_dir):
        raise FileNotFoundError(f"`data_dir` {data_dir!r} is not an existing folder.")
    for key in ("test_dir", "test_fraction"):
        if config[key] is not None and config["dataset"] != "class_folder":
            raise ValueError(
                f"`{key}` applies to `dataset` 'class_folder'; `dataset` is {config['dataset']!r}."
            )
    if config["test_dir"] is not None and not os.path.isdir(config["test_dir"]):
        raise FileNotFoundError(f"`test_dir` {config['test_dir']!r} is not an existing folder.")


def _check_backup_dir(config):
    backup_dir = config["backup_dir"]
    if backup_dir and config.get("out") and (
        os.path.realpath(backup_dir) == os.path.realpath(config["out"])
    ):
        raise ValueError(
            f"`backup_dir` must differ from `out` (e.g. a subfolder); both are {backup_dir!r}."
        )


def _cluster_size(tf_config):
    """The number of chief and worker tasks in a TF_CONFIG string.

    Raises:
        ValueError: if `tf_config` is unset or describes no cluster.
    """
    if not tf_config:
        raise ValueError(
            "`strategy` 'multi_worker' reads the cluster from the TF_CONFIG environment variable, "
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



def identity(config):
    """What a target's artefacts depend on: `config` less `LOCATION_KEYS` and `ALPHA_SOURCE`;
    with the Adam optimiser also its update rule (`ADAM_RULE`), so that a target trained with
    Keras's Adam, before `TorchAdam`, is not taken for one trained now."""
    found = {
        key: value for key, value in config.items()
        if key not in (*LOCATION_KEYS, ALPHA_SOURCE)
    }
    if found.get("optimizer") == "adam":
        found["adam_rule"] = ADAM_RULE
    return found

