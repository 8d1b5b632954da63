"""Times Trap-MID training steps against plain training, and attack iterations.

Example:
    python recipes/benchmark.py --workloads=W2,W3,A2 --variants=plain,trapmid,trapmid_fast \
        --out=runs/benchmark.json

Workloads (shared/bench/WORKLOADS.md): W1 VGG16-BN 64x64x3 1000 classes, W2 IR-18 64x64x3
5 classes, W3 the digits small CNN 32x32x1 5 classes; batch 64, random inputs in memory.
"plain" is the classifier trained with cross-entropy (SGD 1e-2, momentum 0.9, weight decay
1e-4); "trapmid" is `TrapMIDModel` with the reference defaults (alpha 0.02, beta 0.2, trigger
step 0.01, discriminator and augmentation on) and the same optimiser; "trapmid_fast" is
`FastTrapMIDModel` with its defaults (an algorithm of its own). Each
repetition is one whole epoch of --steps steps after --warmup untimed epochs; the JSON holds
per variant the median/min/max milliseconds per step and each Trap-MID variant's ratio of
medians to plain, measured in the same run.

Attack workloads, random-init networks: A1 is the GMI inversion (reference generator, z=100,
64x64x3, and WGAN critic) of W1's VGG16-BN, 60 identities x 1 restart; A2 the prior-free
MI-Face inversion of W3's small CNN, 5 classes x 1. Each repetition is one compiled chunk of
--attack_iterations iterations after --warmup untimed chunks (the first one traces), reported
as seconds per 100 iterations.

Digits-size attacks: A1d (GMI) and A3d (PLG-MI) invert W3's small CNN with the demo's GAN
width (16), 5 classes x 5 restarts; A3 is the PLG-MI inversion (conditional ResNet generator,
z=128) of W1's VGG16-BN, 60 identities x 1 restart.

Prior workloads (docs/attack_speed.md), random-init networks, random public batches: P1 the
GMI WGAN-GP prior (`GMIPrior`), P2 the PLG-MI conditional GAN (`PLGMIPrior`, target W1's
VGG16-BN), P3 the KED-MI prior (`KEDMIPrior`, target W1's VGG16-BN), at 64x64x3 with the
reference's widths (64), batch 64 and 5 opponent steps per generator step; P1d, P2d, P3d the
same at the digits demo's sizes (32x32x1, 5 classes, W3's small CNN as target, width 16; KED-MI
at the demo's batch 32 and 1 discriminator step per generator step). Each repetition is one
epoch of `fit` of --prior_iterations iterations after --warmup untimed epochs; an iteration is
the opponent steps of one generator step plus that step (`n_critic` + 1 network updates),
reported as milliseconds per iteration. --gan_width overrides every GAN network's width (tests).

--phases also times each phase of the default Trap-MID step (discriminator step, trigger
gradient, classifier step, augmentation) and the whole and plain steps, each as its own
compiled function on one batch: where the step's time goes. For prior and attack workloads it
times the parts of one training step or inversion iteration the same way (network forward
passes, the gradients each player's loss needs, the augmentation).

--precisions times every workload at each listed precision (`trapmid_tf.precision`), the
precisions alternating within each variant, e.g. `--precisions=float32,mixed_bfloat16`.
float32 timings keep their plain names ("plain", "gmi"); the others are named "<name>@<precision>"
(also the phases' workload keys), and "<name>@<precision>_over_<name>" is the ratio of medians
to the first listed precision, measured in the same run.

--compile_modes times every workload under each listed compilation, alternating the same way:
"graph" (`tf.function`, `jit_compile=False`) and "xla" (`jit_compile=True` in `compile`, in the
attack's constructor, or on each phase's `tf.function`), e.g. `--compile_modes=graph,xla`.
Graph timings keep their names; the others are named "<name>@<mode>" (after any precision:
"plain@mixed_bfloat16@xla"; also the phases' workload keys), and "<name>@<mode>_over_<name>" is the ratio of medians to the
first listed mode at the same precision. Where XLA cannot compile a model (Keras turned
`jit_compile` off for a layer without XLA support, or an op has no XLA kernel), its entry holds
`{"failed": <the error>}` instead of timings, and the run goes on.
"""

