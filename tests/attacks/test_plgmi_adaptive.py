"""Tests for PLG-MI++ (the trapdoor-aware PLG-MI) against hand/NumPy computations."""

import numpy as np
import pytest
import tensorflow as tf

from tests.attacks.test_inversion import (
    IMAGE_SHAPE,
    NUM_CLASSES,
    check_result,
    tiny_classifier,
    tiny_conditional_generator,
    to_numpy,
)
from tests.attacks.test_plgmi import numpy_margin
from trapmid_tf.attacks.plgmi import PLGMIAttack
from trapmid_tf.attacks.plgmi_adaptive import (
    PLGMIAdaptiveAttack,
    defender_signatures,
    estimate_signatures,
)
from trapmid_tf.attacks.trapdoor_penalty import signature_cosine
from trapmid_tf.models.features import feature_extractor

CLASSES = [0, 2]
PER_CLASS = 3


def no_augment(images, seed_generator):
    """Identity augmentation: both views are the generated image itself."""
    return images


def numpy_cosine(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def networks():
    return tiny_conditional_generator(), tiny_classifier()


def test_signature_cosine_and_its_gradient_match_the_hand_formula():
    rng = np.random.default_rng(0)
    features, signatures = rng.normal(size=(2, 5, 6)).astype(np.float32)
    variable = tf.Variable(features)
    with tf.GradientTape() as tape:
        cosine = signature_cosine(variable, signatures)
        total = tf.reduce_sum(cosine)
    expected = numpy_cosine(features.astype(np.float64), signatures.astype(np.float64))
    np.testing.assert_allclose(to_numpy(cosine), expected, atol=1e-6)
    # d cos(f, s) / d f = s / (|f| |s|) - cos(f, s) f / |f|^2.
    f, s = features.astype(np.float64), signatures.astype(np.float64)
    norm_f = np.linalg.norm(f, axis=1, keepdims=True)
    norm_s = np.linalg.norm(s, axis=1, keepdims=True)
    hand_gradient = s / (norm_f * norm_s) - expected[:, None] * f / norm_f**2
    gradient = to_numpy(tape.gradient(total, variable))
    np.testing.assert_allclose(gradient, hand_gradient, atol=1e-5)
    # Descending the gradient turns each feature away from its signature.
    stepped = f - 0.1 * hand_gradient
    assert np.all(numpy_cosine(stepped, s) < expected)
    # The gradient is orthogonal to f (the cosine does not depend on |f|).
    np.testing.assert_allclose(np.sum(gradient * f, axis=1), 0.0, atol=1e-5)


def test_zero_signature_gives_zero_cosine():
    cosine = signature_cosine(np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(to_numpy(cosine), [0.0, 0.0])


def test_view_loss_is_margin_plus_weighted_cosine(networks):
    generator, target = networks
    rng = np.random.default_rng(1)
    signatures = rng.normal(size=(NUM_CLASSES, 6))
    attack = PLGMIAdaptiveAttack(generator, signatures, penalty_weight=2.5)
    views = rng.random((4, *IMAGE_SHAPE)).astype(np.float32)
    labels = np.array([0, 2, 1, 2], np.int32)
    value = to_numpy(attack.view_loss(target)(views, labels))
    features = feature_extractor(target).predict(views, verbose=0).astype(np.float64)
    logits = to_numpy(target(views)).astype(np.float64)
    expected = numpy_margin(logits, labels) + 2.5 * numpy_cosine(features, signatures[labels])
    assert value.shape == (4,)  # one loss per view, weighted by `PLGMIAttack`
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)


def public_images(size=8, seed=5):
    return np.random.default_rng(seed).random((size, *IMAGE_SHAPE)).astype(np.float32)


def test_estimated_signatures_are_class_means_minus_the_top_n_public_means(networks):
    _, target = networks
    rng = np.random.default_rng(2)
    images = rng.random((5, *IMAGE_SHAPE)).astype(np.float32)
    labels = np.array([2, 0, 2, 2, 0])
    public = public_images()
    extractor = feature_extractor(target)
    features = extractor.predict(images, verbose=0).astype(np.float64)
    public_features = extractor.predict(public, verbose=0).astype(np.float64)
    # Top-3 public images per class by softmax probability, from NumPy logits.
    logits = to_numpy(target(public)).astype(np.float64)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    top = np.argsort(-probabilities, axis=0, kind="stable")[:3].T
    signatures = estimate_signatures(target, images, labels, public, top_n=3)
    assert signatures.shape == (NUM_CLASSES, 6)
    # tanh features in [-1, 1], means of at most 5 of them: a few float32 roundings.
    for label, rows in ((0, [1, 4]), (2, [0, 2, 3])):
        expected = features[rows].mean(axis=0) - public_features[top[label]].mean(axis=0)
        np.testing.assert_allclose(signatures[label], expected, atol=1e-6)
    np.testing.assert_array_equal(signatures[1], np.zeros(6))  # class 1 not reconstructed
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 3\)"):
        estimate_signatures(target, images, labels + 1, public, top_n=3)


