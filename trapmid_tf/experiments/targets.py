"""Target training as a library function: one run's settings in, its artefacts written out.

`train(config)` takes the settings dict of `trapmid_tf.experiments.target_config.resolve_config`
and writes into `config["out"]`: flags.json, results.json, classifier.keras (the best epoch)
and, for Trap-MID defenses, triggers.npz (owner-only). `trapmid-train` is its command line.
"""

import functools
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

import trapmid_tf as tm
from trapmid_tf.callbacks import StopOnNonFiniteLoss, TrapMIDBackup
from trapmid_tf.defenses.negls import NegLSLoss
from trapmid_tf.experiments import defenses as defense_registry
from trapmid_tf.experiments.target_config import (
    ALPHA_SOURCE, MODELS, RESUMABLE_CHANGES, model_function, with_alpha,
)
from trapmid_tf.files import write_json
from trapmid_tf.models.features import feature_layer
from trapmid_tf.seeding import seeded

# The reference's optimiser constants (utils.init_optimizer and every config entry): SGD with
# momentum 0.9 and weight decay 1e-4 as PyTorch applies it (trapmid_tf.TorchSGD); PyTorch's Adam
# (trapmid_tf.TorchAdam: epsilon 1e-8 added after the bias correction) and no weight decay.
SGD_MOMENTUM = 0.9
SGD_WEIGHT_DECAY = 1e-4
ADAM_EPSILON = 1e-8


class TrapdoorNotFormedError(RuntimeError):
    """Raised by `train` under `require_trapdoor` when the trapdoor did not form.

    Every artefact is written before it is raised.

    Attributes:
        results: The results dict written to `results.json`.
    """

    def __init__(self, message, results):
        super().__init__(message)
        self.results = results


@functools.cache
def make_strategy(name):
    """Returns the tf.distribute strategy called `name`, one per process.

    Call it before any other TensorFlow work: a multi-worker strategy configures the
    collective ops when TensorFlow starts.
    """
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return _multi_worker_strategy()
    return tf.distribute.get_strategy()


