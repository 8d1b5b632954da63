"""Times Trap-MID training steps against plain training on the fixed benchmark workloads.

Example:
    python recipes/benchmark.py --workloads=W2,W3 --out=runs/benchmark.json

Workloads (shared/bench/WORKLOADS.md): W1 VGG16-BN 64x64x3 1000 classes, W2 IR-18 64x64x3
5 classes, W3 the digits small CNN 32x32x1 5 classes; batch 64, random inputs in memory.
"plain" is the classifier trained with cross-entropy (SGD 1e-2, momentum 0.9, weight decay
1e-4); "trapmid" is `TrapMIDModel` with the reference defaults (alpha 0.02, beta 0.2, trigger
step 0.01, discriminator and augmentation on) and the same optimiser. Each repetition is
one whole epoch of --steps steps after --warmup untimed epochs; the JSON holds per variant the
median/min/max milliseconds per step and the Trap-MID/plain ratio of medians, measured in the
same run.
"""

import json
import os
import platform
import statistics
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

import trapmid_tf as tm
from trapmid_tf.files import write_json

FLAGS = flags.FLAGS
flags.DEFINE_list("workloads", ["W2", "W3"], "Workloads to run: W1, W2, W3.")
flags.DEFINE_integer("repetitions", 5, "Timed epochs per variant (>= 5).")
flags.DEFINE_integer("steps", 8, "Training steps per timed epoch.")
flags.DEFINE_integer("warmup", 1, "Untimed epochs before timing (tracing, first calls).")
flags.DEFINE_list("variants", ["plain", "trapmid"], "Variants to time.")
flags.DEFINE_string("out", None, "JSON output file.")
flags.DEFINE_integer("seed", 0, "Seed of the random inputs and models.")

BATCH = 64
WORKLOADS = {
    "W1": dict(model="vgg16_bn", input_shape=(64, 64, 3), classes=1000),
    "W2": dict(model="ir18", input_shape=(64, 64, 3), classes=5),
    "W3": dict(model="small_cnn", input_shape=(32, 32, 1), classes=5),
}


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
    model = tm.TrapMIDModel(classifier, spec["classes"], seed=FLAGS.seed)
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


def summarize(milliseconds):
    return {
        "median_ms": round(statistics.median(milliseconds), 1),
        "min_ms": round(min(milliseconds), 1),
        "max_ms": round(max(milliseconds), 1),
        "repetitions": len(milliseconds),
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
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    unknown = sorted(set(FLAGS.workloads) - set(WORKLOADS))
    if unknown:
        raise app.UsageError(f"--workloads: unknown {unknown}; known: {sorted(WORKLOADS)}.")
    if sorted(set(FLAGS.variants) - {"plain", "trapmid"}):
        raise app.UsageError(f"--variants must be plain and/or trapmid; got {FLAGS.variants}.")
    if FLAGS.repetitions < 5:
        raise app.UsageError(f"--repetitions must be >= 5; got {FLAGS.repetitions}.")
    results = {"environment": environment(), "workloads": {}}
    for workload in FLAGS.workloads:
        timings = {v: summarize(time_variant(workload, v)) for v in FLAGS.variants}
        if {"plain", "trapmid"} <= set(timings):
            timings["trapmid_over_plain"] = round(
                timings["trapmid"]["median_ms"] / timings["plain"]["median_ms"], 2
            )
        results["workloads"][workload] = timings
        print(workload, json.dumps(timings), flush=True)
    if FLAGS.out:
        write_json(FLAGS.out, results)
    print(format_table(results["workloads"]))


def format_table(workloads):
    """Formats the per-workload timings as a Markdown table."""
    lines = ["| workload | variant | median ms/step | min | max |", "|---|---|---|---|---|"]
    for workload, timings in workloads.items():
        for variant, stats in timings.items():
            if isinstance(stats, dict):
                lines.append(
                    f"| {workload} | {variant} | {stats['median_ms']} | {stats['min_ms']} | "
                    f"{stats['max_ms']} |"
                )
        if "trapmid_over_plain" in timings:
            lines.append(f"| {workload} | Trap-MID / plain | {timings['trapmid_over_plain']} | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
