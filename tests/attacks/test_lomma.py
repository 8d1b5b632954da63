"""Tests for LOMMA: logit loss, feature regulariser, p_reg and the surrogate distiller."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.attacks.test_inversion import (
    IMAGE_SHAPE,
    Z_DIM,
    check_result,
    recover_latents,
    tiny_classifier,
    tiny_generator,
    tiny_head,
    to_numpy,
)
from trapmid_tf.attacks.lomma import (
    LOMMAAttack,
    SurrogateDistiller,
    compute_p_reg,
)
from tests.numpy_reference import softmax
from tests.tolerances import assert_float32_close

RNG = np.random.default_rng(0)
IMAGES = RNG.random((5, *IMAGE_SHAPE), dtype=np.float32)
LABELS = np.array([0, 2, 1, 1, 0], np.int32)
P_REG = RNG.standard_normal(6).astype(np.float32) * 0.3


def numpy_features_and_logits(classifier, images):
    """The tiny classifier by hand: tanh(x K1 + b1) -> (.) K2 + b2."""
    feature_kernel, feature_bias = classifier.get_layer("feature").get_weights()
    logit_kernel, logit_bias = classifier.get_layer("logits").get_weights()
    features = np.tanh(images.reshape(len(images), -1) @ feature_kernel + feature_bias)
    return features, features @ logit_kernel + logit_bias


def kl_divergence(teacher_logits, student_logits, temperature=1.0):
    """Batch mean of tau^2 KL(softmax(T / tau) || softmax(S / tau)), in numpy."""
    p = softmax(teacher_logits / temperature)
    q = softmax(student_logits / temperature)
    return temperature**2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))


@pytest.fixture(scope="module")
def networks():
    return tiny_generator(), tiny_head(1), tiny_head(3), tiny_classifier()


def test_identity_loss_matches_numpy(networks):
    generator, critic, _, target = networks
    surrogate = tiny_classifier(seed=40)
    attack = LOMMAAttack(
        "gmi", generator, critic, surrogates=[surrogate], p_reg=P_REG, reg_weight=0.7
    )
    features, target_logits = numpy_features_and_logits(target, IMAGES)
    _, surrogate_logits = numpy_features_and_logits(surrogate, IMAGES)
    rows = np.arange(len(LABELS))
    logit_term = -(target_logits[rows, LABELS] + surrogate_logits[rows, LABELS]) / 2.0
    regulariser = np.mean((features - P_REG) ** 2, axis=1)
    loss = to_numpy(attack.identity_loss(target)(IMAGES, LABELS))
    np.testing.assert_allclose(loss, logit_term + 0.7 * regulariser, rtol=1e-5, atol=1e-6)


def test_identity_loss_without_p_reg_is_the_target_logit_loss(networks):
    generator, critic, _, target = networks
    _, logits = numpy_features_and_logits(target, IMAGES)
    loss = LOMMAAttack("gmi", generator, critic).identity_loss(target)(IMAGES, LABELS)
    np.testing.assert_allclose(
        to_numpy(loss), -logits[np.arange(5), LABELS], rtol=1e-5, atol=1e-6
    )


def test_p_reg_is_the_mean_feature(networks):
    target = networks[3]
    expected = numpy_features_and_logits(target, IMAGES)[0].mean(axis=0)
    np.testing.assert_allclose(compute_p_reg(target, IMAGES, batch_size=2), expected, atol=1e-6)
    single_images = tf.data.Dataset.from_tensor_slices(IMAGES)
    np.testing.assert_allclose(
        compute_p_reg(target, single_images, batch_size=2), expected, atol=1e-6
    )
    np.testing.assert_allclose(
        compute_p_reg(target, single_images.batch(3)), expected, atol=1e-6
    )


def test_p_reg_rejects_a_dataset_of_pairs(networks):
    pairs = tf.data.Dataset.from_tensor_slices((IMAGES, LABELS))
    with pytest.raises(ValueError, match="public_images"):
        compute_p_reg(networks[3], pairs)


def test_gmi_variant_lowers_its_objective(networks):
    generator, critic, _, target = networks

    def run(iterations):
        attack = LOMMAAttack(
            "gmi", generator, critic, p_reg=P_REG, iterations=iterations, chunk_size=20
        )
        return attack.invert(target, [1, 2], per_class=2, seed=1, verbose=0)

    def objective(latents, labels):
        images = to_numpy(generator(latents))
        features, logits = numpy_features_and_logits(target, images)
        identity = -logits[np.arange(len(labels)), labels] + np.mean(
            (features - P_REG) ** 2, axis=1
        )
        return -to_numpy(critic(images))[:, 0].mean() + 100.0 * identity.mean()

    before, after = run(0), run(30)
    check_result(after, [1, 2], 2, (Z_DIM,))
    assert objective(after.latents, after.labels) < objective(before.latents, after.labels) - 1.0


def test_kedmi_variant_clips_latents(networks):
    generator, _, discriminator, target = networks
    attack = LOMMAAttack(
        "kedmi", generator, discriminator, surrogates=[tiny_classifier(seed=40)], iterations=10
    )
    result = attack.invert(target, [0, 1], per_class=4, verbose=0)
    check_result(result, [0, 1], 4, (2, Z_DIM))
    assert np.abs(recover_latents(generator, result.images)).max() <= 1.0 + 1e-3


def test_rejects_bad_arguments(networks):
    generator, critic, _, target = networks
    with pytest.raises(ValueError, match="base"):
        LOMMAAttack("plgmi", generator, critic)
    with pytest.raises(ValueError, match="p_reg"):
        LOMMAAttack("gmi", generator, critic, p_reg=np.zeros(5)).identity_loss(target)
    four_classes = tiny_classifier(num_classes=4)
    with pytest.raises(ValueError, match="surrogate"):
        LOMMAAttack("gmi", generator, critic, surrogates=[four_classes]).identity_loss(target)


def test_distiller_lowers_the_kl_and_its_loss_is_the_kl(networks):
    teacher = networks[3]
    student = tiny_classifier(seed=50)
    images = np.random.default_rng(1).random((64, *IMAGE_SHAPE), dtype=np.float32)

    def numpy_kl(temperature=1.0):
        return kl_divergence(to_numpy(teacher(images)), to_numpy(student(images)), temperature)

    distiller = SurrogateDistiller(student, teacher, temperature=2.0)
    distiller.compile()
    assert distiller.evaluate(images, batch_size=64, verbose=0)[0] == pytest.approx(
        numpy_kl(2.0), rel=1e-4
    )
    before = numpy_kl()
    distiller.fit(images, batch_size=16, epochs=5, verbose=0)
    assert numpy_kl() < 0.8 * before


def test_distiller_round_trips_through_keras_saving(networks, tmp_path):
    images = np.random.default_rng(2).random((32, *IMAGE_SHAPE), dtype=np.float32)
    distiller = SurrogateDistiller(tiny_classifier(seed=60), networks[3], temperature=3.0)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.5))
    distiller.fit(images, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, SurrogateDistiller)
    assert loaded.temperature == 3.0
    np.testing.assert_allclose(to_numpy(loaded(images)), to_numpy(distiller(images)), atol=1e-6)
    assert float(loaded.optimizer.learning_rate) == pytest.approx(0.05)
    # Training resumes identically from the saved optimiser state.
    distiller.fit(images, batch_size=16, epochs=1, verbose=0, shuffle=False)
    loaded.fit(images, batch_size=16, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(to_numpy(loaded(images)), to_numpy(distiller(images)), atol=1e-5)


def test_distiller_rejects_mismatched_classes(networks):
    with pytest.raises(ValueError, match="student"):
        SurrogateDistiller(tiny_classifier(num_classes=4), networks[3])


def test_distiller_two_replicas_make_the_one_device_step(two_replicas):
    """One SGD step on a global batch of 8, split 4 + 4 over two replicas, or on one device.

    The replicas' summed gradients must be the global batch's (each replica contributing
    `global_batch_mean` of its KL), and the logged loss the global batch's KL. Tolerance:
    each side rounds the updated weight (one ulp apart at most, 2u|w|) and sums the 8
    per-sample gradient terms in its own order (about 8u times their sizes, taken as the
    step's size); u is the float32 unit roundoff.
    """
    images = np.random.default_rng(3).random((8, *IMAGE_SHAPE), dtype=np.float32)
    teacher = tiny_classifier()

    def step(strategy):
        with strategy.scope():
            distiller = SurrogateDistiller(tiny_classifier(seed=70), teacher, temperature=2.0)
            distiller.compile(optimizer=keras.optimizers.SGD(1.0))
        initial = [w.numpy() for w in distiller.student.weights]
        teacher_logits, student_logits = to_numpy(teacher(images)), to_numpy(distiller(images))
        kl = kl_divergence(teacher_logits, student_logits, 2.0)
        loss = distiller.fit(images, batch_size=8, epochs=1, verbose=0).history["loss"][0]
        # The KL is a small difference of cross-entropy terms: its float32 rounding is that of
        # the terms (two log-softmaxes and a weighted sum over the classes, a mean over 8).
        terms = 4.0 * np.abs(softmax(teacher_logits / 2.0)) * (
            np.abs(np.log(softmax(teacher_logits / 2.0))) + np.abs(np.log(softmax(
                student_logits / 2.0))))
        classes = teacher_logits.shape[1]
        assert_float32_close(loss, kl, terms.sum(axis=1).max(), roundings=3 * classes + 16)
        return initial, [w.numpy() for w in distiller.student.weights]

    initial, one = step(tf.distribute.OneDeviceStrategy("/cpu:0"))
    _, two = step(two_replicas)
    for before, a, b in zip(initial, one, two):
        moved = np.abs(a - before).max()
        tolerance = 2.0**-24 * (2 * np.abs(a).max() + 8 * moved)
        np.testing.assert_allclose(b, a, rtol=0, atol=tolerance)
        assert moved > 1000 * tolerance  # a gradient off by a factor would show
