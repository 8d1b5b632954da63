"""recipes/train_target.py end to end on a tiny setting."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import trapmid_tf as tm

RECIPE = pathlib.Path(__file__).resolve().parents[2] / "recipes" / "train_target.py"


def load_recipe():
    """Imports the recipe once (its absl flags can be defined only once per process)."""
    if "train_target" not in sys.modules:
        spec = importlib.util.spec_from_file_location("train_target", RECIPE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["train_target"] = module
    return sys.modules["train_target"]


def config_for(recipe, defense, out, **changes):
    settings = dict(
        dataset="digits", data_dir=None, model=None, defense=defense, epochs=2,
        batch_size=None, optimizer=None, learning_rate=None, lr_decay_epoch=None, alpha=None, beta=None,
        trigger_step_size=None, discriminator=True, augment=True, optimize_triggers=True,
        negls_smoothing=-0.05, mid_beta=None, bido_lambda_xz=0.05, bido_lambda_yz=0.5, seed=0,
        strategy="default", out=str(out),
    )
    settings.update(changes)
    return recipe.resolve_config(settings)


def test_trapmid_negls_run_writes_consistent_artefacts(tmp_path):
    recipe = load_recipe()
    results = recipe.train(config_for(recipe, "trapmid_negls", tmp_path))
    assert set(results) == {"test_accuracy", "trapdoor_accuracy", "best_epoch", "epochs", "seconds"}
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored == results
    flags = json.loads((tmp_path / "flags.json").read_text())
    assert flags["defense"] == "trapmid_negls" and flags["model"] == "small_cnn"
    assert os.stat(tmp_path / "triggers.npz").st_mode & 0o777 == 0o600
    # The saved classifier is the best epoch's: re-evaluating it gives the reported accuracy.
    classifier = keras.models.load_model(tmp_path / "classifier.keras")
    (_, test), _ = tm.data.load("digits", seed=0)
    x, y = (np.stack(a) for a in zip(*test.as_numpy_iterator()))
    accuracy = np.mean(classifier.predict(x, verbose=0).argmax(1) == y)
    assert accuracy == pytest.approx(results["test_accuracy"], abs=1e-6)
    assert 0.0 <= results["trapdoor_accuracy"] <= 1.0
    with np.load(tmp_path / "triggers.npz") as stored_triggers:
        assert stored_triggers["triggers"].shape == (5, 32, 32, 1)


@pytest.mark.parametrize("defense", ["none", "mid", "bido"])
def test_runs_without_triggers_export_a_plain_classifier(tmp_path, defense):
    recipe = load_recipe()
    results = recipe.train(config_for(recipe, defense, tmp_path, epochs=1))
    assert results["trapdoor_accuracy"] is None
    assert not (tmp_path / "triggers.npz").exists()
    classifier = keras.models.load_model(tmp_path / "classifier.keras")
    assert type(classifier).__name__ == "Functional"  # a plain classifier, no wrapper
    (_, test), _ = tm.data.load("digits", seed=0)
    x, y = (np.stack(a) for a in zip(*test.as_numpy_iterator()))
    accuracy = np.mean(classifier.predict(x, verbose=0).argmax(1) == y)
    assert accuracy == pytest.approx(results["test_accuracy"], abs=1e-6)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--defense=none", "--nodiscriminator"], "only applies to the trapmid"),
        (["--epochs=0"], "--epochs must be >= 1"),
        (["--dataset=cifar"], "dataset"),
        (["--dataset=mnist"], "--data_dir, which is not set"),
    ],
)
def test_bad_flags_are_rejected_before_any_work(tmp_path, flags, message):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(RECIPE), f"--out={out}", *flags],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert not out.exists()
