"""TrapMIDModel: saving and resuming, export, trapdoor labels, bad input."""

import os
import zipfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from trapmid_tf.defenses.trapmid import TrapMIDModel
from trapmid_tf.models.small_cnn import small_cnn
from tests.tolerances import assert_float32_close, largest_activation, sum_of_fan_ins

SHAPE, CLASSES = (16, 16, 1), 4


def make_model(seed=0, **kwargs):
    classifier = small_cnn(SHAPE, CLASSES, width=4)
    kwargs.setdefault("alpha", 0.1)
    return TrapMIDModel(classifier, CLASSES, seed=seed, **kwargs)


def batch(seed=0, size=8):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(size, *SHAPE)).astype("float32")
    return x, rng.integers(0, CLASSES, size).astype("int32")


def weights_of(model):
    return [v.numpy() for v in model.weights]


def test_save_load_resume_gives_the_same_next_step(tmp_path):
    keras.utils.set_random_seed(0)
    model = make_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x, y = batch()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "trap.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, TrapMIDModel)
    assert loaded.discriminator_optimizer is not None
    for a, b in zip(weights_of(model), weights_of(loaded)):
        np.testing.assert_array_equal(a, b)
    # The next step (augmentation and trapdoor labels drawn from the seed streams) matches.
    x2, y2 = batch(seed=1)
    model.fit(x2, y2, batch_size=8, epochs=1, verbose=0)
    loaded.fit(x2, y2, batch_size=8, epochs=1, verbose=0)
    for a, b in zip(weights_of(model), weights_of(loaded)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for opt in ("optimizer", "discriminator_optimizer", "trigger_optimizer"):
        assert int(getattr(loaded, opt).iterations) == 2


def test_export_classifier_holds_no_triggers_or_discriminator(tmp_path):
    model = make_model()
    model.compile()
    path = str(tmp_path / "classifier.keras")
    model.export_classifier(path)
    triggers = model.triggers.numpy()
    arrays = []
    with zipfile.ZipFile(path) as archive:
        archive.extract("model.weights.h5", tmp_path)
    with h5py.File(tmp_path / "model.weights.h5") as store:
        store.visititems(lambda _, obj: arrays.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
    assert len(arrays) == len(model.classifier.weights)
    # No stored array is, or contains any value of, the (random, continuous) triggers.
    assert not any(np.intersect1d(a.ravel(), triggers.ravel()).size for a in arrays)
    loaded = keras.models.load_model(path)
    x, _ = batch()
    # The export maps the fused batch norms and fast-gradient convs back to Keras layers:
    # the same function, rounded in another order.
    assert_float32_close(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0),
        magnitude=largest_activation(model.classifier, x),
        roundings=sum_of_fan_ins(model.classifier),
    )


def test_triggers_file_round_trip_is_owner_only(tmp_path):
    model = make_model(seed=1)
    path = str(tmp_path / "triggers.npz")
    model.save_triggers(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    other = make_model(seed=2)
    other.load_triggers(path)
    np.testing.assert_array_equal(other.triggers.numpy(), model.triggers.numpy())
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        other.load_triggers(str(tmp_path / "missing.npz"))


def test_sampled_trapdoor_labels_are_balanced_within_a_batch():
    model = make_model()
    for size in (8, 10, 13):
        labels = model._sample_trapdoor_labels(size).numpy()
        counts = np.bincount(labels, minlength=CLASSES)
        assert counts.sum() == size
        assert counts.max() - counts.min() <= 1


def test_evaluate_reports_clean_and_trapdoor_accuracy():
    model = make_model(optimize_triggers=False)
    model.compile()
    x, y = batch(size=16)
    results = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    logits = model.classifier.predict(x, verbose=0)
    assert results["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y))
    t = np.arange(16) % CLASSES
    trap = model.classifier.predict(0.9 * x + 0.1 * model.triggers.numpy()[t], verbose=0)
    results = model.evaluate(tf.data.Dataset.from_tensors((x, y, t)), verbose=0, return_dict=True)
    assert results["trapdoor_accuracy"] == pytest.approx(np.mean(trap.argmax(1) == t))



def test_evaluate_loss_is_the_mean_over_images_when_the_last_batch_is_smaller():
    # A linear classifier with small-integer weights on quarter-step pixels: float32 logits
    # are exact, so the only rounding is in the softmax and the running means (~1e-6).
    rng = np.random.default_rng(5)
    images = (rng.integers(0, 5, size=(30, *SHAPE)) / 4).astype("float32")
    labels = rng.integers(0, CLASSES, 30)
    classifier = keras.Sequential(
        [keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(CLASSES)]
    )
    kernel = rng.integers(-1, 2, size=(np.prod(SHAPE), CLASSES)).astype("float32")
    classifier.layers[-1].set_weights([kernel, np.zeros(CLASSES, "float32")])
    model = TrapMIDModel(classifier, CLASSES, alpha=0.5, seed=0)
    model.compile()
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(7)  # 7, 7, 7, 7, 2
    results = model.evaluate(data, verbose=0, return_dict=True)
    logits = images.reshape(30, -1).astype("float64") @ kernel
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    per_image = -log_probabilities[np.arange(30), labels]
    assert results["loss"] == pytest.approx(per_image.mean(), rel=1e-5)
    assert abs(per_image[:28].mean() - per_image[28:].mean()) > 1e-2  # the weighting matters

@pytest.mark.parametrize(
    "x, y, message",
    [
        (np.zeros((4, 16, 16), "float32"), np.zeros(4, "int32"), "images"),
        (np.zeros((4, 16, 16, 3), "float32"), np.zeros(4, "int32"), "images"),
        (np.zeros((4, 16, 16, 1), "uint8"), np.zeros(4, "int32"), "floating"),
        (np.zeros((4, 16, 16, 1), "float32"), np.zeros(4, "float32"), "labels"),
    ],
)
def test_bad_batches_are_rejected_before_training(x, y, message):
    model = make_model()
    model.compile()
    before = weights_of(model)
    with pytest.raises(ValueError, match=message):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    for a, b in zip(before, weights_of(model)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, y: (np.where(x > 0.5, np.nan, x), y), "NaN"),
        (lambda x, y: (x * 255.0, y), r"\[0, 1\]"),
        (lambda x, y: (x - 1.0, y), r"\[0, 1\]"),
        (lambda x, y: (x, y + CLASSES), "labels"),
        (lambda x, y: (x, y - CLASSES), "labels"),
    ],
)
def test_bad_values_stop_training_with_a_clear_message(change, message):
    model = make_model()
    model.compile()
    before = weights_of(model)
    x, y = change(*batch())
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        model.fit(x.astype("float32"), y.astype("int32"), batch_size=8, epochs=1, verbose=0)
    for a, b in zip(before, weights_of(model)):
        np.testing.assert_array_equal(a, b)


def test_bad_constructor_arguments():
    classifier = small_cnn(SHAPE, CLASSES, width=4)
    with pytest.raises(ValueError, match="num_classes"):
        TrapMIDModel(classifier, CLASSES + 1)
    with pytest.raises(ValueError, match="beta"):
        TrapMIDModel(classifier, CLASSES, beta=2.0)
    with pytest.raises(ValueError, match="discriminator"):
        TrapMIDModel(classifier, CLASSES, discriminator="big")
    with pytest.raises(ValueError, match="metrics"):
        TrapMIDModel(classifier, CLASSES).compile(metrics=["accuracy"])