import json
import os
import platform
import statistics
import time
from unittest import mock

from trapmid_tf.startup import import_tensorflow

import_tensorflow()  # first: TensorFlow's quiet start-up and oneDNN (trapmid_tf.startup)

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags
from keras import ops

import trapmid_tf as tm
from trapmid_tf.attacks import inversion
from trapmid_tf.attacks.plgmi_prior import margin_loss, plgmi_augment
from trapmid_tf.defenses import FastTrapMIDModel
from trapmid_tf.files import write_json
from trapmid_tf.precision import PRECISIONS, bfloat16_hardware, use_precision

FLAGS = flags.FLAGS
flags.DEFINE_list("workloads", ["W2", "W3"], "Workloads to run: W1, W2, W3, A1, A2, A1d, A3, "
                  "A3d, P1, P2, P3, P1d, P2d, P3d.")
flags.DEFINE_integer("repetitions", 5, "Timed epochs (or attack chunks) per variant (>= 5).")
flags.DEFINE_integer("steps", 8, "Training steps per timed epoch.")
flags.DEFINE_integer("warmup", 1, "Untimed epochs or attack chunks (tracing, first calls).")
flags.DEFINE_integer("attack_iterations", 100, "Inversion iterations per timed attack chunk.")
flags.DEFINE_integer("prior_iterations", 2, "Generator iterations per timed prior epoch.")
flags.DEFINE_integer("gan_width", None, "Overrides the base width of every GAN network (small "
                     "sizes for tests); default: each workload's.")
flags.DEFINE_list("variants", ["plain", "trapmid"], "Training variants to time: plain, "
                  "trapmid, trapmid_fast.")
flags.DEFINE_bool("phases", False, "Also time each phase of the default Trap-MID step of the "
                  "training workloads, each as its own compiled function.")
flags.DEFINE_list("precisions", ["float32"], "Precisions to time every workload at, "
                  "alternating: float32, mixed_bfloat16.")
flags.DEFINE_list("compile_modes", ["graph"], "Compilations to time every workload under, "
                  "alternating: graph (tf.function), xla (jit_compile=True).")
flags.DEFINE_string("out", None, "JSON output file.")
flags.DEFINE_integer("seed", 0, "Seed of the random inputs and models.")

BATCH = 64
WORKLOADS = {
    "W1": dict(model="vgg16_bn", input_shape=(64, 64, 3), classes=1000),
    "W2": dict(model="ir18", input_shape=(64, 64, 3), classes=5),
    "W3": dict(model="small_cnn", input_shape=(32, 32, 1), classes=5),
}
ATTACKS = {
    "A1": dict(target="W1", attack="gmi", identities=60, width=64),
    "A2": dict(target="W3", attack="mi_face", identities=5),
    "A1d": dict(target="W3", attack="gmi", identities=5, per_class=5, width=16),
    "A3": dict(target="W1", attack="plgmi", identities=60, width=64),
    "A3d": dict(target="W3", attack="plgmi", identities=5, per_class=5, width=16),
}
# `n_critic`: opponent (critic or discriminator) steps per generator step.
PRIORS = {
    "P1": dict(target="W1", prior="gmi", width=64, batch=64, n_critic=5),
    "P2": dict(target="W1", prior="plgmi", width=64, batch=64, n_critic=5),
    "P3": dict(target="W1", prior="kedmi", width=64, batch=64, n_critic=5),
    "P1d": dict(target="W3", prior="gmi", width=16, batch=64, n_critic=5),
    "P2d": dict(target="W3", prior="plgmi", width=16, batch=64, n_critic=5),
    "P3d": dict(target="W3", prior="kedmi", width=16, batch=32, n_critic=1),
}
GMI_Z_DIM = 100
VARIANTS = ("plain", "trapmid", "trapmid_fast")
COMPILE_MODES = {"graph": False, "xla": True}  # mode -> jit_compile


class XLAUnsupported(Exception):
    """Keras compiled a model without the XLA that was asked for."""


