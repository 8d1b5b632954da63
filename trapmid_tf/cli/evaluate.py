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
the attack's un-optimised starting samples) and, with --triggers, trapdoor_similarity and
trapdoor_detection.
"""

import json
import os
import sys

from absl import app, flags, logging

from trapmid_tf.cli import console

FLAGS = flags.FLAGS

EVALUATION_MODEL_FILE = "classifier.keras"
FLAG_NAMES = ("dataset", "data_dir", "public_split", "evaluation_model",
              "evaluation_architecture", "evaluation_epochs", "fid_weights", "target", "triggers",
              "attacks_dir", "seed")
DETECTOR_CLEAN_IMAGES = 200  # clean private images behind the trapdoor signatures


def evaluation_architecture(name):
    """Returns the builder `(input_shape, num_classes) -> classifier` called `name`.

    "small_cnn_wide" is our small CNN at twice the target's width, a 256-d feature and no
    batch norm; the others are the zoo models.
    """
    import trapmid_tf as tm

    if name == "small_cnn_wide":
        return lambda shape, classes: tm.models.small_cnn(
            shape, classes, width=64, feature_dim=256, batch_norm=False, name="evaluator"
        )
    return getattr(tm.models, name)


def evaluation_model(dataset, data_dir, settings, out, overwrite=False):
    """Trains (or reuses) the evaluation model in folder `out`.

    Args:
        dataset: Dataset name; see `trapmid_tf.data.load_evaluation_data`.
        data_dir: Its folder, or None for digits.
        settings: Dict with architecture, epochs, seed.
        out: Folder for classifier.keras and results.json.
        overwrite: Retrain even if `out` holds a finished model with the same settings.

    Returns:
        `(model, test_accuracy)`.
    """
    import keras
    import trapmid_tf as tm
    from trapmid_tf.files import atomic_path, build_or_reuse, write_json
    from trapmid_tf.metrics.evaluator import train_evaluation_model

    path = os.path.join(out, EVALUATION_MODEL_FILE)
    results_path = os.path.join(out, "results.json")

    def build():
        train, test, num_classes = tm.data.load_evaluation_data(
            dataset, data_dir, seed=settings["seed"]
        )
        model, accuracy = train_evaluation_model(
            train, test, num_classes, build=evaluation_architecture(settings["architecture"]),
            epochs=settings["epochs"], seed=settings["seed"], verbose=console.fit_verbosity(),
        )
        with atomic_path(path) as temporary:
            model.save(temporary)
        write_json(results_path, {"test_accuracy": accuracy})
        return model, accuracy

    def load():
        with open(results_path, encoding="utf-8") as stream:
            accuracy = json.load(stream)["test_accuracy"]
        return keras.models.load_model(path), accuracy

    stage_settings = dict(settings, dataset=dataset, data_dir=data_dir)
    return build_or_reuse(out, stage_settings, build, load, overwrite, logging.info)


def load_evaluation_classifier(path, image_shape):
    """Loads a saved Keras classifier to judge images of `image_shape`.

    A model built for another input size is rebuilt from its configuration with an input of
    `image_shape` and given the same weights; this works when the model resizes its input
    inside (as `trapmid_tf.models.facenet_eval`), not when its layers depend on the size.

    Args:
        path: A `.keras` file.
        image_shape: `(height, width, channels)` of the images to judge.

    Returns:
        A `keras.Model` taking images of `image_shape`.

    Raises:
        FileNotFoundError: if `path` is not a file.
        ValueError: if the model cannot take images of `image_shape`.
    """
    import keras

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--evaluation_model {path!r} is not a saved classifier file.")
    model = keras.models.load_model(path, compile=False)
    image_shape = tuple(int(side) for side in image_shape)
    if tuple(model.input_shape[1:]) == image_shape:
        return model
    config = model.get_config()
    try:
        (input_layer,) = [layer for layer in config["layers"]
                          if layer["class_name"] == "InputLayer"]
        input_layer["config"]["batch_shape"] = [None, *image_shape]
        rebuilt = model.__class__.from_config(config)
        rebuilt.set_weights(model.get_weights())
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"--evaluation_model {path!r} takes images of shape {model.input_shape[1:]} and "
            f"cannot be rebuilt for the images' shape {image_shape} ({error}); give a model "
            "that takes them or resizes its input inside (as trapmid_tf.models.facenet_eval)."
        ) from error
    return rebuilt


def classifier_accuracy(model, dataset):
    """Top-1 accuracy of `model` on an unbatched `(image, label)` dataset.

    Args:
        model: Classifier images -> logits.
        dataset: Unbatched dataset of `(image, label)`.

    Returns:
        The accuracy, a float in [0, 1].
    """
    import numpy as np

    correct = total = 0
    for images, labels in dataset.batch(256):
        predictions = np.argmax(model.predict_on_batch(images), axis=1)
        correct += int(np.sum(predictions == labels.numpy()))
        total += len(predictions)
    return correct / total


def private_arrays(dataset):
    """Returns `(images, labels)` numpy arrays of an unbatched `(image, label)` dataset."""
    import numpy as np

    images, labels = zip(*dataset.as_numpy_iterator())
    return np.stack(images), np.asarray(labels, dtype=np.int32)


def score_attack(evaluator, stored, detector=None):
    """Scores one attack's stored reconstructions (as trapmid-attack writes them).

    Args:
        evaluator: `trapmid_tf.metrics.evaluator.AttackEvaluator`.
        stored: Dict with images, labels, initial_images.
        detector: `TrapdoorDetector` of the target, or None.

    Returns:
        The metrics dict (see the module docstring).
    """
    import numpy as np

    scores = evaluator.evaluate(stored["images"], stored["labels"])
    initial_logits = evaluator.predict(stored["initial_images"])
    scores["chance_aa1"] = float(np.mean(np.argmax(initial_logits, 1) == stored["labels"]))
    if detector is not None:
        scores.update(detector.evaluate(stored["images"]))
    else:
        scores.update(trapdoor_similarity=None, trapdoor_detection=None)
    return scores


def make_evaluator(model, private_train, fid_weights=None):
    """The `AttackEvaluator` of `model` against the private training images."""
    from trapmid_tf import metrics
    from trapmid_tf.metrics.evaluator import AttackEvaluator

    images, labels = private_arrays(private_train)
    fid_model = metrics.inception_feature_extractor(fid_weights) if fid_weights else None
    return AttackEvaluator(model, images, labels, fid_feature_model=fid_model)


def make_detector(target, trigger_path, private_train):
    """The `TrapdoorDetector` of a Trap-MID target from its trigger file."""
    from trapmid_tf.metrics.evaluator import TrapdoorDetector

    images, _ = private_arrays(private_train.take(DETECTOR_CLEAN_IMAGES))
    return TrapdoorDetector.from_file(target, trigger_path, images)


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
    import keras
    import numpy as np
    import trapmid_tf as tm
    from trapmid_tf.cli.train_prior import default_public_split
    from trapmid_tf.files import write_json

    console.start()
    (private_train, private_test), _ = tm.data.load(
        FLAGS.dataset, FLAGS.data_dir, seed=FLAGS.seed,
        public_split=default_public_split(FLAGS.dataset, FLAGS.public_split),
    )
    if os.path.isfile(FLAGS.evaluation_model):
        try:
            model = load_evaluation_classifier(
                FLAGS.evaluation_model, private_train.element_spec[0].shape
            )
        except ValueError as error:
            raise app.UsageError(str(error)) from error
        accuracy = classifier_accuracy(model, private_test)
    else:
        settings = dict(architecture=FLAGS.evaluation_architecture,
                        epochs=FLAGS.evaluation_epochs, seed=FLAGS.seed)
        model, accuracy = evaluation_model(
            FLAGS.dataset, FLAGS.data_dir, settings, FLAGS.evaluation_model, FLAGS.overwrite
        )
    evaluator = make_evaluator(model, private_train, FLAGS.fid_weights)
    target = keras.models.load_model(FLAGS.target)
    detector = make_detector(target, FLAGS.triggers, private_train) if FLAGS.triggers else None
    results = {
        "evaluation_accuracy": accuracy, "fid_features": evaluator.fid_features,
        "flags": {name: FLAGS[name].value for name in FLAG_NAMES},
    }
    for name in sorted(os.listdir(FLAGS.attacks_dir)):
        path = os.path.join(FLAGS.attacks_dir, name, "reconstructions.npz")
        if os.path.isfile(path):
            with np.load(path) as stored:
                results[name] = score_attack(evaluator, dict(stored), detector)
    write_json(FLAGS.out, results)
    print(json.dumps(results, indent=2))


def run():
    """The console command `trapmid-evaluate`."""
    define_flags()
    console.run_command(main, sys.modules[__name__])


if __name__ == "__main__":
    run()
