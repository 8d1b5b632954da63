"""MIDModel: the KL term, code sampling, training on digits, export and saving."""

import json
import math
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from trapmid_tf.data.loaders import load
from trapmid_tf.defenses.mid import SCALE_OFFSET, MIDModel, gaussian_kl
from trapmid_tf.models.features import feature_extractor
from trapmid_tf.models.small_cnn import small_cnn
from tests.tolerances import assert_float32_close

DIGITS_SHAPE, DIGITS_CLASSES = (32, 32, 1), 5
SHAPE, CLASSES = (16, 16, 1), 4


def tiny_mid(code_dim=3, **kwargs):
    classifier = small_cnn(SHAPE, CLASSES, width=4, feature_dim=8, batch_norm=False)
    return MIDModel(classifier, code_dim=code_dim, **kwargs)


def images(count, seed=0):
    return np.random.default_rng(seed).uniform(size=(count, *SHAPE)).astype("float32")


def inverse_softplus(value):
    return np.log(np.expm1(value))


@pytest.fixture(scope="module")
def digits():
    (train, test), _ = load("digits", seed=0)
    x_test, _ = next(iter(test.batch(16)))
    return train.take(64).batch(16), x_test.numpy()


@pytest.fixture(scope="module")
def trained(digits):
    train, _ = digits
    keras.utils.set_random_seed(0)
    model = MIDModel(small_cnn(DIGITS_SHAPE, DIGITS_CLASSES, width=8), beta=0.01, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    initial = [w.numpy() for w in model.trainable_weights]
    history = model.fit(train, epochs=1, verbose=0).history
    return model, history, initial


def test_gaussian_kl_matches_the_closed_form():
    mean = np.array([[0.0, 1.0], [2.0, -1.0]])
    std = np.array([[1.0, 0.5], [0.1, 2.0]])
    # KL(N(m, s^2) || N(0, 1)) = log(1 / s) + (s^2 + m^2) / 2 - 1/2, per dimension.
    expected = [
        0.0 + (math.log(2.0) + (0.25 + 1.0) / 2 - 0.5),
        (math.log(10.0) + (0.01 + 4.0) / 2 - 0.5) + (math.log(0.5) + (4.0 + 1.0) / 2 - 0.5),
    ]
    np.testing.assert_allclose(gaussian_kl(mean, std), expected, rtol=1e-12)


def test_training_logs_the_mid_metrics(trained):
    model, history, initial = trained
    assert set(history) == {"loss", "main_loss", "kl", "accuracy"}
    loss, main_loss, kl = (history[name][0] for name in ("loss", "main_loss", "kl"))
    assert np.isfinite([loss, main_loss, kl]).all()
    # Per-step loss = CE + beta * KL, so the epoch means obey it too: 2 roundings per step to
    # form the loss, then one per step of each running sum and one division, for 3 means.
    steps = 4  # the fixture's 64 images in batches of 16
    assert_float32_close(loss, main_loss + 0.01 * kl, magnitude=abs(main_loss) + 0.01 * abs(kl),
                         roundings=3 * (2 + steps + 1))
    changed = [not np.array_equal(w.numpy(), v) for w, v in zip(model.trainable_weights, initial)]
    # Every variable but the wrapped classifier's unused "logits" Dense was trained.
    assert sum(changed) == len(changed) - 2


def test_logged_kl_is_the_batch_mean_of_the_code_kl():
    model = tiny_mid(beta=0.5, seed=1)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    x = images(8)
    y = np.arange(8, dtype="int32") % CLASSES
    mean, std = (t.numpy().astype("float64") for t in model.code_distribution(x, training=True))
    expected_kl = np.mean(np.sum(-np.log(std) + (std**2 + mean**2) / 2 - 0.5, axis=1))
    logs = model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False).history
    # The float32 KL: per code dimension a log, a square, a sum and a halving (~6 roundings of
    # terms up to the largest per-dimension term), summed over 3 dimensions, averaged over 8.
    terms = np.abs(-np.log(std) + (std**2 + mean**2) / 2 - 0.5)
    roundings = 6 + 3 + 8
    assert_float32_close(logs["kl"][0], expected_kl, terms.sum(axis=1).max(), roundings)
    # loss - main_loss cancels the cross-entropy: its rounding counts at the loss's magnitude.
    assert_float32_close(logs["loss"][0] - logs["main_loss"][0], 0.5 * expected_kl,
                         magnitude=abs(logs["loss"][0]) + terms.sum(axis=1).max(),
                         roundings=2 * roundings)


def test_training_samples_the_code_and_inference_uses_the_mean():
    model = tiny_mid(seed=0)
    x = images(6)
    first, second = model(x, training=True).numpy(), model(x, training=True).numpy()
    assert not np.allclose(first, second)
    mean, _ = model.code_distribution(x)
    kernel, bias = model.code_logits.get_weights()
    expected = mean.numpy() @ kernel + bias
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.predict(x, verbose=0), model(x).numpy())


