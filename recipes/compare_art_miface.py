"""Workload A2 side by side: adversarial-robustness-toolbox's `MIFace` against ours.

ART is not a dependency of trapmid_tf: run this in a scratch environment, e.g.

    python3 -m venv /tmp/artenv
    /tmp/artenv/bin/pip install tensorflow==2.21.0 adversarial-robustness-toolbox absl-py
    PYTHONPATH=.:recipes /tmp/artenv/bin/python recipes/compare_art_miface.py

Both invert the same random-init W3 small CNN for its 5 classes, one image each, in one
batch. ART runs with `threshold=1.0` and a window longer than the run, so it never stops
early. Each attack is timed in chunks of --attack_iterations after --warmup untimed ones (the
flags of recipes/benchmark.py), the two alternating --rounds times in one process so that both
see the same machine load. Prints the seconds per 100 iterations (median, min, max) and ART's
median over ours.
"""

import json
import time

from trapmid_tf.startup import import_tensorflow

import_tensorflow()  # first: TensorFlow's quiet start-up and oneDNN (trapmid_tf.startup)

import keras
import numpy as np
from absl import app, flags
from art.attacks.inference.model_inversion import MIFace
from art.estimators.classification import TensorFlowV2Classifier

import benchmark  # recipes/benchmark.py: the A2 workload and its timing

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 2, "Alternations of the two attacks.")
flags.DEFINE_float("learning_rate", 0.1, "ART MIFace's step size.")


def art_seconds_per_100():
    """Seconds per 100 iterations of ART's MIFace on the A2 workload, per timed chunk."""
    keras.utils.set_random_seed(FLAGS.seed)
    _, target, classes = benchmark.build_attack("A2")
    shape = benchmark.WORKLOADS["W3"]["input_shape"]
    classifier = TensorFlowV2Classifier(
        model=target, nb_classes=len(classes), input_shape=shape,
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0),
    )
    attack = MIFace(
        classifier, max_iter=FLAGS.attack_iterations,
        window_length=FLAGS.attack_iterations + 1, threshold=1.0,
        learning_rate=FLAGS.learning_rate, batch_size=len(classes), verbose=False,
    )
    seconds = []
    for _ in range(FLAGS.warmup + FLAGS.repetitions):
        start = time.perf_counter()
        attack.infer(None, np.array(classes))
        seconds.append(time.perf_counter() - start)
    return [s * 100.0 / FLAGS.attack_iterations for s in seconds[FLAGS.warmup:]]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.rounds < 1:
        raise app.UsageError(f"--rounds must be >= 1; got {FLAGS.rounds}.")
    timings = {"trapmid_tf": [], "art": []}
    for _ in range(FLAGS.rounds):
        timings["trapmid_tf"] += benchmark.time_attack("A2")
        timings["art"] += art_seconds_per_100()
    summary = {name: benchmark.summarize(values, "s") for name, values in timings.items()}
    summary["art_over_trapmid_tf"] = round(
        summary["art"]["median_s"] / summary["trapmid_tf"]["median_s"], 1
    )
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    app.run(main)