def check_jit(model, jit_compile):
    """Raises `XLAUnsupported` where Keras turned `jit_compile` off for `model`."""
    if jit_compile and not model.jit_compile:
        layers = [layer.name for layer in model._flatten_layers() if not layer.supports_jit]
        raise XLAUnsupported(
            f"Keras compiled {type(model).__name__} with jit_compile=False; layers without "
            f"XLA support: {layers}"
        )


def summarize_run(jit_compile, unit, measure, *args):
    """`summarize(measure(*args), unit)`; under XLA, `{"failed": <error>}` where XLA cannot
    compile the measured model or function (the run goes on)."""
    try:
        return summarize(measure(*args), unit)
    except (XLAUnsupported, tf.errors.InvalidArgumentError) as error:
        if not jit_compile:
            raise
        lines = str(error).splitlines()  # TensorFlow's reason is the line naming XLA
        reason = next((line for line in lines if "XLA" in line), lines[0])
        return {"failed": f"{type(error).__name__}: {reason[:500]}"}


def sgd():
    return keras.optimizers.SGD(1e-2, momentum=0.9, weight_decay=1e-4)


def build(workload, variant, jit_compile=False):
    """Builds and compiles the model of one workload variant (with XLA if `jit_compile`)."""
    spec = WORKLOADS[workload]
    classifier = getattr(tm.models, spec["model"])(spec["input_shape"], spec["classes"])
    if variant == "plain":
        classifier.compile(
            optimizer=sgd(), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
        check_jit(classifier, jit_compile)
        return classifier
    model_class = FastTrapMIDModel if variant == "trapmid_fast" else tm.TrapMIDModel
    model = model_class(classifier, spec["classes"], seed=FLAGS.seed)
    model.compile(optimizer=sgd(), jit_compile=jit_compile)
    check_jit(model, jit_compile)
    return model


class EpochTimer(keras.callbacks.Callback):
    """Records the wall time of each epoch."""

    def __init__(self):
        super().__init__()
        self.seconds = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def time_variant(workload, variant, jit_compile):
    """Returns milliseconds per training step of each timed epoch."""
    keras.utils.set_random_seed(FLAGS.seed)
    spec = WORKLOADS[workload]
    rng = np.random.default_rng(FLAGS.seed)
    x = rng.uniform(size=(BATCH, *spec["input_shape"])).astype("float32")
    y = rng.integers(0, spec["classes"], BATCH).astype("int32")
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    model = build(workload, variant, jit_compile)
    timer = EpochTimer()
    model.fit(
        data,
        epochs=FLAGS.warmup + FLAGS.repetitions,
        steps_per_epoch=FLAGS.steps,
        callbacks=[timer],
        verbose=0,
    )
    return [1000.0 * s / FLAGS.steps for s in timer.seconds[FLAGS.warmup:]]


class ChunkTimer(keras.utils.Progbar):
    """A silent progress bar that records the wall time of each `minimize` chunk."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "verbose": 0})
        self.seconds = []
        self._last = time.perf_counter()

    def update(self, current, values=None, finalize=None):
        now = time.perf_counter()
        self.seconds.append(now - self._last)
        self._last = now
        super().update(current, values=values, finalize=finalize)


def target_classifier(workload):
    """Returns the random-init classifier of training workload `workload` and its input shape."""
    spec = WORKLOADS[workload]
    return getattr(tm.models, spec["model"])(spec["input_shape"], spec["classes"]), spec[
        "input_shape"
    ]


def gan_width(spec):
    """The base width of a workload's GAN networks (--gan_width, if given, overrides it)."""
    return FLAGS.gan_width or spec["width"]


def attack_networks(workload):
    """Returns `(target, generator, critic)` of an attack workload (None where unused)."""
    spec = ATTACKS[workload]
    target, shape = target_classifier(spec["target"])
    if spec["attack"] == "gmi":
        width = gan_width(spec)
        generator = tm.models.dcgan_generator(shape, z_dim=GMI_Z_DIM, base_channels=width)
        return target, generator, tm.models.wgan_critic(shape, base_channels=width)
    if spec["attack"] == "plgmi":
        classes, width = target.output_shape[-1], gan_width(spec)
        return target, tm.models.resnet_generator(shape, classes, base_channels=width), None
    return target, None, None


def build_attack(workload, jit_compile):
    """Returns `(attack, target, classes)` of an attack workload (random-init networks)."""
    spec = ATTACKS[workload]
    target, generator, critic = attack_networks(workload)
    iterations = FLAGS.attack_iterations * (FLAGS.warmup + FLAGS.repetitions)
    chunking = dict(chunk_size=FLAGS.attack_iterations, jit_compile=jit_compile)
    if spec["attack"] == "gmi":
        attack = tm.attacks.GMIAttack(generator, critic, iterations, **chunking)
    elif spec["attack"] == "plgmi":
        attack = tm.attacks.PLGMIAttack(generator, iterations, **chunking)
    else:
        attack = tm.attacks.MIFaceAttack(iterations, **chunking)
    return attack, target, list(range(spec["identities"]))


def time_attack(workload, jit_compile):
    """Returns seconds per 100 iterations of each timed chunk of an attack workload."""
    keras.utils.set_random_seed(FLAGS.seed)
    attack, target, classes = build_attack(workload, jit_compile)
    per_class = ATTACKS[workload].get("per_class", 1)
    timers = []

    def make_timer(*args, **kwargs):
        timers.append(ChunkTimer(*args, **kwargs))
        return timers[-1]

    with mock.patch.object(inversion.keras.utils, "Progbar", make_timer):
        attack.invert(target, classes, per_class=per_class, seed=FLAGS.seed, verbose=0)
    per_hundred = 100.0 / FLAGS.attack_iterations
    return [s * per_hundred for s in timers[0].seconds[FLAGS.warmup:]]


def prior_networks(workload):
    """Returns `(generator, opponent, target)` of a prior workload (random-init networks)."""
    spec = PRIORS[workload]
    target, shape = target_classifier(spec["target"])
    classes, width = target.output_shape[-1], gan_width(spec)
    if spec["prior"] == "plgmi":
        return (
            tm.models.resnet_generator(shape, classes, base_channels=width),
            tm.models.sn_projection_discriminator(shape, classes, base_channels=width),
            target,
        )
    generator = tm.models.dcgan_generator(shape, z_dim=GMI_Z_DIM, base_channels=width)
    if spec["prior"] == "gmi":
        return generator, tm.models.wgan_critic(shape, base_channels=width), target
    return generator, tm.models.minibatch_discriminator(shape, classes, base_channels=width), target


def build_prior(workload, jit_compile):
    """Returns the compiled prior of a prior workload (random-init networks, default Adam)."""
    spec = PRIORS[workload]
    generator, opponent, target = prior_networks(workload)
    if spec["prior"] == "gmi":
        prior = tm.attacks.GMIPrior(generator, opponent, spec["n_critic"], seed=FLAGS.seed)
    elif spec["prior"] == "kedmi":
        prior = tm.attacks.KEDMIPrior(
            generator, opponent, target, spec["n_critic"], seed=FLAGS.seed
        )
    else:
        prior = tm.attacks.PLGMIPrior(
            generator, opponent, target, n_dis=spec["n_critic"], seed=FLAGS.seed
        )
    prior.compile(jit_compile=jit_compile)
    check_jit(prior, jit_compile)
    return prior


def random_batch(workload, batch):
    """A fixed random batch `(images in [0, 1], int32 labels)` of a training workload's sizes."""
    spec = WORKLOADS[workload]
    rng = np.random.default_rng(FLAGS.seed)
    images = rng.uniform(size=(batch, *spec["input_shape"])).astype("float32")
    return images, rng.integers(0, spec["classes"], batch).astype("int32")


def time_prior(workload, jit_compile):
    """Returns milliseconds per generator iteration of each timed epoch of a prior workload."""
    keras.utils.set_random_seed(FLAGS.seed)
    spec = PRIORS[workload]
    data = tf.data.Dataset.from_tensors(random_batch(spec["target"], spec["batch"])).repeat()
    prior = build_prior(workload, jit_compile)
    timer = EpochTimer()
    prior.fit(
        data,
        epochs=FLAGS.warmup + FLAGS.repetitions,
        steps_per_epoch=FLAGS.prior_iterations * spec["n_critic"],
        callbacks=[timer],
        verbose=0,
    )
    return [1000.0 * s / FLAGS.prior_iterations for s in timer.seconds[FLAGS.warmup:]]


def summarize(values, unit="ms"):
    """Median, min and max of `values` in `unit` ("ms" per step or "s" per 100 iterations)."""
    digits = 1 if unit == "ms" else 3
    return {
        f"median_{unit}": round(statistics.median(values), digits),
        f"min_{unit}": round(min(values), digits),
        f"max_{unit}": round(max(values), digits),
        "repetitions": len(values),
        "values": [round(value, digits) for value in values],
    }


def environment():
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "TensorFlow's default"),
        "compile_modes": FLAGS.compile_modes,
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "batch": BATCH,
        "steps_per_repetition": FLAGS.steps,
        "attack_iterations_per_repetition": FLAGS.attack_iterations,
        "prior_iterations_per_repetition": FLAGS.prior_iterations,
        "gan_width_override": FLAGS.gan_width,
        "trapmid_fast_model": FastTrapMIDModel.__name__,
        "precisions": FLAGS.precisions,
        "bfloat16_hardware": bfloat16_hardware(),
    }


