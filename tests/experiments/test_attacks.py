"""`run_attacks`: the attacks of one target into one folder, each judged at once."""

import json
import pathlib

import keras
import numpy as np
import tensorflow as tf

from trapmid_tf.attacks import suite
from trapmid_tf.experiments.attacks import run_attacks
from trapmid_tf.models import small_cnn
from tests.tolerances import float32_atol

SHAPE = (8, 8, 1)
CLASSES = 3


def linear_judge(seed=0):
    """A judge whose logits are `flatten(images) @ kernel + bias`, with weights set by hand."""
    inputs = keras.Input(SHAPE)
    dense = keras.layers.Dense(CLASSES, name="logits")
    judge = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=(int(np.prod(SHAPE)), CLASSES)).astype(np.float32)
    bias = rng.normal(size=CLASSES).astype(np.float32)
    dense.set_weights([kernel, bias])
    return judge, kernel, bias


def test_each_attack_is_stored_with_its_priors_and_judged(tmp_path):
    keras.utils.set_random_seed(1)
    target = small_cnn(SHAPE, CLASSES, width=4, feature_dim=8)
    public = tf.data.Dataset.from_tensor_slices(
        np.random.default_rng(0).random((16, *SHAPE), dtype=np.float32))
    prior_dir = tmp_path / "gmi_prior"
    suite.save_prior("gmi", suite.train_gmi_prior(public, 1, n_critic=1, batch_size=8,
                                                  base_channels=4, verbose=0), str(prior_dir))
    judge, kernel, bias = linear_judge()
    settings = dict(target="target.keras", num_classes=2, per_class=2, seed=0, iterations=2,
                    plgmi_iterations=None, mi_face_iterations=2, kedmi_batch_size=8)
    out = tmp_path / "attacks"

    written = run_attacks(["gmi", "mi_face"], target, {"gmi": str(prior_dir)}, settings,
                          str(out), judge=judge, judge_path="judge.keras")

    assert json.loads((out / "flags.json").read_text()) == dict(
        settings, attacks=["gmi", "mi_face"])
    assert sorted(written) == ["gmi", "mi_face"]
    for name, priors in (("gmi", {"gmi": str(prior_dir)}), ("mi_face", {})):
        stage = json.loads((out / name / "stage.json").read_text())
        assert stage["priors"] == priors and stage["per_class"] == 2
        with np.load(out / name / "reconstructions.npz") as stored:
            images, labels = stored["images"], stored["labels"]
        np.testing.assert_array_equal(written[name]["reconstructions"]["images"], images)
        assert sorted(labels.tolist()) == [0, 0, 1, 1]  # 2 classes x 2 per class
        # The judge's logits by hand, in float64: top-1 is the label's logit being the largest;
        # top-5 covers all 3 classes. A logit sums 65 float32 terms of magnitude at most
        # max|weight| (images in [0, 1]), so float32 rounding moves it by at most
        # float32_atol(max|weight|, 65); a margin above twice that cannot flip a rank.
        logits = images.reshape(len(images), -1).astype(np.float64) @ kernel + bias
        ordered = np.sort(logits, axis=1)
        bound = float32_atol(max(np.abs(kernel).max(), np.abs(bias).max()), 65)
        assert np.min(ordered[:, -1] - ordered[:, -2]) > 2 * bound
        scores = json.loads((out / name / "attack_accuracy.json").read_text())
        assert scores == written[name]["attack_accuracy"]
        assert scores["aa1"] == np.mean(logits.argmax(1) == labels)  # k/4: exact
        assert scores["aa5"] == 1.0
        assert scores["evaluation_model"] == str(pathlib.Path.cwd() / "judge.keras")


def test_without_a_judge_nothing_is_scored(tmp_path):
    keras.utils.set_random_seed(2)
    target = small_cnn(SHAPE, CLASSES, width=4, feature_dim=8)
    settings = dict(target="target.keras", num_classes=1, per_class=1, seed=0, iterations=None,
                    plgmi_iterations=None, mi_face_iterations=1, kedmi_batch_size=8)

    written = run_attacks(["mi_face"], target, {}, settings, str(tmp_path))

    assert written["mi_face"]["attack_accuracy"] is None
    assert not (tmp_path / "mi_face" / "attack_accuracy.json").exists()
    assert written["mi_face"]["reconstructions"]["images"].shape == (1, *SHAPE)
