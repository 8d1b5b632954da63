"""The evaluation stage: the judging classifier, the evaluator and the scores of stored attacks.

`trapmid-evaluate` is its command line (through `attack_scores.evaluate_attacks`);
`trapmid-pipeline` calls the same functions.
"""

import json
import os
import typing

import keras
import numpy as np
import tensorflow as tf
from absl import logging

import trapmid_tf as tm
from trapmid_tf import metrics
from trapmid_tf.data.digits import stratified_split
from trapmid_tf.files import atomic_path, build_or_reuse, write_json
from trapmid_tf.metrics.classifier_judge import ClassifierJudge
from trapmid_tf.metrics.evaluator import AttackEvaluator, TrapdoorDetector, train_evaluation_model
from trapmid_tf.metrics.pixel_judge import PixelJudge, pixel_judge_applies

EVALUATION_MODEL_FILE = "classifier.keras"
DETECTOR_CLEAN_IMAGES = 200  # clean private images behind the trapdoor signatures
# The judges' references (`judge_references`): the private test split and, for these
# datasets, the test file's images of the other classes, which the attacker's public split
# (drawn from the training file) does not hold: a judge that knows those classes can call a
# public look-alike what it is instead of the private class it resembles. The embedded digits
# have no such images (every image of classes 5-9 is public).
PRIVATE_TEST_SOURCE = "private test split"
OTHER_CLASS_DATASETS = ("mnist", "fashion_mnist")
# The held-out judge's data (`held_out_split`): of the references, this fraction of each class
# tests the judge and the rest trains it.
HELD_OUT_TEST_FRACTION = 0.2


class JudgeReferences(typing.NamedTuple):
    """Labelled images no target trains on, which the pixel and held-out judges rest on.

    Attributes:
        images: Float32 NHWC images in [0, 1].
        labels: Their int classes: the private classes' labels, and above them the other
            classes' (a judge's answer there is a miss for every attacked class).
        source: What they are, in words.
    """

    images: np.ndarray
    labels: np.ndarray
    source: str

    def joined(self, images, labels, source):
        """These references and `images` of the classes `labels` (above the private ones),
        described as `source`."""
        return JudgeReferences(np.concatenate([self.images, images]),
                               np.concatenate([self.labels, labels]).astype(self.labels.dtype),
                               source)

    def description(self):
        """The pixel judge's entry of results.json: references, images and classes."""
        return dict(references=self.source, images=len(self.labels),
                    classes=len(np.unique(self.labels)))


def judge_references(dataset, data_dir, private_test):
    """The private test split and, for `OTHER_CLASS_DATASETS`, the test file's images of the
    classes above the private ones (`trapmid_tf.data.load_evaluation_data`'s test split).

    Args:
        dataset: The dataset name.
        data_dir: Its folder (as `trapmid_tf.data.load` takes it).
        private_test: Unbatched dataset of `(image, label)`: the private test split.

    Returns:
        `JudgeReferences`.

    Raises:
        ValueError: If the other classes' images do not have the private test images' shape.
    """
    images, labels = private_arrays(private_test)
    private = JudgeReferences(images, labels, PRIVATE_TEST_SOURCE)
    if dataset not in OTHER_CLASS_DATASETS:
        return private
    _, test, _ = tm.data.load_evaluation_data(dataset, data_dir)
    test_images, test_labels = private_arrays(test)
    other = test_labels > labels.max()
    if test_images.shape[1:] != images.shape[1:]:
        raise ValueError(
            f"The test images of dataset {dataset!r} have shape {test_images.shape[1:]}; the "
            f"private test split's have {images.shape[1:]}: they must be the same."
        )
    classes = np.unique(test_labels[other])
    source = (f"{PRIVATE_TEST_SOURCE} and the test file's images of classes "
              f"{classes.min()}-{classes.max()}, which the attacker does not hold")
    return private.joined(test_images[other], test_labels[other], source)


def evaluation_architecture(name):
    """Returns the builder `(input_shape, num_classes) -> classifier` called `name`.

    "small_cnn_wide" is our small CNN at twice the target's width, a 256-d feature and no
    batch norm; the others are the zoo models.
    """
    if name == "small_cnn_wide":
        return lambda shape, classes: tm.models.small_cnn(
            shape, classes, width=64, feature_dim=256, batch_norm=False, name="evaluator"
        )
    return getattr(tm.models, name)