def check_flags():
    known = sorted([*WORKLOADS, *ATTACKS, *PRIORS])
    unknown = sorted(set(FLAGS.workloads) - set(known))
    if unknown:
        raise app.UsageError(f"--workloads: unknown {unknown}; known: {known}.")
    unknown = sorted(set(FLAGS.variants) - set(VARIANTS))
    if unknown or not FLAGS.variants:
        raise app.UsageError(f"--variants must be some of {list(VARIANTS)}; got {FLAGS.variants}.")
    if FLAGS.repetitions < 5:
        raise app.UsageError(f"--repetitions must be >= 5; got {FLAGS.repetitions}.")
    if FLAGS.attack_iterations < 1:
        raise app.UsageError(f"--attack_iterations must be >= 1; got {FLAGS.attack_iterations}.")
    if FLAGS.prior_iterations < 1:
        raise app.UsageError(f"--prior_iterations must be >= 1; got {FLAGS.prior_iterations}.")
    if FLAGS.gan_width is not None and FLAGS.gan_width < 1:
        raise app.UsageError(f"--gan_width must be >= 1 when given; got {FLAGS.gan_width}.")
    precisions = FLAGS.precisions
    distinct = len(set(precisions)) == len(precisions)
    if not precisions or set(precisions) - set(PRECISIONS) or not distinct:
        raise app.UsageError(
            f"--precisions must be distinct names among {list(PRECISIONS)}; got {precisions}."
        )
    modes = FLAGS.compile_modes
    if not modes or set(modes) - set(COMPILE_MODES) or len(set(modes)) != len(modes):
        raise app.UsageError(
            f"--compile_modes must be distinct names among {list(COMPILE_MODES)}; got {modes}."
        )