def test_defender_signatures_blend_every_trigger_into_the_clean_images(networks):
    _, target = networks
    rng = np.random.default_rng(3)
    clean = rng.random((4, *IMAGE_SHAPE)).astype(np.float32)
    triggers = rng.random((NUM_CLASSES, *IMAGE_SHAPE)).astype(np.float32)
    signatures = defender_signatures(target, triggers, 0.1, clean)
    extractor = feature_extractor(target)
    for label in range(NUM_CLASSES):
        blended = 0.9 * clean + 0.1 * triggers[label]
        expected = extractor.predict(blended, verbose=0).astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(signatures[label], expected, atol=1e-5)


def test_penalty_moves_reconstructions_away_from_the_signatures(networks):
    generator, target = networks
    budget = dict(iterations=60, augment=no_augment, chunk_size=30)
    plain = PLGMIAttack(generator, **budget).invert(target, CLASSES, PER_CLASS, verbose=0)
    signatures = estimate_signatures(target, plain.images, plain.labels, public_images(), 3)
    adaptive = PLGMIAdaptiveAttack(generator, signatures, penalty_weight=10.0, **budget)
    result = adaptive.invert(target, CLASSES, PER_CLASS, verbose=0)
    check_result(result, CLASSES, PER_CLASS, (4,))
    extractor = feature_extractor(target)

    def mean_cosine(images, labels):
        features = extractor.predict(images, verbose=0).astype(np.float64)
        return numpy_cosine(features, signatures[labels]).mean()

    assert mean_cosine(result.images, result.labels) < mean_cosine(plain.images, plain.labels) - 0.1


def test_without_signatures_it_estimates_them_from_a_plain_round(networks):
    generator, target = networks
    budget = dict(iterations=20, augment=no_augment, chunk_size=20)
    plain = PLGMIAttack(generator, **budget).invert(target, CLASSES, PER_CLASS, seed=3, verbose=0)
    public = public_images()
    by_hand = PLGMIAdaptiveAttack(
        generator, estimate_signatures(target, plain.images, plain.labels, public, 3), 5.0,
        **budget,
    ).invert(target, CLASSES, PER_CLASS, seed=3, verbose=0)
    estimated = PLGMIAdaptiveAttack(
        generator, None, 5.0, public_images=public, top_n=3, **budget
    ).invert(target, CLASSES, PER_CLASS, seed=3, verbose=0)
    np.testing.assert_allclose(estimated.latents, by_hand.latents, atol=1e-6)
    assert not np.allclose(estimated.latents, plain.latents)


def test_rejects_signatures_of_the_wrong_shape(networks):
    generator, target = networks
    attack = PLGMIAdaptiveAttack(generator, np.ones((NUM_CLASSES, 5)), iterations=1)
    with pytest.raises(ValueError, match=r"`signatures` must have shape \(3, 6\).*\(3, 5\)"):
        attack.invert(target, [0], verbose=0)
    with pytest.raises(ValueError, match="penalty_weight"):
        PLGMIAdaptiveAttack(generator, np.ones((3, 6)), penalty_weight=-1.0)
    with pytest.raises(ValueError, match="exactly one of `signatures`.*received neither"):
        PLGMIAdaptiveAttack(generator)
    with pytest.raises(ValueError, match="exactly one of `signatures`.*received both"):
        PLGMIAdaptiveAttack(generator, np.ones((3, 6)), public_images=public_images())
