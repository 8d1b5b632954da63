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
import tensorflow as tf
from PIL import Image

import trapmid_tf as tm
from trapmid_tf.callbacks import NonFiniteLossError

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
    assert set(results) == {
        "test_accuracy", "trapdoor_accuracy", "best_epoch", "epochs", "seconds",
        "skipped_images", "skipped_files", "trapdoor_formed", "trapdoor_warning_threshold",
    }
    assert results["trapdoor_warning_threshold"] == 0.8  # TrapMIDCallback's default
    assert results["trapdoor_formed"] == (results["trapdoor_accuracy"] >= 0.8)
    assert results["skipped_images"] == 0 and results["skipped_files"] == []
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
    results = recipe.train(config_for(recipe, defense, tmp_path, epochs=1, require_trapdoor=True))
    assert results["trapdoor_accuracy"] is None
    assert results["trapdoor_formed"] is None and results["trapdoor_warning_threshold"] is None
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
        (["--dataset=mnist", "--data_dir={tmp}/missing"], "--data_dir '{tmp}/missing' is not an "),
        (["--data_dir={tmp}"], "--dataset=digits is embedded and reads no --data_dir"),
        (["--model=ir18", "--width=8"], "--width only applies to --model=small_cnn"),
        (["--width=0"], "--width must be >= 1"),
        (["--seed=-1"], "--seed must be >= 0"),
        (["--backup_dir={tmp}/run"], "--backup_dir must differ from --out"),
        (["--strategy=multi_worker"], "TF_CONFIG environment variable, which is not set"),
        (["--strategy=multi_worker", "TF_CONFIG=[]"], "TF_CONFIG must be JSON with a"),
        (["--strategy=multi_worker", "--batch_size=63",
          'TF_CONFIG={"cluster": {"worker": ["a:1", "b:2"]}, "task": {}}'],
         "--batch_size must be a multiple of the 2 workers"),
        (["--skip_unreadable"], "--skip_unreadable applies to image files"),
        (["--defense=none", "--min_trapdoor_accuracy=0.5"],
         "--min_trapdoor_accuracy only applies to the trapmid"),
        (["--min_trapdoor_accuracy=1.5"], "--min_trapdoor_accuracy must be in [0, 1]"),
        (["--trapdoor_warning_threshold=-0.5"],
         "--trapdoor_warning_threshold must be in [0, 1]; received -0.5"),
        (["--defense=none", "--fast_trapmid"], "--fast_trapmid only applies to the trapmid"),
        (["--fast_trapmid", "--strategy=mirrored"], "--fast_trapmid runs on one replica"),
        (["--bogus=1"], "Unknown command line flag 'bogus'"),
    ],
)
def test_bad_flags_are_rejected_before_any_work(tmp_path, flags, message):
    out = tmp_path / "run"
    environment = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    arguments = []
    for flag in flags:
        if flag.startswith("TF_CONFIG="):
            environment["TF_CONFIG"] = flag.partition("=")[2]
        else:
            arguments.append(flag.format(tmp=tmp_path))
    result = subprocess.run(
        [sys.executable, str(RECIPE), f"--out={out}", *arguments],
        capture_output=True, text=True, timeout=300, env=environment,
    )
    assert result.returncode != 0
    assert message.format(tmp=tmp_path) in result.stderr
    assert not out.exists()


def test_missing_dataset_file_is_named_and_nothing_is_written(tmp_path):
    recipe = load_recipe()
    config = config_for(recipe, "none", tmp_path / "run", dataset="mnist", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"'{tmp_path}/train-images-idx3-ubyte'"):
        recipe.train(config)
    assert not (tmp_path / "run").exists()


def test_fast_trapmid_flag_builds_the_fast_variant(tmp_path):
    recipe = load_recipe()
    interval = tm.defenses.trapmid.FAST_OPTIONS["discriminator_interval"]
    for fast, expected in ((False, (False, 1)), (True, (True, interval))):
        config = config_for(recipe, "trapmid", tmp_path, fast_trapmid=fast)
        model = recipe.build_model(config, (32, 32, 1), 5, steps_per_epoch=5)
        assert (model.shared_trigger_gradient, model.discriminator_interval) == expected


