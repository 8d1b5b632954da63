"""--evaluation_model=PATH on trapmid-evaluate and trapmid-attack: any saved classifier."""

import importlib
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import trapmid_tf as tm
from trapmid_tf.experiments.attacks import attack_accuracy

def load_recipe(name):
    """The console command module `trapmid_tf.cli.<name>`."""
    return importlib.import_module(f"trapmid_tf.cli.{name}")


def resizing_classifier(side, classes=3):
    """Resizes any input to 6x6 first (as facenet_eval resizes to 112), so it is size-free."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((side, side, 1))
    x = keras.layers.Resizing(6, 6, interpolation="bilinear")(inputs)
    x = keras.layers.Conv2D(2, 3)(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="logits")(x))


def test_a_classifier_that_resizes_inside_is_rebuilt_for_the_images_size(tmp_path):
    evaluate = load_recipe("evaluate")
    model = resizing_classifier(12)
    model.save(tmp_path / "judge.keras")
    same = evaluate.load_evaluation_classifier(str(tmp_path / "judge.keras"), (12, 12, 1))
    assert same.input_shape == (None, 12, 12, 1)
    rebuilt = evaluate.load_evaluation_classifier(str(tmp_path / "judge.keras"), (8, 8, 1))
    assert rebuilt.input_shape == (None, 8, 8, 1)
    images = np.random.default_rng(0).uniform(size=(4, 8, 8, 1)).astype("float32")
    # Independently: resize to 6x6 by hand, then the original model's layers after the resize.
    resized = tf.image.resize(images, (6, 6), method="bilinear")
    tail = keras.Sequential(model.layers[2:])
    np.testing.assert_allclose(rebuilt.predict(images, verbose=0),
                               tail.predict(resized, verbose=0), rtol=1e-5, atol=1e-6)


def test_a_size_bound_classifier_or_a_missing_file_is_named(tmp_path):
    evaluate = load_recipe("evaluate")
    inputs = keras.Input((6, 6, 1))
    outputs = keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(inputs))
    keras.Model(inputs, outputs).save(tmp_path / "bound.keras")
    with pytest.raises(ValueError, match=r"bound.keras' takes images of shape \(6, 6, 1\)"):
        evaluate.load_evaluation_classifier(str(tmp_path / "bound.keras"), (8, 8, 1))
    with pytest.raises(FileNotFoundError, match="nothing.keras' is not a saved classifier"):
        evaluate.load_evaluation_classifier(str(tmp_path / "nothing.keras"), (8, 8, 1))


def test_attack_accuracy_counts_top1_and_top5_hits():
    # A judge whose logits are the flattened 1x1x7 image: the scores are set by hand.
    inputs = keras.Input((1, 1, 7))
    judge = keras.Model(inputs, keras.layers.Flatten()(inputs))
    scores = np.array([[0, 1, 2, 3, 4, 5, 6],    # label 6: top-1
                       [6, 5, 4, 3, 2, 1, 0],    # label 4: rank 5 -> top-5 only
                       [6, 5, 4, 3, 2, 1, 0]],   # label 6: rank 7 -> neither
                      dtype="float32")
    stored = dict(images=scores.reshape(3, 1, 1, 7), labels=np.array([6, 4, 6]))
    assert attack_accuracy(judge, stored) == {"aa1": 1 / 3, "aa5": 2 / 3}


def run(recipe, *flags):
    return subprocess.run([sys.executable, "-m", f"trapmid_tf.cli.{recipe}", *flags],
                          capture_output=True, text=True, timeout=300)


def test_evaluate_and_attack_take_a_saved_classifier(tmp_path):
    (_, test), _ = tm.data.load("digits", public_split="samples")
    keras.utils.set_random_seed(1)
    target = tm.models.small_cnn((32, 32, 1), 5, width=4)
    target.save(tmp_path / "target.keras")
    judge = resizing_classifier(16, classes=5)  # another size: rebuilt for 32x32
    judge.save(tmp_path / "judge.keras")

    out = tmp_path / "attacks"
    result = run("attack", f"--target={tmp_path / 'target.keras'}", "--attacks=mi_face",
                 "--mi_face_iterations=2", "--num_classes=2", "--per_class=2",
                 f"--evaluation_model={tmp_path / 'judge.keras'}", f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out / "mi_face" / "reconstructions.npz") as stored:
        images, labels = stored["images"], stored["labels"]
    rebuilt = load_recipe("evaluate").load_evaluation_classifier(
        str(tmp_path / "judge.keras"), (32, 32, 1))
    logits = rebuilt.predict(images, verbose=0)
    ranks = (logits > logits[np.arange(len(labels)), labels][:, None]).sum(1)
    scores = json.loads((out / "mi_face" / "attack_accuracy.json").read_text())
    assert scores["aa1"] == pytest.approx(np.mean(ranks < 1))
    assert scores["aa5"] == pytest.approx(np.mean(ranks < 5))

    report = tmp_path / "evaluation.json"
    result = run("evaluate", f"--evaluation_model={tmp_path / 'judge.keras'}",
                 f"--target={tmp_path / 'target.keras'}", f"--attacks_dir={out}",
                 f"--out={report}")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(report.read_text())
    x, y = (np.stack(a) for a in zip(*test.as_numpy_iterator()))
    expected_accuracy = np.mean(rebuilt.predict(x, verbose=0).argmax(1) == y)
    assert results["evaluation_accuracy"] == pytest.approx(expected_accuracy)
    assert results["mi_face"]["aa1"] == pytest.approx(scores["aa1"])