def time_phases(workload, jit_compile):
    """Milliseconds per call of each phase of a default Trap-MID step, and of the plain step.

    Each phase runs as its own compiled function (XLA if `jit_compile`) on one fixed batch,
    after the model is built by one step of `fit`; --warmup calls are untimed, then
    --repetitions are timed.
    """
    keras.utils.set_random_seed(FLAGS.seed)
    spec = WORKLOADS[workload]
    rng = np.random.default_rng(FLAGS.seed)
    x = tf.constant(rng.uniform(size=(BATCH, *spec["input_shape"])).astype("float32"))
    y, t = (tf.constant(rng.integers(0, spec["classes"], BATCH).astype("int32")) for _ in "yt")
    model, plain = build(workload, "trapmid"), build(workload, "plain")
    model.fit(tf.data.Dataset.from_tensors((x, y, t)), epochs=1, verbose=0)
    plain.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1, verbose=0)
    phases = {
        "plain_step": lambda: plain.train_step((x, y)),
        "trapmid_step": lambda: model.train_step((x, y, t)),
        "discriminator_phase": lambda: model._discriminator_phase(x, t),
        "trigger_phase": lambda: model._trigger_phase(x, t),
        "classifier_phase": lambda: model._classifier_phase(x, y, t),
        "augmentation": lambda: model._augment(tf.concat([x, x], 0)),
    }
    return time_calls(phases, jit_compile)