def test_sampled_code_is_gaussian_with_the_head_mean_and_scale():
    model = tiny_mid(code_dim=3, seed=2)
    # Hand-set heads: the code is N(mu, diag(std^2)) whatever the image.
    mu, std = np.array([0.5, -1.0, 2.0]), np.array([0.5, 1.0, 2.0])
    model.code_mean.set_weights([np.zeros((8, 3)), mu])
    model.code_scale.set_weights([np.zeros((8, 3)), SCALE_OFFSET + inverse_softplus(std)])
    kernel, bias = (w.astype("float64") for w in model.code_logits.get_weights())
    samples = 4096
    x = np.repeat(images(1), samples, axis=0)
    logits = model(x, training=True).numpy().astype("float64")
    # Logits are linear in the code: mean mu W + b, covariance W^T diag(std^2) W.
    expected_cov = kernel.T @ np.diag(std**2) @ kernel
    standard_error = np.sqrt(np.diag(expected_cov) / samples)
    assert np.all(np.abs(logits.mean(axis=0) - (mu @ kernel + bias)) < 4 * standard_error)
    np.testing.assert_allclose(np.cov(logits.T), expected_cov, rtol=0.15, atol=0.05)


def test_export_writes_a_plain_classifier_with_the_inference_predictions(trained, digits, tmp_path):
    model, _, _ = trained
    _, x_test = digits
    path = tmp_path / "mid_classifier.keras"
    model.export_classifier(str(path))
    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json").decode()
    assert "trapmid_tf" not in config and json.loads(config)["class_name"] == "Functional"
    loaded = keras.models.load_model(path)
    expected = model.predict(x_test, verbose=0)
    # The export's batch norms are Keras's own, which round differently from the fused
    # kernel in the last bits (a few float32 roundings per layer).
    np.testing.assert_allclose(loaded.predict(x_test, verbose=0), expected, rtol=1e-5, atol=1e-6)
    # Its feature (the input of "logits") is the mean code.
    assert feature_extractor(loaded).output_shape == (None, model.code_dim)


def test_save_and_load_resume_training_identically(trained, digits, tmp_path):
    model, _, _ = trained
    train, x_test = digits
    path = tmp_path / "mid.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, MIDModel)
    assert (loaded.beta, loaded.code_dim, loaded.seed) == (0.01, 64, 0)
    assert isinstance(loaded.optimizer, keras.optimizers.Adam)
    expected = model.predict(x_test, verbose=0)
    np.testing.assert_array_equal(loaded.predict(x_test, verbose=0), expected)
    # The next step draws the same code noise and uses the same optimiser state.
    batch = train.take(1)
    model.fit(batch, epochs=1, verbose=0)
    loaded.fit(batch, epochs=1, verbose=0)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def train_one_step(strategy, seed=0):
    x = images(8, seed=3)
    y = np.arange(8, dtype="int32") % CLASSES
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = tiny_mid(seed=seed, beta=0.1)
        # std = 1, so the code noise moves the update well beyond the tolerance.
        kernel, bias = model.code_scale.get_weights()
        model.code_scale.set_weights([kernel, bias + SCALE_OFFSET + inverse_softplus(1.0)])
        model.compile(optimizer=keras.optimizers.SGD(0.5))
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0)
    return [w.numpy() for w in model.trainable_weights]


def test_two_replicas_slice_the_global_noise_and_match_one_device(two_replicas):
    one = train_one_step(tf.distribute.OneDeviceStrategy("/cpu:0"))
    two = train_one_step(two_replicas)
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Other noise gives a clearly different step, so the match above needs the same noise.
    other = train_one_step(tf.distribute.OneDeviceStrategy("/cpu:0"), seed=1)
    assert max(np.abs(a - b).max() for a, b in zip(one, other)) > 1e-3



def test_evaluate_loss_is_the_mean_over_images_when_the_last_batch_is_smaller():
    keras.utils.set_random_seed(0)
    model = tiny_mid()
    model.compile(optimizer="sgd")
    x = images(30, seed=4)
    y = np.arange(30) % CLASSES
    logits = model.predict(x, verbose=0).astype("float64")  # inference: the code's mean
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    per_image = -log_probabilities[np.arange(30), y]
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)  # 7, 7, 7, 7, 2
    results = model.evaluate(data, verbose=0, return_dict=True)
    # float32 logits and running sums over 30 images: relative error well below 1e-5.
    assert results["loss"] == pytest.approx(per_image.mean(), rel=1e-5)

def test_bad_arguments_are_rejected():
    classifier = small_cnn(SHAPE, CLASSES, width=4)
    for beta in (-0.1, "large", None):
        with pytest.raises(ValueError, match="beta"):
            MIDModel(classifier, beta=beta)
    with pytest.raises(ValueError, match="code_dim"):
        MIDModel(classifier, code_dim=0)
    with pytest.raises(ValueError, match="classifier"):
        MIDModel("vgg16_bn")
    inputs = keras.Input(SHAPE)
    probabilities = keras.layers.Softmax()(keras.layers.Flatten()(inputs))
    with pytest.raises(ValueError, match="logits"):
        MIDModel(keras.Model(inputs, probabilities))
    model = MIDModel(classifier)
    with pytest.raises(ValueError, match="metrics"):
        model.compile(metrics=["accuracy"])
    with pytest.raises(ValueError, match=".keras"):
        model.export_classifier("classifier.h5")
