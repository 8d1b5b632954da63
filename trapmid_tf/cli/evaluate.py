"""Scores stored attack reconstructions with an independent evaluation model.

Example:
    trapmid-evaluate --evaluation_model=runs/evaluator \\
        --target=runs/trapmid/classifier.keras --triggers=runs/trapmid/triggers.npz \\
        --attacks_dir=runs/trapmid/attacks --out=runs/trapmid/evaluation.json

--evaluation_model is either a saved Keras classifier file (any `.keras` model with a
final Dense "logits" layer, e.g. the face FaceNet trained by
`trapmid-train --dataset=celeba --defense=none --model=facenet_eval`, see
docs/reproducing_on_gpu.md), used as it is, or a folder, where an evaluation model (a
different architecture from the target, trained on all labelled classes of the dataset; see
`trapmid_tf.data.load_evaluation_data`) is trained when it holds none. A classifier saved for
another input size (facenet_eval trains on 112x112 crops) is rebuilt for the images' size
with the same weights, which works for models that resize inside (facenet_eval does). Per attack found in --attacks_dir (folders
written by trapmid-attack) the JSON (which also records the flags) holds aa1, aa5, knn,
fid, precision, recall, density, coverage, chance_aa1 (the evaluation model's hit rate on
the attack's un-optimised starting samples), for images of at most 32 pixels a side
pixel_aa1 (top-1 of the nearest image in pixel space among the private test split and, for
MNIST and Fashion-MNIST, the test file's images of classes 5-9:
`trapmid_tf.metrics.pixel_judge`, `trapmid_tf.experiments.evaluation.judge_references`) and,
with --triggers, trapdoor_similarity and trapdoor_detection.
"""

import dataclasses
import json
import os
import sys

from absl import app, flags

import trapmid_tf as tm
from trapmid_tf.cli import console
from trapmid_tf.experiments.attack_scores import EvaluationSettings, evaluate_attacks
from trapmid_tf.experiments.evaluation import load_evaluation_classifier
from trapmid_tf.experiments.priors import default_public_split

FLAGS = flags.FLAGS


def define_flags():
    """Defines this recipe's command-line flags (only when it runs as a script)."""
    flags.DEFINE_enum("dataset", "digits", ["digits", "mnist", "fashion_mnist", "celeba"],
                      "Dataset of the private data.")
    flags.DEFINE_string("data_dir", None, "Folder with the dataset files (not needed for digits).")
    flags.DEFINE_enum("public_split", None, ["classes", "samples"],
                      "Digit datasets' public split (default: samples for digits, else classes); "
                      "it fixes which images are private training images.")
    flags.DEFINE_string("evaluation_model", None,
                        "A saved Keras classifier (.keras file) used as the evaluation model, "
                        "or a folder where one is trained if it holds none.")
    flags.DEFINE_enum("evaluation_architecture", "small_cnn_wide", ["small_cnn_wide", "ir18",
                      "vgg16_bn", "facenet64"], "Architecture of a newly trained evaluation model.")
    flags.DEFINE_integer("evaluation_epochs", 10, "Epochs of a newly trained evaluation model.")
    flags.DEFINE_string("fid_weights", None,
                        "Local InceptionV3 no-top weights for FID/PRDC (default: the evaluation "
                        "model's features).")
    flags.DEFINE_string("target", None, "The attacked classifier (.keras).")
    flags.DEFINE_string("triggers", None, "The target's triggers.npz, for trapdoor similarity.")
    flags.DEFINE_string("attacks_dir", None, "Folder of trapmid-attack outputs.")
    flags.DEFINE_integer("seed", 0, "Seed of the dataset split and the evaluation model.")
    flags.DEFINE_string("out", None, "Output JSON file.")
    flags.DEFINE_bool("overwrite", False, "Retrain the evaluation model even if stored.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    for flag in ("evaluation_model", "target", "attacks_dir", "out"):
        if not FLAGS[flag].value:
            raise app.UsageError(f"--{flag} must be set.")
    for flag in ("target", "attacks_dir", "triggers", "fid_weights"):
        path = FLAGS[flag].value
        if path and not os.path.exists(path):
            raise app.UsageError(f"--{flag} {path!r} does not exist.")
    console.start()
    settings = EvaluationSettings(**{field.name: FLAGS[field.name].value
                                     for field in dataclasses.fields(EvaluationSettings)})
    private, _ = tm.data.load(
        settings.dataset, settings.data_dir, seed=settings.seed,
        public_split=default_public_split(settings.dataset, settings.public_split),
    )
    judge = None
    if os.path.isfile(settings.evaluation_model):
        try:
            judge = load_evaluation_classifier(settings.evaluation_model,
                                               private[0].element_spec[0].shape)
        except ValueError as error:
            raise app.UsageError(console.flag_message(str(error))) from error
    results = evaluate_attacks(settings, private, FLAGS.out, judge, FLAGS.overwrite,
                               console.fit_verbosity())
    print(json.dumps(results, indent=2))


def run():
    """The console command `trapmid-evaluate`."""
    define_flags()
    console.run_command(main, sys.modules[__name__])


if __name__ == "__main__":
    run()