def time_calls(phases, jit_compile):
    """Milliseconds per call of each callable in `phases`, each as its own compiled function
    (XLA if `jit_compile`; a phase XLA cannot compile gets `{"failed": <error>}`).

    --warmup calls are untimed (the first traces), then --repetitions are timed.
    """

    def measure(compiled):
        milliseconds = []
        for _ in range(FLAGS.warmup + FLAGS.repetitions):
            start = time.perf_counter()
            tf.nest.map_structure(np.asarray, compiled())  # waits for the results
            milliseconds.append(1000.0 * (time.perf_counter() - start))
        return milliseconds[FLAGS.warmup:]

    return {
        name: summarize_run(
            jit_compile, "ms", measure, tf.function(phase, jit_compile=jit_compile)
        )
        for name, phase in phases.items()
    }


def gradient_of(loss, variables):
    """A phase: the gradient of `loss()` with respect to `variables` (forward and backward)."""

    def phase():
        with tf.GradientTape() as tape:
            value = loss()
        return tape.gradient(value, variables)

    return phase


def gradient_penalty_loss(critic, real, fake):
    """WGAN-GP's penalty mean (||grad critic(x_hat)|| - 1)^2 at random interpolates x_hat."""
    mix = tf.random.uniform((ops.shape(real)[0], 1, 1, 1))
    mixed = real + mix * (fake - real)
    with tf.GradientTape() as tape:
        tape.watch(mixed)
        scores = critic(mixed, training=True)
    norms = ops.sqrt(ops.sum(ops.square(tape.gradient(scores, mixed)), axis=(1, 2, 3)))
    return ops.mean(ops.square(norms - 1.0))


def two_views(images, seed_generator):
    """PLG-MI's inversion input: two independently augmented copies of `images`, stacked."""
    views = [plgmi_augment(images, seed_generator, jitter_probability=1.0)
             for _ in range(2)]
    return ops.concatenate(views, axis=0)


def prior_phases(workload):
    """The parts of one training step of a prior workload, as callables of `time_calls`.

    Each opponent step (`n_critic` per iteration) runs `opponent_gradient` (and for GMI
    `gradient_penalty_gradient`, for KED-MI and PLG-MI `target_forward` or the augmentation)
    after `generator_forward`; each generator step runs `generator_gradient`.
    """
    spec = PRIORS[workload]
    keras.utils.set_random_seed(FLAGS.seed)
    generator, opponent, target = prior_networks(workload)
    images, labels = (tf.constant(value) for value in random_batch(spec["target"], spec["batch"]))
    latents = tf.random.normal((spec["batch"], generator.inputs[0].shape[-1]))
    generator_variables = generator.trainable_variables
    opponent_variables = opponent.trainable_variables
    if spec["prior"] == "plgmi":
        seed_generator = keras.random.SeedGenerator(FLAGS.seed)

        def generate():
            return generator([latents, labels], training=True)

        def score(batch, batch_labels):
            return opponent([batch, batch_labels], training=True)

        fake = generate()
        return {
            "generator_forward": generate,
            "augmentation": lambda: plgmi_augment(fake, seed_generator),
            "target_forward": lambda: target(fake, training=False),
            "opponent_gradient": gradient_of(
                lambda: ops.mean(score(ops.concatenate([images, fake]),
                                       ops.concatenate([labels, labels]))),
                opponent_variables,
            ),
            "generator_gradient": gradient_of(
                lambda: -ops.mean(score(generate(), labels)) + margin_loss(
                    target(plgmi_augment(generate(), seed_generator), training=False),
                    labels,
                ),
                generator_variables,
            ),
        }

    def generate():
        return generator(latents, training=True)

    def score(batch):
        return opponent(batch, training=True)

    fake = generate()
    phases = {
        "generator_forward": generate,
        "generator_gradient": gradient_of(lambda: -ops.mean(score(generate())),
                                          generator_variables),
    }
    if spec["prior"] == "gmi":
        phases["opponent_gradient"] = gradient_of(
            lambda: ops.mean(score(images)) - ops.mean(score(fake)), opponent_variables
        )
        phases["gradient_penalty_gradient"] = gradient_of(
            lambda: gradient_penalty_loss(opponent, images, fake), opponent_variables
        )
    else:  # KED-MI: labelled, unlabelled and fake batches through the discriminator.
        phases["target_forward"] = lambda: target(images, training=False)
        phases["opponent_gradient"] = gradient_of(
            lambda: ops.mean(score(images)) + ops.mean(score(images)) - ops.mean(score(fake)),
            opponent_variables,
        )
    return phases