def evaluation_model(dataset, data_dir, settings, out, overwrite=False, verbose=0, data=None):
    """Trains (or reuses) the evaluation model in folder `out`.

    Args:
        dataset: Dataset name; see `trapmid_tf.data.load_evaluation_data`.
        data_dir: Its folder, or None for digits.
        settings: Dict with architecture, epochs, seed (and, with `data`, what identifies it).
        out: Folder for classifier.keras and results.json.
        overwrite: Retrain even if `out` holds a finished model with the same settings.
        verbose: `keras.Model.fit`'s verbosity.
        data: `(train, test, num_classes)` to train and test on instead of the dataset's
            evaluation data, or None.

    Returns:
        `(model, test_accuracy)`.
    """
    path = os.path.join(out, EVALUATION_MODEL_FILE)
    results_path = os.path.join(out, "results.json")

    def build():
        train, test, num_classes = data or tm.data.load_evaluation_data(
            dataset, data_dir, seed=settings["seed"]
        )
        model, accuracy = train_evaluation_model(
            train, test, num_classes, build=evaluation_architecture(settings["architecture"]),
            epochs=settings["epochs"], seed=settings["seed"], verbose=verbose,
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
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`evaluation_model` {path!r} is not a saved classifier file.")
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
            f"`evaluation_model` {path!r} takes images of shape {model.input_shape[1:]} and "
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
    correct = total = 0
    for images, labels in dataset.batch(256):
        predictions = np.argmax(model.predict_on_batch(images), axis=1)
        correct += int(np.sum(predictions == labels.numpy()))
        total += len(predictions)
    return correct / total


def private_arrays(dataset):
    """Returns `(images, labels)` numpy arrays of an unbatched `(image, label)` dataset."""
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
    scores = evaluator.evaluate(stored["images"], stored["labels"])
    initial_logits = evaluator.predict(stored["initial_images"])
    scores["chance_aa1"] = float(np.mean(np.argmax(initial_logits, 1) == stored["labels"]))
    if detector is not None:
        scores.update(detector.evaluate(stored["images"]))
    else:
        scores.update(trapdoor_similarity=None, trapdoor_detection=None)
    return scores


def make_evaluator(model, private_train, fid_weights=None, references=None,
                   held_out_judge=None):
    """The `AttackEvaluator` of `model` against the private training images.

    With `references` (`JudgeReferences`: images no target trained on) and images of at most
    `PIXEL_JUDGE_MAX_SIDE` pixels a side, the evaluator also scores with a `PixelJudge` over
    them (`evaluator.judges["pixel"]`); with `held_out_judge` (a classifier trained on images
    no target trained on, `held_out_split`), with a `ClassifierJudge` of it
    (`evaluator.judges["held_out"]`).
    """
    images, labels = private_arrays(private_train)
    fid_model = metrics.inception_feature_extractor(fid_weights) if fid_weights else None
    judges = {}
    if references is not None and pixel_judge_applies(images.shape[1:]):
        judges["pixel"] = PixelJudge(references.images, references.labels)
    if held_out_judge is not None:
        judges["held_out"] = ClassifierJudge(held_out_judge)
    return AttackEvaluator(model, images, labels, fid_feature_model=fid_model, judges=judges)


def held_out_split(references, seed, test_fraction=HELD_OUT_TEST_FRACTION):
    """The held-out judge's data: the judges' references, split class by class by `seed`.

    No target trains on them (targets train on the whole private training split, and the
    other classes' images are outside the attacker's public split too), so a judge trained
    on part of them shares no training image with any target.

    Args:
        references: `JudgeReferences` (`judge_references`).
        seed: Seed of the split (`trapmid_tf.data.digits.stratified_split`).
        test_fraction: Fraction of each class held out to test the judge on, in (0, 1).

    Returns:
        `(train, test, num_classes, description)`: unbatched datasets of `(image, label)`,
        the number of classes (the largest label + 1) and a dict saying what they are
        (source, test_fraction, split_seed and the train/test image counts).

    Raises:
        ValueError: If `test_fraction` is not in (0, 1).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1); received {test_fraction!r}.")
    images, labels = references.images, references.labels
    train, test = stratified_split(labels, test_fraction, seed)
    description = dict(source=references.source, test_fraction=test_fraction,
                       split_seed=seed, train_images=len(train), test_images=len(test))
    return (tf.data.Dataset.from_tensor_slices((images[train], labels[train])),
            tf.data.Dataset.from_tensor_slices((images[test], labels[test])),
            int(labels.max()) + 1, description)


def make_detector(target, trigger_path, private_train):
    """The `TrapdoorDetector` of a Trap-MID target from its trigger file."""
    images, _ = private_arrays(private_train.take(DETECTOR_CLEAN_IMAGES))
    return TrapdoorDetector.from_file(target, trigger_path, images)
