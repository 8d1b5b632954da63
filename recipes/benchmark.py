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

--phases also times each phase of the default Trap-MID step (discriminator step, trigger
gradient, classifier step, augmentation) and the whole and plain steps, each as its own
compiled function on one batch: where the step's time goes.
"""

import json
import os
import platform
import statistics
import time
from unittest import mock

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

import trapmid_tf as tm
from trapmid_tf.attacks import inversion
from trapmid_tf.defenses import FastTrapMIDModel
from trapmid_tf.files import write_json

FLAGS = flags.FLAGS
flags.DEFINE_list("workloads", ["W2", "W3"], "Workloads to run: W1, W2, W3, A1, A2.")
flags.DEFINE_integer("repetitions", 5, "Timed epochs (or attack chunks) per variant (>= 5).")
flags.DEFINE_integer("steps", 8, "Training steps per timed epoch.")
flags.DEFINE_integer("warmup", 1, "Untimed epochs or attack chunks (tracing, first calls).")
flags.DEFINE_integer("attack_iterations", 100, "Inversion iterations per timed attack chunk.")
flags.DEFINE_list("variants", ["plain", "trapmid"], "Training variants to time: plain, "
                  "trapmid, trapmid_fast.")
flags.DEFINE_bool("phases", False, "Also time each phase of the default Trap-MID step of the "
                  "training workloads, each as its own compiled function.")
flags.DEFINE_string("out", None, "JSON output file.")
flags.DEFINE_integer("seed", 0, "Seed of the random inputs and models.")

BATCH = 64
WORKLOADS = {
    "W1": dict(model="vgg16_bn", input_shape=(64, 64, 3), classes=1000),
    "W2": dict(model="ir18", input_shape=(64, 64, 3), classes=5),
    "W3": dict(model="small_cnn", input_shape=(32, 32, 1), classes=5),
}
ATTACKS = {
    "A1": dict(target="W1", attack="gmi", identities=60),
    "A2": dict(target="W3", attack="mi_face", identities=5),
}
VARIANTS = ("plain", "trapmid", "trapmid_fast")


def sgd():
    return keras.optimizers.SGD(1e-2, momentum=0.9, weight_decay=1e-4)


def build(workload, variant):
    """Builds and compiles the model of one workload variant."""
    spec = WORKLOADS[workload]
    classifier = getattr(tm.models, spec["model"])(spec["input_shape"], spec["classes"])
    if variant == "plain":
        classifier.compile(
            optimizer=sgd(), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        return classifier
    model_class = FastTrapMIDModel if variant == "trapmid_fast" else tm.TrapMIDModel
    model = model_class(classifier, spec["classes"], seed=FLAGS.seed)
    model.compile(optimizer=sgd())
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


def time_variant(workload, variant):
    """Returns milliseconds per training step of each timed epoch."""
    keras.utils.set_random_seed(FLAGS.seed)
    spec = WORKLOADS[workload]
    rng = np.random.default_rng(FLAGS.seed)
    x = rng.uniform(size=(BATCH, *spec["input_shape"])).astype("float32")
    y = rng.integers(0, spec["classes"], BATCH).astype("int32")
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    model = build(workload, variant)
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


def build_attack(workload):
    """Returns `(attack, target, classes)` of an attack workload (random-init networks)."""
    spec = ATTACKS[workload]
    target_spec = WORKLOADS[spec["target"]]
    shape = target_spec["input_shape"]
    target = getattr(tm.models, target_spec["model"])(shape, target_spec["classes"])
    iterations = FLAGS.attack_iterations * (FLAGS.warmup + FLAGS.repetitions)
    chunking = dict(chunk_size=FLAGS.attack_iterations)
    if spec["attack"] == "gmi":
        generator = tm.models.dcgan_generator(shape, z_dim=100)
        critic = tm.models.wgan_critic(shape)
        attack = tm.attacks.GMIAttack(generator, critic, iterations, **chunking)
    else:
        attack = tm.attacks.MIFaceAttack(iterations, **chunking)
    return attack, target, list(range(spec["identities"]))


def time_attack(workload):
    """Returns seconds per 100 iterations of each timed chunk of an attack workload."""
    keras.utils.set_random_seed(FLAGS.seed)
    attack, target, classes = build_attack(workload)
    timers = []

    def make_timer(*args, **kwargs):
        timers.append(ChunkTimer(*args, **kwargs))
        return timers[-1]

    with mock.patch.object(inversion.keras.utils, "Progbar", make_timer):
        attack.invert(target, classes, per_class=1, seed=FLAGS.seed, verbose=0)
    per_hundred = 100.0 / FLAGS.attack_iterations
    return [s * per_hundred for s in timers[0].seconds[FLAGS.warmup:]]


def summarize(values, unit="ms"):
    """Median, min and max of `values` in `unit` ("ms" per step or "s" per 100 iterations)."""
    digits = 1 if unit == "ms" else 3
    return {
        f"median_{unit}": round(statistics.median(values), digits),
        f"min_{unit}": round(min(values), digits),
        f"max_{unit}": round(max(values), digits),
        "repetitions": len(values),
    }


def environment():
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
        "xla": False,
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "batch": BATCH,
        "steps_per_repetition": FLAGS.steps,
        "attack_iterations_per_repetition": FLAGS.attack_iterations,
        "trapmid_fast_model": FastTrapMIDModel.__name__,
    }


def check_flags():
    known = sorted([*WORKLOADS, *ATTACKS])
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


def time_phases(workload):
    """Milliseconds per call of each phase of a default Trap-MID step, and of the plain step.

    Each phase runs as its own compiled function on one fixed batch, after the model is built
    by one step of `fit`; --warmup calls are untimed, then --repetitions are timed.
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
    timings = {}
    for name, phase in phases.items():
        compiled = tf.function(phase)
        milliseconds = []
        for _ in range(FLAGS.warmup + FLAGS.repetitions):
            start = time.perf_counter()
            tf.nest.map_structure(np.asarray, compiled())  # waits for the results
            milliseconds.append(1000.0 * (time.perf_counter() - start))
        timings[name] = summarize(milliseconds[FLAGS.warmup:])
    return timings


