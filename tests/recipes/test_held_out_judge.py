"""The judges' references and the pipeline's held-out judge: their data, the judge's
architecture and its stage, by construction."""

import dataclasses
import io
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import trapmid_tf as tm
from trapmid_tf.experiments import judges, pipeline
from tests.recipes.test_fashion_mnist_folders import TEST_PER_CLASS, write_fashion_like_idx
from trapmid_tf.experiments.evaluation import (
    JudgeReferences, held_out_split, judge_references, private_arrays,
)
from trapmid_tf.experiments.progress import StageProgress
from trapmid_tf.experiments.target_stages import target_configs


def _rows(images):
    """Each image's bytes, to compare images as a set."""
    return [image.tobytes() for image in np.asarray(images, np.float32)]


def test_the_split_takes_a_fifth_of_each_class_for_testing():
    # 18 distinct 1x1 images: image i is i / 100; classes of 10, 5 and 3 images.
    labels = np.array([0] * 10 + [1] * 5 + [2] * 3, np.int32)
    images = (np.arange(18, dtype=np.float32) / 100).reshape(18, 1, 1, 1)
    references = JudgeReferences(images, labels, "what they are")
    train, test, classes, description = held_out_split(references, seed=3)
    train_images, train_labels = private_arrays(train)
    test_images, test_labels = private_arrays(test)
    # round(0.2 n) per class: round(2.0) = 2, round(1.0) = 1, round(0.6) = 1.
    np.testing.assert_array_equal(np.bincount(test_labels, minlength=3), [2, 1, 1])
    np.testing.assert_array_equal(np.bincount(train_labels, minlength=3), [8, 4, 2])
    # Disjoint, together every image once, each with its own label (i / 100 -> labels[i]).
    assert sorted(_rows(train_images) + _rows(test_images)) == sorted(_rows(images))
    for part_images, part_labels in ((train_images, train_labels), (test_images, test_labels)):
        indices = np.rint(part_images.ravel() * 100).astype(int)
        np.testing.assert_array_equal(labels[indices], part_labels)
    assert classes == 3
    assert description == dict(source="what they are", test_fraction=0.2, split_seed=3,
                               train_images=14, test_images=4)
    # The seed fixes the split.
    again, _, _, _ = held_out_split(references, seed=3)
    np.testing.assert_array_equal(private_arrays(again)[0], train_images)
    with pytest.raises(ValueError, match=r"`test_fraction` must be in \(0, 1\); received 1.0"):
        held_out_split(references, seed=3, test_fraction=1.0)


@pytest.mark.parametrize("public_split", ["samples", "classes"])
def test_the_judge_trains_on_no_image_a_target_trains_on(public_split):
    # A target loads its training images as train_target does (the run's split seed).
    (private_train, private_test), public = tm.data.load("digits", seed=0,
                                                         public_split=public_split)
    references = judge_references("digits", None, private_test)
    # The embedded digits have no image of classes 5-9 outside the public split.
    assert references.source == "private test split"
    assert references.description() == dict(references="private test split", images=180,
                                             classes=5)
    train, test, classes, _ = held_out_split(references, seed=0)
    judge_images = _rows(private_arrays(train)[0]) + _rows(private_arrays(test)[0])
    assert sorted(judge_images) == sorted(_rows(private_arrays(private_test)[0]))
    assert not set(judge_images) & set(_rows(private_arrays(private_train)[0]))
    # Nor one of the attacker's public images.
    assert not set(judge_images) & set(_rows(np.stack(list(public.as_numpy_iterator()))))
    assert classes == 5  # the private classes


