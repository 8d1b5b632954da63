"""trapmid-train (trapmid_tf.cli.train_target) end to end on a tiny setting."""

import importlib
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import trapmid_tf as tm
from trapmid_tf.callbacks import NonFiniteLossError
from trapmid_tf.experiments.target_config import resolve_config
from tests.cli_cases import command_outcomes

COMMAND = (sys.executable, "-m", "trapmid_tf.cli.train_target")


def load_recipe():
    """The library module behind `trapmid-train` (`trapmid_tf.experiments.targets`)."""
    return importlib.import_module("trapmid_tf.experiments.targets")


def config_for(recipe, defense, out, **changes):
    settings = dict(
        dataset="digits", data_dir=None, model=None, defense=defense, epochs=2,
        batch_size=None, optimizer=None, learning_rate=None, lr_decay_epoch=None, alpha=None, beta=None,
        trigger_step_size=None, discriminator=True, augment=True, optimize_triggers=True,
        negls_smoothing=-0.05, mid_beta=None, bido_lambda_xz=0.05, bido_lambda_yz=0.5, seed=0,
        strategy="default", out=str(out),
    )
    settings.update(changes)
    return resolve_config(settings)


def test_trapmid_negls_run_writes_consistent_artefacts(tmp_path):
    recipe = load_recipe()
    results = recipe.train(config_for(recipe, "trapmid_negls", tmp_path))
    assert set(results) == {
        "test_accuracy", "trapdoor_accuracy", "best_epoch", "epochs", "seconds",
        "skipped_images", "skipped_files", "trapdoor_formed", "trapdoor_warning_threshold",
        "alpha", "alpha_source", "alpha_reason",
    }
    assert (results["alpha"], results["alpha_source"], results["alpha_reason"]) == (
        0.1, "preset", None)  # the digits preset's
    assert results["trapdoor_warning_threshold"] == 0.9  # TrapMIDCallback's default
    assert results["trapdoor_formed"] == (results["trapdoor_accuracy"] >= 0.9)
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


BAD_FLAGS = [
    (["--defense=none", "--nodiscriminator"], "only applies to the trapmid"),
    (["--epochs=0"], "--epochs must be >= 1"),
    (["--dataset=cifar"], "dataset"),
    (["--dataset=mnist"], "--data_dir, which is not set"),
    (["--dataset=mnist", "--data_dir={tmp}/missing"], "--data_dir '{tmp}/missing' is not an "),
    (["--data_dir={tmp}"], "--dataset 'digits' is embedded and reads no --data_dir"),
    (["--model=ir18", "--width=8"], "--width only applies to --model 'small_cnn'"),
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
]


@pytest.fixture(scope="module")
def bad_flag_outcomes(tmp_path_factory):
    """Every `BAD_FLAGS` command line run in one interpreter, each with its own folder."""
    cases = []
    for index, (flags, _) in enumerate(BAD_FLAGS):
        tmp = tmp_path_factory.mktemp(f"case{index}")
        argv = [flag.format(tmp=tmp) for flag in flags if not flag.startswith("TF_CONFIG=")]
        environment = dict(flag.partition("=")[::2] for flag in flags
                           if flag.startswith("TF_CONFIG="))
        cases.append({"argv": [f"--out={tmp}/run", *argv], "environment": environment,
                      "paths": [f"{tmp}/run"], "tmp": str(tmp)})
    return cases, command_outcomes("trapmid_tf.cli.train_target", cases)