def time_training(workload):
    """Per-variant step statistics of a training workload, with the ratios to plain."""
    timings = {v: summarize(time_variant(workload, v)) for v in FLAGS.variants}
    if "plain" in timings:
        for variant in ("trapmid", "trapmid_fast"):
            if variant in timings:
                timings[f"{variant}_over_plain"] = round(
                    timings[variant]["median_ms"] / timings["plain"]["median_ms"], 2
                )
    return timings


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    check_flags()
    results = {"environment": environment(), "workloads": {}}
    for workload in FLAGS.workloads:
        if workload in ATTACKS:
            timings = {ATTACKS[workload]["attack"]: summarize(time_attack(workload), "s")}
        else:
            timings = time_training(workload)
            if FLAGS.phases:
                results.setdefault("trapmid_phases", {})[workload] = time_phases(workload)
        results["workloads"][workload] = timings
        print(workload, json.dumps(timings), flush=True)
    if FLAGS.out:
        write_json(FLAGS.out, results)
    phases = results.get("trapmid_phases", {})
    print(format_table({**results["workloads"], **{f"{w} phases": p for w, p in phases.items()}}))


RATIO_NAMES = {"trapmid_over_plain": "Trap-MID / plain",
               "trapmid_fast_over_plain": "Trap-MID fast / plain"}


def format_table(workloads):
    """Formats the timings as a Markdown table (ms per step, or s per 100 attack iterations)."""
    lines = ["| workload | variant | median | min | max | unit |", "|---|---|---|---|---|---|"]
    for workload, timings in workloads.items():
        for variant, stats in timings.items():
            if isinstance(stats, dict):
                unit = "ms" if "median_ms" in stats else "s"
                label = "ms/step" if unit == "ms" else "s/100 iterations"
                lines.append(
                    f"| {workload} | {variant} | {stats[f'median_{unit}']} | "
                    f"{stats[f'min_{unit}']} | {stats[f'max_{unit}']} | {label} |"
                )
        for key, name in RATIO_NAMES.items():
            if key in timings:
                lines.append(f"| {workload} | {name} | {timings[key]} | | | ratio of medians |")
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