@pytest.mark.parametrize("public_split", ["samples", "classes"])
def test_fashion_mnist_references_add_the_test_files_other_classes(tmp_path, public_split):
    data_dir = str(tmp_path / "idx")
    _, _, test_images, test_labels = write_fashion_like_idx(data_dir)
    (private_train, private_test), public = tm.data.load(
        "fashion_mnist", data_dir, public_split=public_split)
    references = judge_references("fashion_mnist", data_dir, private_test)
    # Every test-file image once: classes 0-4 (the private test split) first, then 5-9, each
    # with its own label (an image of class k has pixels around 25k + 12, so its mean tells
    # its class: levels 25 apart, noise at most 10).
    assert len(references.labels) == 10 * TEST_PER_CLASS
    np.testing.assert_array_equal(np.bincount(references.labels), [TEST_PER_CLASS] * 10)
    assert references.labels[:5 * TEST_PER_CLASS].max() < 5
    assert references.labels[5 * TEST_PER_CLASS:].min() == 5
    # The loader scales to [0, 1] and resizes 28 -> 32 (bilinear keeps a flat image's level).
    levels = np.rint((references.images.mean(axis=(1, 2, 3)) * 255 - 12) / 25).astype(int)
    np.testing.assert_array_equal(levels, references.labels)
    np.testing.assert_array_equal(np.sort(test_labels), np.sort(references.labels))
    # None is a target's training image or one of the attacker's public images.
    rows = set(_rows(references.images))
    assert not rows & set(_rows(private_arrays(private_train)[0]))
    assert not rows & set(_rows(np.stack(list(public.as_numpy_iterator()))))
    assert references.description() == dict(
        references="private test split and the test file's images of classes 5-9, which the "
                   "attacker does not hold",
        images=10 * TEST_PER_CLASS, classes=10)


def test_the_architecture_is_neither_the_evaluation_models_nor_a_targets():
    def configs(*models):
        return {(f"d{i}", 0): {"model": model} for i, model in enumerate(models)}

    assert judges.held_out_architecture("digits", configs("small_cnn")) == "ir18"
    # The MNIST preset's targets are IR-18s.
    assert judges.held_out_architecture("fashion_mnist", configs("ir18")) == "vgg16_bn"
    assert judges.held_out_architecture("mnist", configs("ir18", "vgg16_bn")) is None
    assert judges.held_out_architecture("celeba", configs("vgg16_bn")) is None
    assert judges.DEFAULT_EVALUATION_ARCHITECTURE not in judges.HELD_OUT_ARCHITECTURES


def test_the_stage_is_reused_by_what_it_depends_on(monkeypatch, tmp_path):
    from trapmid_tf.experiments import evaluation

    trained = []

    def fake_training(train, test, num_classes, build, epochs, seed, verbose):
        trained.append(dict(train=int(train.cardinality()), test=int(test.cardinality()),
                            classes=num_classes, epochs=epochs, seed=seed))
        model = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(num_classes, name="logits")])
        return model, 0.5

    # Patched where `evaluation_model` looks it up (imported there at module level).
    monkeypatch.setattr(evaluation, "train_evaluation_model", fake_training)
    run = pipeline.PipelineRun(out=str(tmp_path / "run"), preset="tiny")
    settings = pipeline.pipeline_settings("tiny")
    configs = target_configs(run, settings)
    (_, private_test), _ = tm.data.load("digits", seed=0, public_split="samples")
    references = judge_references("digits", None, private_test)
    stream = io.StringIO()
    progress = StageProgress(4, stream)
    model, description = judges.held_out_judge(run, references, configs, settings, progress)
    # Digits: 36, 36, 35, 37, 36 test images per private class, round(0.2 n) = 7 of each
    # held out: 145 / 35.
    # The tiny preset's evaluation model trains 1 epoch, the judge 4 times as many.
    assert trained == [dict(train=145, test=35, classes=5, epochs=4, seed=0)]
    assert description == dict(architecture="ir18", accuracy=0.5, classes=5, data=dict(
        source="private test split", test_fraction=0.2, split_seed=0, train_images=145,
        test_images=35))
    stage = json.loads((tmp_path / "run" / "held_out_judge" / "stage.json").read_text())
    assert stage["architecture"] == "ir18" and stage["data"] == description["data"]
    # Run again: reused, nothing trained.
    _, again = judges.held_out_judge(run, references, configs, settings, progress)
    assert again == description and len(trained) == 1
    # Its epochs are part of its identity: another budget trains it again.
    longer = dataclasses.replace(settings, evaluation_epochs=2)
    judges.held_out_judge(run, references, configs, longer, progress)
    assert [record["epochs"] for record in trained] == [4, 8]
    # Where it does not apply, the stage is still entered (counted) and gives nothing.
    faces = pipeline.PipelineRun(out=str(tmp_path / "faces"), dataset="celeba")
    assert judges.held_out_judge(faces, references, configs, settings, progress) == (
        None, None)
    stages = [line.split(": ", 1)[1] for line in stream.getvalue().splitlines()]
    assert stages == ["held-out judge"] * 4
    assert not (tmp_path / "faces").exists()
