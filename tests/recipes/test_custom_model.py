"""`trapmid-train --model=package.module:function` on a labelled image folder."""

import json
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import trapmid_tf as tm
from trapmid_tf.experiments import targets
from trapmid_tf.experiments.target_config import default_alpha, identity, resolve_config
from tests.tolerances import float32_atol

HELPERS = "tests.recipes.custom_models"
TINY = f"{HELPERS}:tiny_classifier"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_CLASSES = 3


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Three classes of ten random 8x8 RGB images."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for label in range(NUM_CLASSES):
        os.makedirs(root / f"class{label}")
        for i in range(10):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{label}" / f"{i}.png")
    return str(root)


def config_for(image_folder, out, defense, **changes):
    settings = dict(
        dataset="class_folder", data_dir=image_folder, model=TINY, defense=defense, epochs=1,
        batch_size=8, out=str(out),
    )
    return resolve_config(dict(settings, **changes))


# One epoch forms no trapdoor; the warning saying so is not under test here.
@pytest.mark.filterwarnings("ignore::trapmid_tf.callbacks.best_epoch.TrapdoorNotFormedWarning")
@pytest.mark.parametrize("defense", ["none", "trapmid"])
def test_own_model_trains_saves_and_reloads(tmp_path, image_folder, defense):
    config = config_for(image_folder, tmp_path, defense)
    results = targets.train(config)
    flags = json.loads((tmp_path / "flags.json").read_text())
    assert flags["model"] == TINY
    # No alpha given: 8x8x3 images (192 pixel values, fewer than the measured 32x32x1) take
    # 0.2 (docs/trapdoor_formation.md), recorded with where it came from.
    assert (flags["alpha"], flags["alpha_source"]) == (0.2, "measured default")
    classifier = keras.models.load_model(tmp_path / "classifier.keras")
    assert classifier.get_layer("feature").units == 8  # the helper's architecture
    # The reloaded classifier scores the reported accuracy on the held-out images.
    (_, test), _ = tm.data.load("class_folder", image_folder, seed=config["split_seed"])
    images, labels = (np.stack(a) for a in zip(*test.as_numpy_iterator()))
    accuracy = np.mean(classifier.predict(images, verbose=0).argmax(1) == labels)
    assert accuracy == pytest.approx(results["test_accuracy"], abs=1e-6)
    if defense == "trapmid":
        with np.load(tmp_path / "triggers.npz") as stored:
            assert stored["triggers"].shape == (NUM_CLASSES, 8, 8, 3)
            # Stored as float32: one rounding of 0.2.
            assert float(stored["alpha"]) == pytest.approx(0.2, abs=float32_atol(0.2, 1))
        assert (results["alpha"], results["alpha_source"]) == (0.2, "measured default")
        assert results["alpha_reason"] == default_alpha((8, 8, 3), NUM_CLASSES)[1]
    else:
        assert (results["alpha"], results["alpha_source"], results["alpha_reason"]) == (
            None, None, None)


@pytest.mark.filterwarnings("ignore::trapmid_tf.callbacks.best_epoch.TrapdoorNotFormedWarning")
@pytest.mark.parametrize("defense", ["negls", "trapmid_negls", "mid", "bido"])
def test_every_other_defense_trains_an_own_model(tmp_path, image_folder, defense):
    results = targets.train(config_for(image_folder, tmp_path, defense))
    assert 0.0 <= results["test_accuracy"] <= 1.0
    classifier = keras.models.load_model(tmp_path / "classifier.keras")
    assert classifier.output_shape == (None, NUM_CLASSES)


def test_bido_constrains_the_feature_of_an_own_model(tmp_path, image_folder):
    config = config_for(image_folder, tmp_path, "bido")
    model = targets.build_model(config, (8, 8, 3), NUM_CLASSES, steps_per_epoch=1)
    assert model.hidden_layers == ("feature",)