@pytest.mark.parametrize("index", range(len(BAD_FLAGS)), ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flags_are_rejected_before_any_work(bad_flag_outcomes, index):
    cases, outcomes = bad_flag_outcomes
    outcome = outcomes[index]
    assert not outcome["started"]
    assert BAD_FLAGS[index][1].format(tmp=cases[index]["tmp"]) in outcome["message"]
    assert outcome["written"] == []


def test_missing_dataset_file_is_named_and_nothing_is_written(tmp_path):
    recipe = load_recipe()
    config = config_for(recipe, "none", tmp_path / "run", dataset="mnist", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"'{tmp_path}/train-images-idx3-ubyte'"):
        recipe.train(config)
    assert not (tmp_path / "run").exists()


def test_fast_trapmid_flag_builds_the_fast_variant(tmp_path):
    recipe = load_recipe()
    for fast, expected in ((False, tm.TrapMIDModel), (True, tm.defenses.FastTrapMIDModel)):
        config = config_for(recipe, "trapmid", tmp_path, fast_trapmid=fast)
        model = recipe.build_model(config, (32, 32, 1), 5, steps_per_epoch=5)
        assert type(model) is expected
    assert model.discriminator_interval == 4  # the documented default


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
    # With fixed triggers the first batch's losses come before any update, so they are finite;
    # the first update, at a learning rate of 1e38, overflows the classifier, so the second
    # batch's losses are not (their running means over the epoch are inf or NaN).
    config = config_for(recipe, "trapmid", tmp_path / "run", optimizer="sgd",
                        learning_rate=1e38, width=4, optimize_triggers=False,
                        backup_dir=str(tmp_path / "backup"))
    stop = r"epoch 1, batch 2 \(counted from 1\): loss=(nan|inf), main_loss=(nan|inf)"
    with pytest.raises(NonFiniteLossError, match=stop):
        recipe.train(config)
    assert sorted(os.listdir(tmp_path / "run")) == ["flags.json", "logs"]  # no artefact
    assert not (tmp_path / "backup").exists()


def test_require_trapdoor_exits_non_zero_after_writing_every_artefact(tmp_path):
    # alpha 1e-4 leaves the triggered images nearly clean and one epoch is far too short:
    # the trapdoor stays near chance (1/5).
    out = tmp_path / "run"
    result = subprocess.run(
        [*COMMAND, f"--out={out}", "--epochs=1", "--width=4", "--alpha=1e-4",
         "--require_trapdoor"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    results = json.loads((out / "results.json").read_text())
    assert results["trapdoor_formed"] is False and results["trapdoor_warning_threshold"] == 0.9
    assert results["trapdoor_accuracy"] < 0.9
    assert {"flags.json", "classifier.keras", "triggers.npz"} <= set(os.listdir(out))
    line = (
        f"Trapdoor NOT formed: test trapdoor accuracy {results['trapdoor_accuracy']:.3f} < 0.9; "
        "no protection expected (see docs/trapdoor_formation.md)."
    )
    assert result.stdout.splitlines()[-1] == line
    assert result.stderr.splitlines()[-1].startswith(f"train_target: --require_trapdoor: {line}")
    assert "TrapdoorNotFormedWarning: The Trap-MID trapdoor did not form" in result.stderr


@pytest.mark.parametrize(
    "formed, accuracy, line",
    [
        (True, 0.99, "Trapdoor formed: test trapdoor accuracy 0.990 >= 0.9."),
        (False, 0.2, "Trapdoor NOT formed: test trapdoor accuracy 0.200 < 0.9; no protection "
                     "expected (see docs/trapdoor_formation.md)."),
        (None, None, "Trapdoor: none (this defense has no triggers)."),
    ],
)
def test_trapdoor_line_says_whether_the_trapdoor_formed(formed, accuracy, line):
    results = dict(trapdoor_formed=formed, trapdoor_accuracy=accuracy,
                   trapdoor_warning_threshold=None if formed is None else 0.9)
    assert load_recipe().trapdoor_line(results) == line


# The reference's face and MNIST configurations, copied from its files (ntuaislab/Trap-MID).
# config/celeba/classify_trap.json ("trapdoor" block and the "VGG16"/"FaceNet64"/"IR152" entries).
REFERENCE_TRAPDOOR = dict(alpha=0.02, beta=0.2, step_size=1e-2)
REFERENCE_CELEBA_TRAP = {
    "VGG16": dict(epochs=50, batch_size=64, lr=1e-2, momentum=0.9, weight_decay=1e-4),
    "FaceNet64": dict(epochs=50, batch_size=64, lr=1e-2, momentum=0.9, weight_decay=1e-4),
    "IR152": dict(epochs=40, batch_size=64, lr=1e-2, momentum=0.9, weight_decay=1e-4),
}
# config/celeba/classify_trap_negls.json (the same for all three entries).
REFERENCE_CELEBA_TRAP_NEGLS = dict(
    epochs=100, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=0, negls=-0.05,
    adjust_epochs=[75, 90], gamma=0.1,
)
# config/mnist/classify_trap.json and classify.json, entry "IR18".
REFERENCE_MNIST_TRAP = dict(epochs=10, batch_size=64, lr=1e-2, momentum=0.9, weight_decay=1e-4)
# config/mnist/classify_negls.json, entry "IR18".
REFERENCE_MNIST_NEGLS = dict(
    epochs=10, batch_size=64, lr=1e-2, momentum=0.9, weight_decay=1e-4, negls=-0.05,
    adjust_epochs=[7, 9], gamma=0.1,
)
# plgmi/baselines/config/classify.json, entry "FaceNet" (the evaluation model; engine.train_reg
# runs no scheduler), trained on 112x112 crops (plgmi/baselines/dataloader.py, re_size 112).
REFERENCE_EVALUATION_FACENET = dict(
    epochs=30, batch_size=64, lr=1e-2, momentum=0.9, weight_decay=1e-4, image_size=112,
)
# torch.optim.Adam's default epsilon (the reference never sets it).
TORCH_ADAM_EPSILON = 1e-8
REFERENCE_MODELS = {"VGG16": "vgg16_bn", "FaceNet64": "facenet64", "IR152": "ir152"}


def face_config(recipe, tmp_path, defense, model=None, dataset="celeba", **changes):
    return config_for(recipe, defense, tmp_path / "run", dataset=dataset, data_dir=str(tmp_path),
                      model=model, epochs=None, **changes)


def assert_optimizer(recipe, config, reference):
    """The built optimiser is the reference's: PyTorch SGD or Adam, and its rate schedule."""
    steps = 7
    optimizer = recipe.make_optimizer(config, steps_per_epoch=steps)
    if reference.get("optimizer", "sgd") == "sgd":
        assert isinstance(optimizer, tm.TorchSGD)
        assert optimizer.momentum == reference["momentum"]
        assert optimizer.coupled_weight_decay == reference["weight_decay"]
        assert optimizer.dampening == 0.0 and not optimizer.nesterov
    else:
        assert isinstance(optimizer, tm.TorchAdam)
        assert optimizer.epsilon == TORCH_ADAM_EPSILON and optimizer.weight_decay is None
        assert reference["weight_decay"] == 0
    # MultiStepLR stepped once per epoch: epoch e trains at lr * gamma^(drops at or before e).
    drops = reference.get("adjust_epochs", [])
    schedule = optimizer._learning_rate
    for epoch in range(reference["epochs"]):
        expected = reference["lr"] * reference.get("gamma", 0.1) ** sum(d <= epoch for d in drops)
        for step in (epoch * steps, epoch * steps + steps - 1):
            rate = float(schedule(step)) if callable(schedule) else float(schedule)
            assert rate == pytest.approx(expected, rel=1e-6), (epoch, step)


@pytest.mark.parametrize("defense", ["none", "trapmid", "mid", "bido"])
@pytest.mark.parametrize("reference_model", sorted(REFERENCE_CELEBA_TRAP))
def test_celeba_sgd_presets_are_the_reference_configuration(tmp_path, defense, reference_model):
    recipe = load_recipe()
    reference = REFERENCE_CELEBA_TRAP[reference_model]
    config = face_config(recipe, tmp_path, defense, REFERENCE_MODELS[reference_model])
    assert (config["epochs"], config["batch_size"]) == (reference["epochs"],
                                                        reference["batch_size"])
    assert (config["optimizer"], config["learning_rate"]) == ("sgd", reference["lr"])
    assert config["lr_decay_epoch"] == [] and config["flip"] is True
    assert config["image_size"] is None  # the dataset's 64
    assert (config["alpha"], config["beta"], config["trigger_step_size"]) == (
        REFERENCE_TRAPDOOR["alpha"], REFERENCE_TRAPDOOR["beta"], REFERENCE_TRAPDOOR["step_size"])
    assert_optimizer(recipe, config, reference)


@pytest.mark.parametrize("defense", ["negls", "trapmid_negls"])
@pytest.mark.parametrize("reference_model", sorted(REFERENCE_CELEBA_TRAP))
def test_celeba_negls_presets_are_the_reference_configuration(tmp_path, defense, reference_model):
    recipe = load_recipe()
    reference = REFERENCE_CELEBA_TRAP_NEGLS
    config = face_config(recipe, tmp_path, defense, REFERENCE_MODELS[reference_model])
    assert (config["epochs"], config["batch_size"]) == (reference["epochs"],
                                                        reference["batch_size"])
    assert (config["optimizer"], config["learning_rate"]) == ("adam", reference["lr"])
    assert config["lr_decay_epoch"] == reference["adjust_epochs"]
    assert config["negls_smoothing"] == reference["negls"] and config["flip"] is True
    assert_optimizer(recipe, config, reference)
    # The reference's CelebA NegLS schedule (loss.ls_scheduler): 0 before epoch 50, then
    # (epoch + 1 - 50) / (100 - 50) until epoch 75, then the full smoothing.
    loss = recipe.make_loss(config)
    for epoch, factor in [(49, 0.0), (50, 1 / 50), (74, 25 / 50), (75, 1.0), (99, 1.0)]:
        assert loss.smoothing_at(epoch) == pytest.approx(reference["negls"] * factor)


@pytest.mark.parametrize("defense, reference", [
    ("none", REFERENCE_MNIST_TRAP), ("trapmid", REFERENCE_MNIST_TRAP),
    ("negls", REFERENCE_MNIST_NEGLS), ("trapmid_negls", REFERENCE_MNIST_NEGLS),
])
def test_mnist_presets_are_the_reference_configuration(tmp_path, defense, reference):
    recipe = load_recipe()
    config = face_config(recipe, tmp_path, defense, dataset="mnist")
    assert config["model"] == "ir18" and config["flip"] is False
    assert (config["epochs"], config["batch_size"]) == (reference["epochs"],
                                                        reference["batch_size"])
    assert (config["optimizer"], config["learning_rate"]) == ("sgd", reference["lr"])
    assert config["lr_decay_epoch"] == reference.get("adjust_epochs", [])
    assert_optimizer(recipe, config, reference)


def test_evaluation_facenet_preset_is_the_reference_recipe(tmp_path):
    recipe = load_recipe()
    reference = REFERENCE_EVALUATION_FACENET
    config = face_config(recipe, tmp_path, "none", "facenet_eval")
    assert (config["epochs"], config["batch_size"], config["image_size"]) == (
        reference["epochs"], reference["batch_size"], reference["image_size"])
    assert (config["optimizer"], config["learning_rate"]) == ("sgd", reference["lr"])
    assert config["lr_decay_epoch"] == [] and config["flip"] is True
    assert_optimizer(recipe, config, reference)


def test_trapmid_discriminator_gets_a_copy_of_the_torch_sgd(tmp_path):
    recipe = load_recipe()
    config = config_for(recipe, "trapmid", tmp_path, optimizer="sgd", learning_rate=1e-2,
                        lr_decay_epoch=[1, 2], width=4)
    model = recipe.build_model(config, (32, 32, 1), 5, steps_per_epoch=3)
    for optimizer in (model.optimizer, model.discriminator_optimizer):
        assert isinstance(optimizer, tm.TorchSGD)
        assert optimizer.coupled_weight_decay == 1e-4 and optimizer.momentum == 0.9
        rates = [float(optimizer._learning_rate(step)) for step in (2, 3, 5, 6)]
        assert rates == pytest.approx([1e-2, 1e-3, 1e-3, 1e-4])
    assert model.optimizer is not model.discriminator_optimizer


def test_training_batches_flip_each_image_or_not_anew_each_epoch(tmp_path):
    recipe = load_recipe()
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(32, 4, 5, 1)).astype("float32")
    # Labels are the image indices, so each batch image can be matched with its source.
    train = tf.data.Dataset.from_tensor_slices((images, np.arange(32, dtype=np.int32)))
    config = dict(seed=3, epochs=2, batch_size=8, defense="none", flip=True)
    batches = list(recipe.train_batches(train, 32, config, first_epoch=0).as_numpy_iterator())
    flips = []
    for x, y in batches:
        for image, index in zip(x, y):
            mirrored = np.array_equal(image, images[index][:, ::-1])
            assert mirrored or np.array_equal(image, images[index])
            flips.append((int(index), mirrored))
    first, second = dict(flips[:32]), dict(flips[32:])
    assert 0 < sum(first.values()) < 32 and 0 < sum(second.values()) < 32
    assert first != second  # a new draw each epoch
    # Resuming at epoch 1 gives the same batches as the uninterrupted run's epoch 1.
    resumed = list(recipe.train_batches(train, 32, config, first_epoch=1).as_numpy_iterator())
    for (x, y), (x_ref, y_ref) in zip(resumed, batches[4:]):
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)
    unflipped = dict(config, flip=False)
    for x, y in recipe.train_batches(train, 32, unflipped, first_epoch=0).as_numpy_iterator():
        np.testing.assert_array_equal(x, images[y])


def write_tiny_celeba(data_dir, identities=2, train_per_identity=4):
    """A CelebA-like folder: aligned 178x218 PNGs (as .jpg names are only names) and splits."""
    rng = np.random.default_rng(0)
    image_dir = data_dir / "img_align_celeba"
    image_dir.mkdir(parents=True)
    lines = {"celeba_trainset.txt": [], "celeba_testset.txt": [], "celeba_ganset.txt": []}
    number = 0
    for split, per_identity in (("celeba_trainset.txt", train_per_identity),
                                ("celeba_testset.txt", 1), ("celeba_ganset.txt", 1)):
        for identity in range(identities):
            for _ in range(per_identity):
                number += 1
                name = f"{number:06d}.png"
                Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(
                    image_dir / name)
                lines[split].append(name if split == "celeba_ganset.txt" else f"{name} {identity}")
    for name, split_lines in lines.items():
        (data_dir / name).write_text("\n".join(split_lines) + "\n")


@pytest.mark.large  # the command end to end on a tiny CelebA (about 20 s)
def test_celeba_end_to_end_with_the_reference_preset(tmp_path):
    """train_target's CelebA path (flip, PyTorch SGD, Trap-MID) on a tiny CelebA-like folder."""
    write_tiny_celeba(tmp_path / "celeba")
    out = tmp_path / "run"
    result = subprocess.run(
        [*COMMAND, "--dataset=celeba", f"--data_dir={tmp_path / 'celeba'}",
         "--defense=trapmid", "--model=small_cnn", "--width=4", "--image_size=16", "--epochs=1",
         "--batch_size=4", f"--out={out}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    flags = json.loads((out / "flags.json").read_text())
    assert (flags["optimizer"], flags["flip"], flags["image_size"]) == ("sgd", True, 16)
    assert flags["lr_decay_epoch"] == [] and flags["batch_size"] == 4
    results = json.loads((out / "results.json").read_text())
    assert results["epochs"] == 1 and 0.0 <= results["test_accuracy"] <= 1.0
    with np.load(out / "triggers.npz") as stored:
        assert stored["triggers"].shape == (2, 16, 16, 3)
    classifier = keras.models.load_model(out / "classifier.keras")
    assert classifier.input_shape == (None, 16, 16, 3) and classifier.output_shape == (None, 2)


@pytest.mark.parametrize("changes, message", [
    (dict(lr_decay_epoch=[1, 5]), r"`lr_decay_epoch` must be ints in \[0, `epochs`=2\]; "
                                   r"received \[1, 5\]"),
    (dict(lr_decay_epoch=-1), r"`lr_decay_epoch` must be ints in \[0, `epochs`=2\]"),
    (dict(image_size=0), "`image_size` must be >= 1; received 0"),
])
def test_bad_schedule_or_image_size_is_named(tmp_path, changes, message):
    recipe = load_recipe()
    with pytest.raises(ValueError, match=message):
        config_for(recipe, "none", tmp_path, **changes)


def test_lr_decay_epoch_zero_means_constant_and_several_are_sorted(tmp_path):
    recipe = load_recipe()
    assert config_for(recipe, "none", tmp_path, lr_decay_epoch=0)["lr_decay_epoch"] == []
    assert config_for(recipe, "none", tmp_path, epochs=9,
                      lr_decay_epoch=[7, 3])["lr_decay_epoch"] == [3, 7]
    # digits: 3/4 of the epochs, as before.
    assert config_for(recipe, "none", tmp_path, epochs=8)["lr_decay_epoch"] == [6]


@pytest.mark.parametrize("defense, model_class, loss_class", [
    ("none", keras.Model, keras.losses.SparseCategoricalCrossentropy),
    ("trapmid", tm.TrapMIDModel, keras.losses.SparseCategoricalCrossentropy),
    ("negls", keras.Model, tm.NegLSLoss),
    ("trapmid_negls", tm.TrapMIDModel, tm.NegLSLoss),
    ("mid", tm.defenses.MIDModel, keras.losses.SparseCategoricalCrossentropy),
    ("bido", tm.defenses.BiDOModel, keras.losses.SparseCategoricalCrossentropy),
])
def test_each_defense_builds_its_model_and_loss(tmp_path, defense, model_class, loss_class):
    recipe = load_recipe()
    config = config_for(recipe, defense, tmp_path)
    model = recipe.build_model(config, (32, 32, 1), 5, steps_per_epoch=3)
    assert type(model) is model_class or (model_class is keras.Model and isinstance(
        model, keras.Model) and not hasattr(model, "export_classifier"))
    assert isinstance(recipe.make_loss(config), loss_class)


def test_an_unknown_defense_is_named_in_the_error():
    from trapmid_tf.experiments.defenses import get_defense

    expected = r"`defense` must be one of \['none', 'trapmid'.*received 'fortress'"
    with pytest.raises(ValueError, match=expected):
        get_defense("fortress")


def test_the_commands_flags_are_the_librarys_settings_and_defaults():
    from trapmid_tf.experiments.target_config import DEFAULTS

    command = importlib.import_module("trapmid_tf.cli.train_target")
    flags = command.FLAGS.get_flags_for_module(command)
    assert {flag.name: flag.default for flag in flags} == DEFAULTS


def test_unknown_settings_are_rejected_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown target settings \['epoch'\]"):
        resolve_config(dict(defense="none", out=str(tmp_path), epoch=3))


@pytest.mark.parametrize("dataset, expected", [
    ("digits", False), ("mnist", True), ("fashion_mnist", True), ("celeba", True),
])
def test_presets_copied_from_the_reference_use_pytorchs_running_variance(
    tmp_path, dataset, expected
):
    """The reference's presets train every batch norm, the discriminator's too, by PyTorch's
    moving-variance rule; the digits preset (ours) by Keras's."""
    recipe = load_recipe()
    changes = {} if dataset == "digits" else dict(data_dir=str(tmp_path))
    config = config_for(recipe, "trapmid", tmp_path / "run", dataset=dataset, **changes)
    assert config["torch_running_variance"] is expected
    model = recipe.build_model(config, (32, 32, 1), 5, steps_per_epoch=3)
    for network in (model.classifier, model.discriminator):
        rules = [
            layer.torch_running_variance
            for layer in network._flatten_layers()
            if isinstance(layer, tm.models.FusedBatchNorm)
        ]
        assert rules and set(rules) == {expected}
