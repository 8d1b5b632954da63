"""TrapMIDCallback: best-epoch selection, checkpoints, TensorBoard events, NegLS schedule."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from trapmid_tf.callbacks import TrapMIDCallback
from trapmid_tf.defenses.negls import NegLSLoss
from trapmid_tf.defenses.trapmid import TrapMIDModel
from trapmid_tf.models.small_cnn import small_cnn

SHAPE, CLASSES = (16, 16, 1), 3


def data(seed, size=12):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(size, *SHAPE)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, rng.integers(0, CLASSES, size))).batch(6)


class ScriptedValidation(keras.callbacks.Callback):
    """Sets scripted validation accuracies before TrapMIDCallback reads them."""

    def __init__(self, clean, trapdoor):
        super().__init__()
        self.clean, self.trapdoor = clean, trapdoor

    def on_epoch_end(self, epoch, logs=None):
        logs["val_accuracy"] = self.clean[epoch]
        logs["val_trapdoor_accuracy"] = self.trapdoor[epoch]


def event_tags(folder):
    tags = {}
    for path in glob.glob(os.path.join(folder, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, set()).add(value.metadata.plugin_data.plugin_name)
    return tags


def test_best_epoch_checkpoints_and_tensorboard(tmp_path):
    loss = NegLSLoss(num_epochs=5, start_epoch=1, full_epoch=3)
    model = TrapMIDModel(small_cnn(SHAPE, CLASSES, width=4), CLASSES, alpha=0.1, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    saved = {}

    class RecordTriggers(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            saved[epoch] = model.triggers.numpy()

    callback = TrapMIDCallback(
        log_dir=str(tmp_path / "logs"),
        trigger_path=str(tmp_path / "best" / "triggers.npz"),
        best_classifier_path=str(tmp_path / "best" / "classifier.keras"),
        every=2,
    )
    # Best clean accuracy at epochs 1-3; of these, epoch 2 has the best trapdoor accuracy
    # (epoch 3 ties it and loses to the earlier epoch).
    scripted = ScriptedValidation([0.5, 0.8, 0.8, 0.8, 0.7], [0.1, 0.2, 0.6, 0.6, 0.9])
    model.fit(data(0), epochs=5, verbose=0, callbacks=[scripted, callback, RecordTriggers()])
    assert callback.best_epoch == 2
    with np.load(tmp_path / "best" / "triggers.npz") as best:
        np.testing.assert_array_equal(best["triggers"], saved[2])
    assert sorted(os.listdir(tmp_path / "best")) == [
        "classifier.keras", "triggers.npz", "triggers_epoch2.npz", "triggers_epoch4.npz"
    ]
    with np.load(tmp_path / "best" / "triggers_epoch4.npz") as fourth:
        np.testing.assert_array_equal(fourth["triggers"], saved[3])
    assert loss.epoch == 4 and float(loss.current_smoothing.numpy()) == pytest.approx(-0.05)
    tags = event_tags(str(tmp_path / "logs"))
    assert tags["triggers"] == {"images"}
    for name in ("loss", "accuracy", "trapdoor_accuracy", "discriminator_loss", "val_accuracy"):
        assert tags[name] == {"scalars"}


def test_validation_data_adds_trapdoor_accuracy_to_the_logs(tmp_path):
    model = TrapMIDModel(small_cnn(SHAPE, CLASSES, width=4), CLASSES, alpha=0.1, seed=0)
    model.compile()
    history = model.fit(data(0), epochs=1, verbose=0, callbacks=[TrapMIDCallback(data(1))])
    expected = model.evaluate(data(1), verbose=0, return_dict=True)
    assert history.history["val_accuracy"][0] == pytest.approx(expected["accuracy"])
    assert 0.0 <= history.history["val_trapdoor_accuracy"][0] <= 1.0


def test_plain_classifier_keeps_its_best_epoch(tmp_path):
    classifier = small_cnn(SHAPE, CLASSES, width=4)
    classifier.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       metrics=["accuracy"])
    path = tmp_path / "plain.keras"
    callback = TrapMIDCallback(data(1), best_classifier_path=str(path), trigger_path=str(tmp_path / "t.npz"))
    classifier.fit(data(0), epochs=2, verbose=0, callbacks=[callback])
    assert path.exists() and not (tmp_path / "t.npz").exists()
    assert callback.best_epoch in (0, 1)
