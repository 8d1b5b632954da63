"""Tests for the feature views of a classifier."""

import keras
import numpy as np
import pytest

from trapmid_tf.models.features import feature_extractor, features_and_logits
from trapmid_tf.models.small_cnn import small_cnn
from tests.numpy_reference import to_numpy

IMAGES = np.random.default_rng(0).random((4, 16, 16, 1), dtype=np.float32)


@pytest.fixture
def classifier():
    return small_cnn((16, 16, 1), 3, width=4, feature_dim=6)


def test_dense_of_features_equals_logits(classifier):
    kernel, bias = classifier.get_layer("logits").get_weights()
    features = to_numpy(feature_extractor(classifier)(IMAGES))
    assert features.shape == (4, 6)
    np.testing.assert_allclose(features @ kernel + bias, to_numpy(classifier(IMAGES)), atol=1e-5)


def test_features_and_logits_agree_with_model(classifier):
    features, logits = features_and_logits(classifier)(IMAGES)
    np.testing.assert_allclose(to_numpy(logits), to_numpy(classifier(IMAGES)), atol=1e-6)
    np.testing.assert_allclose(
        to_numpy(features), to_numpy(feature_extractor(classifier)(IMAGES)), atol=1e-6
    )


def test_views_share_weights_with_model(classifier):
    extractor = feature_extractor(classifier)
    both = features_and_logits(classifier)
    features_before = to_numpy(extractor(IMAGES))
    logits_before = to_numpy(classifier(IMAGES))
    dense = classifier.get_layer("feature_dense")
    dense.kernel.assign(dense.kernel * 2.0 + 0.1)
    features_after = to_numpy(extractor(IMAGES))
    assert not np.allclose(features_after, features_before, atol=1e-4)
    assert not np.allclose(to_numpy(classifier(IMAGES)), logits_before, atol=1e-4)
    np.testing.assert_allclose(to_numpy(both(IMAGES)[0]), features_after, atol=1e-6)
    assert extractor.get_layer("feature_dense") is dense


def test_last_dense_layer_is_used_without_a_logits_layer():
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(4, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(hidden))
    x = np.random.default_rng(1).random((3, 5), dtype=np.float32)
    expected = to_numpy(keras.Model(inputs, hidden)(x))
    np.testing.assert_allclose(to_numpy(feature_extractor(model)(x)), expected, atol=1e-6)


def test_sequential_model_built_from_input():
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(4, name="hidden"), keras.layers.Dense(2)]
    )
    x = np.random.default_rng(2).random((3, 5), dtype=np.float32)
    features, logits = features_and_logits(model)(x)
    hidden = to_numpy(model.get_layer("hidden")(x))
    np.testing.assert_allclose(to_numpy(features), hidden, atol=1e-6)
    np.testing.assert_allclose(to_numpy(logits), to_numpy(model(x)), atol=1e-6)


def test_model_without_logits_or_final_dense_is_rejected():
    inputs = keras.Input((5,))
    outputs = keras.layers.Softmax()(keras.layers.Dense(2, name="head")(inputs))
    with pytest.raises(ValueError, match="no layer named 'logits' and ends in a Softmax"):
        feature_extractor(keras.Model(inputs, outputs))


def test_subclassed_model_is_rejected():
    class Classifier(keras.Model):
        def __init__(self):
            super().__init__()
            self.logits = keras.layers.Dense(2, name="logits")

        def call(self, x):
            return self.logits(x)

    model = Classifier()
    model(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="functional"):
        features_and_logits(model)
