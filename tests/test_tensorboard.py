"""TensorBoard event files of `TensorBoardLogger` (alone and inside `TrapMIDCallback`): scalar
values, steps, trigger images.

tests/test_callbacks.py checks that the tags exist; here the events are decoded and compared
with the History and with the model's triggers.
"""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from trapmid_tf.callbacks import TensorBoardLogger, TrapMIDCallback
from trapmid_tf.defenses.trapmid import TrapMIDModel
from trapmid_tf.models.small_cnn import small_cnn

# Not square, so that a swapped width and height shows; 17 classes, one over the 16 images
# the callback logs; one-channel triggers on three-channel images.
HEIGHT, WIDTH, CHANNELS, CLASSES = 12, 16, 3, 17


def batches(seed, size=34):
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(size, HEIGHT, WIDTH, CHANNELS)).astype("float32")
    labels = rng.integers(0, CLASSES, size).astype("int32")
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(17)


def read_events(folder):
    """`{tag: {step: tensor proto}}` from every event file below `folder`."""
    events = {}
    paths = glob.glob(os.path.join(folder, "**", "events.out.tfevents.*"), recursive=True)
    assert paths, f"no event file under {folder}"
    for path in paths:
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                steps = events.setdefault(value.tag, {})
                assert event.step not in steps, f"{value.tag} logged twice at step {event.step}"
                steps[event.step] = value.tensor
    return events


class RecordTriggers(keras.callbacks.Callback):
    """Keeps a copy of the triggers at the end of each epoch (runs after TrapMIDCallback)."""

    def __init__(self):
        super().__init__()
        self.triggers = []

    def on_epoch_end(self, epoch, logs=None):
        self.triggers.append(self.model.triggers.numpy())


def test_scalars_and_trigger_images_match_the_training(tmp_path):
    classifier = small_cnn((HEIGHT, WIDTH, CHANNELS), CLASSES, width=4)
    model = TrapMIDModel(classifier, CLASSES, alpha=0.1, trigger_channels=1, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    recorder = RecordTriggers()
    history = model.fit(
        batches(0), epochs=2, verbose=0,
        callbacks=[TrapMIDCallback(batches(1), log_dir=str(tmp_path)), recorder],
    )
    events = read_events(str(tmp_path / "trapmid"))

    for name in ("loss", "accuracy", "trapdoor_accuracy", "discriminator_loss",
                 "val_accuracy", "val_trapdoor_accuracy"):
        logged = events[name]
        assert sorted(logged) == [0, 1], name  # one value per epoch, the step is the epoch
        for epoch, tensor in logged.items():
            value = tf.make_ndarray(tensor)
            assert value.shape == () and value.dtype == np.float32, name
            assert float(value) == pytest.approx(history.history[name][epoch], rel=1e-6), name

    images = events["triggers"]
    assert sorted(images) == [0, 1]
    for epoch, tensor in images.items():
        # An image summary is a string vector: width, height, then one PNG per image.
        width, height, *pngs = tf.make_ndarray(tensor)
        assert (int(width), int(height)) == (WIDTH, HEIGHT)
        assert len(pngs) == 16
        decoded = np.stack([tf.io.decode_png(png).numpy() for png in pngs])
        assert decoded.shape == (16, HEIGHT, WIDTH, 1) and decoded.dtype == np.uint8
        expected = recorder.triggers[epoch][:16]
        # float -> uint8 rounds to one of the two nearest levels of 1/255.
        np.testing.assert_array_less(np.abs(decoded / 255.0 - expected), 1.0 / 255 + 1e-6)
    # The triggers moved between the epochs, and the images show it.
    assert not np.array_equal(recorder.triggers[0], recorder.triggers[1])
    first, second = (tf.make_ndarray(images[epoch])[2:] for epoch in (0, 1))
    assert list(first) != list(second)


def test_plain_classifier_logs_scalars_and_no_triggers(tmp_path):
    classifier = small_cnn((HEIGHT, WIDTH, CHANNELS), CLASSES, width=4)
    classifier.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = classifier.fit(
        batches(0), epochs=1, verbose=0,
        callbacks=[TrapMIDCallback(batches(1), log_dir=str(tmp_path))],
    )
    events = read_events(str(tmp_path / "trapmid"))
    assert sorted(events) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    for name, logged in events.items():
        assert float(tf.make_ndarray(logged[0])) == pytest.approx(history.history[name][0])


def test_logger_writes_each_scalar_log_value_at_its_epoch(tmp_path):
    classifier = small_cnn((HEIGHT, WIDTH, CHANNELS), CLASSES, width=4)
    logger = TensorBoardLogger(tmp_path)
    logger.set_model(classifier)
    logger.on_train_begin()
    # Values exactly representable in float32; a non-scalar value is not logged.
    scripted = [{"loss": 2.5, "val_accuracy": 0.25, "confusion": np.eye(2)},
                {"loss": 1.75, "val_accuracy": 0.5, "confusion": np.eye(2)}]
    for epoch, logs in enumerate(scripted):
        logger.on_epoch_end(epoch, logs)
    logger.on_train_end()
    events = read_events(str(tmp_path / "trapmid"))
    assert sorted(events) == ["loss", "val_accuracy"]  # no triggers for a plain classifier
    for name, logged in events.items():
        assert {step: float(tf.make_ndarray(t)) for step, t in logged.items()} == {
            0: scripted[0][name], 1: scripted[1][name]
        }
    assert os.stat(tmp_path / "trapmid").st_mode & 0o777 == 0o700
    with pytest.raises(ValueError, match="`log_dir` must be a folder path; received None"):
        TensorBoardLogger(None)