def attack_phases(workload):
    """The parts of one inversion iteration of a GAN attack workload (callables of
    `time_calls`): the forward passes and the loss's gradient with respect to the latents."""
    spec = ATTACKS[workload]
    keras.utils.set_random_seed(FLAGS.seed)
    target, generator, critic = attack_networks(workload)
    per_class = spec.get("per_class", 1)
    labels = tf.constant(np.repeat(np.arange(spec["identities"]), per_class).astype("int32"))
    latents = tf.Variable(tf.random.normal((len(labels), generator.inputs[0].shape[-1])))
    if spec["attack"] == "gmi":

        def generate():
            return generator(latents, training=False)

        def loss():
            images = generate()
            identity = keras.losses.sparse_categorical_crossentropy(
                labels, target(images, training=False), from_logits=True
            )
            return -ops.mean(critic(images, training=False)) + 100.0 * ops.mean(identity)

        fake = generate()
        return {
            "generator_forward": generate,
            "critic_forward": lambda: critic(fake, training=False),
            "target_forward": lambda: target(fake, training=False),
            "iteration_gradient": gradient_of(loss, [latents]),
        }
    seed_generator = keras.random.SeedGenerator(FLAGS.seed)

    def generate():
        return generator([latents, labels], training=False)

    fake = generate()
    views = two_views(fake, seed_generator)
    return {
        "generator_forward": generate,
        "augmentation": lambda: two_views(fake, seed_generator),
        "target_forward": lambda: target(views, training=False),
        "iteration_gradient": gradient_of(
            lambda: margin_loss(
                target(two_views(generate(), seed_generator), training=False),
                ops.tile(labels, [2]),
            ),
            [latents],
        ),
    }


def settings():
    """The `(precision, compile mode)` pairs to time, in the order they alternate."""
    return [(precision, mode) for precision in FLAGS.precisions for mode in FLAGS.compile_modes]


def at_setting(name, precision, mode):
    """The JSON key of `name` (a variant, attack, prior or workload) timed at `precision`
    under compile `mode`: "<name>", then "@<precision>" unless float32, "@<mode>" unless graph."""
    name = name if precision == "float32" else f"{name}@{precision}"
    return name if mode == "graph" else f"{name}@{mode}"


def add_ratio(timings, numerator, denominator):
    """Adds `timings["<numerator>_over_<denominator>"]`, their ratio of medians, if both ran."""
    if all(key in timings and "failed" not in timings[key] for key in (numerator, denominator)):
        unit = "ms" if "median_ms" in timings[numerator] else "s"
        timings[f"{numerator}_over_{denominator}"] = round(
            timings[numerator][f"median_{unit}"] / timings[denominator][f"median_{unit}"], 2
        )


def add_setting_ratios(timings, names):
    """Adds each name's ratio of medians at every other precision to the first listed one (in
    the same compile mode), and in every other compile mode to the first (at that precision)."""
    first_precision, first_mode = FLAGS.precisions[0], FLAGS.compile_modes[0]
    for precision, mode in settings():
        for name in names:
            key = at_setting(name, precision, mode)
            if precision != first_precision:
                add_ratio(timings, key, at_setting(name, first_precision, mode))
            if mode != first_mode:
                add_ratio(timings, key, at_setting(name, precision, first_mode))