def _multi_worker_strategy():
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
        A `trapmid_tf.TorchSGD` or `trapmid_tf.TorchAdam`.
    """
    learning_rate = config["learning_rate"]
    drops = config["lr_decay_epoch"]
    if drops:
        # The schedule keeps value i while step <= boundary i: the last step of epoch e - 1.
        learning_rate = keras.optimizers.schedules.PiecewiseConstantDecay(
            [epoch * steps_per_epoch - 1 for epoch in drops],
            [learning_rate / 10**i for i in range(len(drops) + 1)],
        )
    if config["optimizer"] == "adam":
        return tm.TorchAdam(learning_rate, epsilon=ADAM_EPSILON)
    return tm.TorchSGD(learning_rate, momentum=SGD_MOMENTUM, weight_decay=SGD_WEIGHT_DECAY)


def make_loss(config):
    if defense_registry.get_defense(config["defense"]).negls:
        return NegLSLoss(config["negls_smoothing"], num_epochs=config["epochs"])
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def custom_classifier(spec, input_shape, num_classes):
    """Builds a classifier of one's own and checks it.

    Args:
        spec: "package.module:function" (see `target_config.model_function`).
        input_shape: `(height, width, channels)` of the images.
        num_classes: Number of logits.

    Returns:
        The uncompiled `keras.Model` the function returned: input shape
        `(None, *input_shape)`, output shape `(None, num_classes)`.

    Raises:
        ValueError: If the function returns anything else; the message names `spec`, what
            was expected and what was received.
    """
    input_shape = tuple(input_shape)
    model = model_function(spec)(input_shape, num_classes)
    expected = (
        f"`model` {spec!r} must return an uncompiled keras.Model of input shape "
        f"{(None, *input_shape)} and output shape {(None, num_classes)} (logits)"
    )
    if not isinstance(model, keras.Model):
        raise ValueError(f"{expected}; it returned a {type(model).__name__}.")
    if model.compiled:
        raise ValueError(f"{expected}; it returned a compiled one (the defense compiles it).")
    try:
        shapes = tuple(model.input_shape), tuple(model.output_shape)
    except (AttributeError, ValueError, TypeError) as error:
        raise ValueError(
            f"{expected}; its model has no single fixed input and output ({error}). Build "
            "it from a keras.Input, functionally or as a Sequential."
        ) from error
    if shapes != ((None, *input_shape), (None, num_classes)):
        raise ValueError(
            f"{expected}; it returned one of input shape {shapes[0]} and output shape "
            f"{shapes[1]}."
        )
    return model


def build_model(config, input_shape, num_classes, steps_per_epoch):
    """Builds and compiles the target for `config["defense"]` in the current strategy scope.

    Returns a plain Keras classifier (none, negls) or a wrapper with `export_classifier`
    (`TrapMIDModel`, `MIDModel`, `BiDOModel`; Trap-MID's alpha, if None, is
    `target_config.default_alpha`'s). A model of one's own (`custom_classifier`)
    serves MID and BiDO through the convention of `trapmid_tf.models.features`: its last
    layer (or a layer named "logits") is the Dense that maps the feature to the logits;
    BiDO constrains that feature (in the zoo's models, their blocks' outputs too).

    Raises:
        ValueError: As `custom_classifier`, or if a model of one's own cannot serve MID or
            BiDO, naming what they need.
    """
    options = {} if config.get("width") is None else {"width": config["width"]}
    zoo = config["model"] in MODELS
    if zoo:  # the zoo's builders; a model of one's own builds its own batch norms
        options["torch_running_variance"] = config["torch_running_variance"]
    classifier = (
        getattr(tm.models, config["model"])(input_shape, num_classes, **options) if zoo
        else custom_classifier(config["model"], input_shape, num_classes)
    )
    regularized = {
        "mid": lambda: tm.defenses.MIDModel(
            classifier, beta=config["mid_beta"], seed=config["seed"]
        ),
        "bido": lambda: tm.defenses.BiDOModel(
            classifier, hidden_layers=None if zoo else [feature_layer(classifier).name],
            lambda_xz=config["bido_lambda_xz"], lambda_yz=config["bido_lambda_yz"],
        ),
    }
    defense = defense_registry.get_defense(config["defense"])
    if defense.regularizer:
        try:
            model = regularized[defense.regularizer]()
        except ValueError as error:
            if zoo:
                raise
            raise ValueError(
                f"`defense` {defense.name!r} needs `model` {config['model']!r} to be a "
                "functional keras.Model whose last layer (or a layer named 'logits') is the "
                f"Dense that maps the penultimate feature to the logits: {error}"
            ) from error
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
        alpha=with_alpha(config, input_shape, num_classes)[0]["alpha"],
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


def train(config, verbose=0):
    """Trains one target as `config` says and writes its artefacts into `config["out"]`.

    With `config["backup_dir"]` it resumes from the backup there, if any. With a
    multi-worker strategy, only the chief writes; the other workers write to temporary
    folders that they remove.

    Args:
        config: Settings as returned by
            `trapmid_tf.experiments.target_config.resolve_config`; an alpha of None is set
            from the loaded images (`target_config.default_alpha`) before anything is
            written.
        verbose: `keras.Model.fit`'s verbosity (0 silent, 2 one line per epoch).

    Returns:
        The results dict that is also written to `results.json`; for Trap-MID defenses it
        holds `alpha`, `alpha_source` ("flag", "preset" or "measured default") and
        `alpha_reason` (`default_alpha`'s reason, or None), None for the others.

    Raises:
        trapmid_tf.callbacks.NonFiniteLossError: at the first non-finite training loss.
        ValueError: if `backup_dir` holds a backup of other settings.
        TrapdoorNotFormedError: with `require_trapdoor`, when the trapdoor did not form (after
            every artefact is written).
    """
    strategy = make_strategy(config["strategy"])  # before any other TensorFlow work
    with seeded(config["seed"]):
        splits = tm.data.load(
            config["dataset"], config["data_dir"], seed=config["split_seed"],
            image_size=config.get("image_size"),
            public_split=config["public_split"], skip_unreadable=config["skip_unreadable"],
            test_dir=config.get("test_dir"), test_fraction=config.get("test_fraction"),
        )
        (train_set, test_set), _ = splits
        num_classes = int(train_set.reduce(0, lambda m, item: tf.maximum(m, item[1])).numpy()) + 1
        config, alpha_reason = with_alpha(
            config, tuple(train_set.element_spec[0].shape), num_classes
        )
        test_data = test_set
        if defense_registry.get_defense(config["defense"]).trapdoor:
            test_data = tm.data.with_trapdoor_labels(test_set, num_classes, seed=config["seed"] + 1)
        test_data = test_data.batch(256).cache().prefetch(tf.data.AUTOTUNE)

        chief = strategy.extended.should_checkpoint
        out = config["out"] if chief else tempfile.mkdtemp(prefix="train_target_worker_")
        try:
            return _fit_and_write(
                config, strategy, train_set, num_classes, test_data, out, splits.skipped_files,
                alpha_reason, verbose,
            )
        finally:
            if not chief:
                shutil.rmtree(out, ignore_errors=True)


def _fit_and_write(config, strategy, train_set, num_classes, test_data, out, skipped_files,
                   alpha_reason, verbose):
    """Builds the model, trains it (from the backup, if any) and writes into `out`.

    `alpha_reason`: `default_alpha`'s reason when it chose alpha, else None.
    """
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
            verbose=verbose,
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
        "alpha": config["alpha"] if uses_triggers else None,
        "alpha_source": config[ALPHA_SOURCE] if uses_triggers else None,
        "alpha_reason": alpha_reason if uses_triggers else None,
    }
    write_json(os.path.join(out, "results.json"), results)
    if config["require_trapdoor"] and results["trapdoor_formed"] is False:
        raise TrapdoorNotFormedError(
            f"`require_trapdoor`: {trapdoor_line(results)} Artefacts are written to {out!r}.",
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