def test_unreadable_celeba_image_is_named_or_with_the_flag_skipped_and_counted(tmp_path):
    data = tmp_path / "celeba"
    (data / "img_align_celeba").mkdir(parents=True)
    face = np.full((218, 178, 3), 128, np.uint8)  # aligned CelebA size
    for index in range(1, 6):
        Image.fromarray(face).save(data / "img_align_celeba" / f"00000{index}.jpg")
    (data / "img_align_celeba" / "bad.jpg").write_bytes(b"not an image")
    lists = {
        "celeba_trainset.txt": ["000001.jpg 0", "bad.jpg 1", "000002.jpg 1", "000003.jpg 0"],
        "celeba_testset.txt": ["000004.jpg 1"],
        "celeba_ganset.txt": ["000005.jpg"],
    }
    for name, lines in lists.items():
        (data / name).write_text("\n".join(lines) + "\n")
    recipe = load_recipe()
    settings = dict(dataset="celeba", data_dir=str(data), model="small_cnn", width=4, epochs=1,
                    batch_size=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad.jpg"):
        recipe.train(config_for(recipe, "none", tmp_path / "strict", **settings))

    config = config_for(recipe, "none", tmp_path / "run", skip_unreadable=True, **settings)
    results = recipe.train(config)
    assert results["skipped_images"] == 1
    assert results["skipped_files"] == [str(data / "img_align_celeba" / "bad.jpg")]
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == results


def test_non_finite_loss_stops_the_run_naming_the_step(tmp_path):
    recipe = load_recipe()
    # A learning rate of 1e38 makes the first update overflow (the discriminator step runs
    # first in a Trap-MID step, so the first batch's losses are already NaN).
    config = config_for(recipe, "trapmid", tmp_path / "run", optimizer="sgd",
                        learning_rate=1e38, width=4, backup_dir=str(tmp_path / "backup"))
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, batch 1 .*: loss=nan, main_loss=nan"):
        recipe.train(config)
    assert sorted(os.listdir(tmp_path / "run")) == ["flags.json", "logs"]  # no artefact
    assert not (tmp_path / "backup").exists()


def test_require_trapdoor_exits_non_zero_after_writing_every_artefact(tmp_path):
    # alpha 1e-4 leaves the triggered images nearly clean and one epoch is far too short:
    # the trapdoor stays near chance (1/5).
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(RECIPE), f"--out={out}", "--epochs=1", "--width=4", "--alpha=1e-4",
         "--require_trapdoor"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    results = json.loads((out / "results.json").read_text())
    assert results["trapdoor_formed"] is False and results["trapdoor_warning_threshold"] == 0.8
    assert results["trapdoor_accuracy"] < 0.8
    assert {"flags.json", "classifier.keras", "triggers.npz"} <= set(os.listdir(out))
    line = (
        f"Trapdoor NOT formed: test trapdoor accuracy {results['trapdoor_accuracy']:.3f} < 0.8; "
        "no protection expected (see docs/trapdoor_formation.md)."
    )
    assert result.stdout.splitlines()[-1] == line
    assert result.stderr.splitlines()[-1].startswith(f"train_target: --require_trapdoor: {line}")
    assert "TrapdoorNotFormedWarning: The Trap-MID trapdoor did not form" in result.stderr


@pytest.mark.parametrize(
    "formed, accuracy, line",
    [
        (True, 0.99, "Trapdoor formed: test trapdoor accuracy 0.990 >= 0.8."),
        (False, 0.2, "Trapdoor NOT formed: test trapdoor accuracy 0.200 < 0.8; no protection "
                     "expected (see docs/trapdoor_formation.md)."),
        (None, None, "Trapdoor: none (this defense has no triggers)."),
    ],
)
def test_trapdoor_line_says_whether_the_trapdoor_formed(formed, accuracy, line):
    results = dict(trapdoor_formed=formed, trapdoor_accuracy=accuracy,
                   trapdoor_warning_threshold=None if formed is None else 0.8)
    assert load_recipe().trapdoor_line(results) == line