def time_training(workload):
    """Per-variant step statistics of a training workload at each precision and compile mode,
    with the ratios to plain (and to the first precision and mode)."""
    timings = {}
    for variant in FLAGS.variants:
        for precision, mode in settings():
            use_precision(precision)
            timings[at_setting(variant, precision, mode)] = summarize_run(
                COMPILE_MODES[mode], "ms", time_variant, workload, variant, COMPILE_MODES[mode]
            )
    for precision, mode in settings():
        for variant in ("trapmid", "trapmid_fast"):
            add_ratio(timings, at_setting(variant, precision, mode),
                      at_setting("plain", precision, mode))
    add_setting_ratios(timings, FLAGS.variants)
    return timings


def time_attack_side(workload, results):
    """Statistics of a prior or attack workload at each precision and compile mode, with the
    ratios to the first precision and mode; with --phases, adds its phases to
    `results["attack_phases"]`."""
    is_attack = workload in ATTACKS
    name = ATTACKS[workload]["attack"] if is_attack else PRIORS[workload]["prior"]
    timings = {}
    for precision, mode in settings():
        use_precision(precision)
        jit_compile = COMPILE_MODES[mode]
        if is_attack:
            timings[at_setting(name, precision, mode)] = summarize_run(
                jit_compile, "s", time_attack, workload, jit_compile
            )
        else:
            timings[at_setting(name, precision, mode)] = summarize_run(
                jit_compile, "ms", time_prior, workload, jit_compile
            )
        if FLAGS.phases and name != "mi_face":
            phases = attack_phases(workload) if is_attack else prior_phases(workload)
            results.setdefault("attack_phases", {})[at_setting(workload, precision, mode)] = (
                time_calls(phases, jit_compile)
            )
    add_setting_ratios(timings, [name])
    return timings


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    check_flags()
    results = {"environment": environment(), "workloads": {}}
    for workload in FLAGS.workloads:
        if workload in ATTACKS or workload in PRIORS:
            timings = time_attack_side(workload, results)
        else:
            timings = time_training(workload)
            if FLAGS.phases:
                for precision, mode in settings():
                    use_precision(precision)
                    results.setdefault("trapmid_phases", {})[
                        at_setting(workload, precision, mode)
                    ] = time_phases(workload, COMPILE_MODES[mode])
        results["workloads"][workload] = timings
        print(workload, json.dumps(timings), flush=True)
    if FLAGS.out:
        write_json(FLAGS.out, results)
    phases = {**results.get("trapmid_phases", {}), **results.get("attack_phases", {})}
    print(format_table({**results["workloads"], **{f"{w} phases": p for w, p in phases.items()}}))


RATIO_NAMES = {"trapmid_over_plain": "Trap-MID / plain",
               "trapmid_fast_over_plain": "Trap-MID fast / plain"}


def unit_label(workload, unit):
    """The table's unit of a row of `workload` ("P1", "A1 phases", "W3@mixed_bfloat16
    phases", ...) timed in `unit`."""
    if unit == "s":
        return "s/100 iterations"
    name, _, phases = workload.partition(" ")
    name = name.partition("@")[0]
    if name in PRIORS and not phases:
        return "ms/iteration"
    return "ms/call" if phases and name not in WORKLOADS else "ms/step"


def format_table(workloads):
    """Formats the timings as a Markdown table (ms per training step or call, ms per prior
    iteration, or s per 100 attack iterations; or the error of a failed XLA compilation)."""
    lines = ["| workload | variant | median | min | max | unit |", "|---|---|---|---|---|---|"]
    for workload, timings in workloads.items():
        for variant, stats in timings.items():
            if isinstance(stats, dict) and "failed" in stats:
                lines.append(f"| {workload} | {variant} | failed | | | {stats['failed']} |")
            elif isinstance(stats, dict):
                unit = "ms" if "median_ms" in stats else "s"
                label = unit_label(workload, unit)
                lines.append(
                    f"| {workload} | {variant} | {stats[f'median_{unit}']} | "
                    f"{stats[f'min_{unit}']} | {stats[f'max_{unit}']} | {label} |"
                )
        for key, ratio in timings.items():
            if not isinstance(ratio, dict):
                name = RATIO_NAMES.get(key, key.replace("_over_", " / "))
                lines.append(f"| {workload} | {name} | {ratio} | | | ratio of medians |")
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