def test_the_stage_identity_records_the_model_spec(tmp_path, image_folder):
    own = identity(config_for(image_folder, tmp_path, "none"))
    zoo = identity(config_for(image_folder, tmp_path, "none", model="small_cnn"))
    assert own["model"] == TINY and zoo["model"] == "small_cnn"


@pytest.mark.parametrize(
    "model, message",
    [
        (HELPERS, f"received '{HELPERS}'"),
        ("tests.nowhere:build", "module 'tests.nowhere' cannot be imported"),
        (f"{HELPERS}:missing", f"module '{HELPERS}' has no attribute 'missing'"),
        (f"{HELPERS}:NOT_CALLABLE", "'NOT_CALLABLE' is a int, not callable"),
    ],
)
def test_bad_model_specs_are_named(tmp_path, image_folder, model, message):
    expected = r"`model` must be one of \['small_cnn', .*\] or 'package.module:function'"
    with pytest.raises(ValueError, match=expected) as error:
        config_for(image_folder, tmp_path, "none", model=model)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "function, message",
    [
        ("wrong_classes", "it returned one of input shape (None, 8, 8, 3) and output shape "
                          "(None, 4)."),
        ("compiled_classifier", "it returned a compiled one (the defense compiles it)."),
        ("not_a_model", "it returned a Dense."),
    ],
)
def test_models_that_are_not_classifiers_are_named(tmp_path, image_folder, function, message):
    config = config_for(image_folder, tmp_path, "none", model=f"{HELPERS}:{function}")
    expected = (
        f"`model` '{HELPERS}:{function}' must return an uncompiled keras.Model of input shape "
        "(None, 8, 8, 3) and output shape (None, 3) (logits); "
    )
    with pytest.raises(ValueError) as error:
        targets.build_model(config, (8, 8, 3), NUM_CLASSES, steps_per_epoch=1)
    assert str(error.value) == expected + message


@pytest.mark.parametrize("defense", ["mid", "bido"])
def test_mid_and_bido_say_what_an_own_model_needs(tmp_path, image_folder, defense):
    config = config_for(image_folder, tmp_path, defense, model=f"{HELPERS}:pooled_classifier")
    expected = (
        f"`defense` '{defense}' needs `model` '{HELPERS}:pooled_classifier' to be a functional "
        "keras.Model whose last layer (or a layer named 'logits') is the Dense"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        targets.build_model(config, (8, 8, 3), NUM_CLASSES, steps_per_epoch=1)


def test_split_settings_are_checked_before_any_work(tmp_path, image_folder):
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=f"`test_dir` '{missing}' is not an existing"):
        config_for(image_folder, tmp_path, "none", test_dir=str(missing))
    with pytest.raises(ValueError, match="`test_fraction` applies to `dataset` 'class_folder'"):
        resolve_config(dict(defense="none", out=str(tmp_path), test_fraction=0.5))


@pytest.mark.large  # a TensorFlow process of its own: about 20 s on a shared CPU
def test_the_command_trains_an_own_model_on_a_second_folder(tmp_path, image_folder):
    out = tmp_path / "run"
    shutil.copytree(image_folder, tmp_path / "test")
    result = subprocess.run(
        [sys.executable, "-m", "trapmid_tf.cli.train_target", "--dataset=class_folder",
         f"--data_dir={image_folder}", f"--test_dir={tmp_path / 'test'}", f"--model={TINY}",
         "--defense=none", "--epochs=1", "--batch_size=8", f"--out={out}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    flags = json.loads((out / "flags.json").read_text())
    assert flags["model"] == TINY and flags["test_dir"] == str(tmp_path / "test")
    assert json.loads((out / "results.json").read_text())["epochs"] == 1


def test_the_pipeline_refuses_a_folder_without_public_images(tmp_path, image_folder):
    from trapmid_tf.experiments import pipeline, target_stages

    run = pipeline.PipelineRun(out=str(tmp_path), dataset="class_folder", data_dir=image_folder)
    with pytest.raises(ValueError, match="`dataset` 'class_folder' has no public images"):
        target_stages.target_configs(run, {})
