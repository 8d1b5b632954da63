import keras
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from trapmid_tf.metrics.fid import (
    InceptionPreprocessing,
    fid,
    frechet_distance,
    inception_feature_extractor,
    with_inception_preprocessing,
)


def _frechet_by_eigendecomposition(a, b):
    """Second implementation: tr sqrt(C_a C_b) = tr sqrt(sqrt(C_a) C_b sqrt(C_a))."""
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T
    trace_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)))
    mean_term = np.sum((a.mean(0) - b.mean(0)) ** 2)
    return mean_term + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root


def _gaussian_samples(seed, n, mean, scale):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(len(mean), len(mean))) * scale
    return rng.normal(size=(n, len(mean))) @ mixing + mean


def test_set_against_itself_is_zero():
    features = _gaussian_samples(0, 200, [1.0, -2.0, 0.5, 3.0], 1.0)
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)


def test_gaussians_match_eigendecomposition():
    a = _gaussian_samples(1, 300, [0.0, 1.0, 2.0], 1.0)
    b = _gaussian_samples(2, 250, [1.0, 0.0, -1.0], 0.5)
    assert frechet_distance(a, b) == pytest.approx(_frechet_by_eigendecomposition(a, b), rel=1e-8)


def _axis_points(spreads, shift):
    """Points +/- spread_i on axis i: mean `shift`, exactly diagonal sample covariance."""
    rows = np.concatenate([np.diag(spreads), -np.diag(spreads)])
    return rows + shift, 2 * np.asarray(spreads) ** 2 / (len(rows) - 1)


def test_diagonal_covariances_closed_form():
    a, var_a = _axis_points([1.0, 2.0, 3.0], np.array([0.0, 1.0, 0.0]))
    b, var_b = _axis_points([2.0, 0.5, 1.0], np.array([1.0, -1.0, 2.0]))
    expected = (1 + 4 + 4) + np.sum(var_a + var_b - 2 * np.sqrt(var_a * var_b))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)


def test_one_dimensional_features():
    a, b = np.array([[0.0], [2.0]]), np.array([[5.0], [9.0]])  # means 1, 7; variances 2, 8
    assert frechet_distance(a, b) == pytest.approx(36 + 2 + 8 - 2 * 4)


def test_non_finite_root_retried_with_eps_on_diagonal(monkeypatch):
    a = _gaussian_samples(3, 50, [0.0, 1.0], 1.0)
    b = _gaussian_samples(4, 50, [1.0, 1.0], 1.0)
    calls, real_sqrtm = [], scipy.linalg.sqrtm

    def flaky_sqrtm(matrix):
        calls.append(matrix)
        return np.full_like(matrix, np.nan) if len(calls) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(scipy.linalg, "sqrtm", flaky_sqrtm)
    result = frechet_distance(a, b)
    offset = 1e-6 * np.eye(2)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    np.testing.assert_allclose(calls[1], (cov_a + offset) @ (cov_b + offset))
    assert result == pytest.approx(_frechet_by_eigendecomposition(a, b), rel=1e-4)


def test_imaginary_noise_dropped_and_large_imaginary_rejected(monkeypatch):
    a = _gaussian_samples(5, 50, [0.0, 1.0], 1.0)
    b = _gaussian_samples(6, 50, [1.0, 1.0], 1.0)
    real_sqrtm = scipy.linalg.sqrtm
    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda m: real_sqrtm(m) + 1e-9j)
    assert frechet_distance(a, b) == pytest.approx(_frechet_by_eigendecomposition(a, b), rel=1e-8)
    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda m: real_sqrtm(m) + 10j)
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(a, b)


@pytest.mark.parametrize(
    "a, b, match",
    [
        (np.zeros((1, 3)), np.zeros((4, 3)), "`features_a`.*at least 2"),
        (np.zeros((4, 3)), np.zeros((4, 2)), "same feature dims"),
    ],
)
def test_frechet_rejects_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        frechet_distance(a, b)


def test_fid_uses_feature_model_on_all_images():
    flatten = keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten()])
    rng = np.random.default_rng(7)
    images_a = rng.uniform(size=(7, 2, 2, 1)).astype("float32")
    images_b = rng.uniform(size=(5, 2, 2, 1)).astype("float32")
    expected = _frechet_by_eigendecomposition(
        images_a.reshape(7, 4).astype(np.float64), images_b.reshape(5, 4).astype(np.float64)
    )
    assert fid(images_a, images_b, flatten, batch_size=3) == pytest.approx(expected, rel=1e-5)


def test_inception_preprocessing_values():
    layer = InceptionPreprocessing(image_size=5)
    grey = np.full((1, 3, 3, 1), 0.25, "float32")
    np.testing.assert_allclose(layer(grey), np.full((1, 5, 5, 3), -0.5), atol=1e-6)
    colour = np.broadcast_to(np.array([0.0, 0.5, 1.0], "float32"), (1, 4, 2, 3))
    expected_colour = np.broadcast_to([-1.0, 0.0, 1.0], (1, 5, 5, 3))
    np.testing.assert_allclose(layer(colour), expected_colour, atol=1e-6)
    ramp = np.linspace(0, 1, 12, dtype="float32").reshape(1, 3, 4, 1)
    expected = tf.image.resize(ramp, (5, 5), method="bilinear", antialias=False).numpy() * 2 - 1
    np.testing.assert_allclose(layer(ramp), np.repeat(expected, 3, axis=-1), atol=1e-6)


def test_inception_preprocessing_channel_check():
    layer = InceptionPreprocessing(image_size=7)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        layer(np.zeros((1, 4, 4, 2), "float32"))


@pytest.mark.large  # a full InceptionV3 at 299x299
def test_wrapped_inception_v3_gives_2048_features_for_small_grey_images():
    backbone = keras.applications.InceptionV3(
        include_top=False, weights=None, input_shape=(299, 299, 3), pooling="avg"
    )
    extractor = with_inception_preprocessing(backbone)
    images = np.random.default_rng(8).uniform(size=(2, 8, 8, 1)).astype("float32")
    features = extractor.predict(images, verbose=0)
    assert features.shape == (2, 2048)
    assert np.all(np.isfinite(features))


def _tiny_backbone(include_top, weights, input_shape, pooling):
    """Stands in for InceptionV3 (same call) so the loading path runs in milliseconds."""
    assert (include_top, weights, pooling) == (False, None, "avg")
    inputs = keras.Input(input_shape)
    features = keras.layers.Conv2D(4, 3, strides=8)(inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(features))


# Keras' own weight saving triggers a numpy 2 DeprecationWarning inside keras.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_inception_feature_extractor_loads_local_weights(tmp_path, monkeypatch):
    source = _tiny_backbone(False, None, (299, 299, 3), "avg")
    path = tmp_path / "inception.weights.h5"
    source.save_weights(path)
    monkeypatch.setattr(keras.applications, "InceptionV3", _tiny_backbone)
    extractor = inception_feature_extractor(str(path))
    rng = np.random.default_rng(9)
    # Grey, then colour images of other sizes through the same extractor (relaxed retrace).
    for shape in [(2, 6, 6, 1), (3, 10, 7, 3), (2, 5, 9, 1)]:
        images = rng.uniform(size=shape).astype("float32")
        resized = tf.image.resize(images, (299, 299), method="bilinear").numpy()
        rgb = np.broadcast_to(resized, resized.shape[:-1] + (3,))
        expected = source.predict(rgb * 2 - 1, verbose=0)
        np.testing.assert_allclose(
            extractor.predict(images, verbose=0), expected, rtol=1e-4, atol=1e-5
        )


def test_inception_feature_extractor_missing_file(tmp_path):
    missing = str(tmp_path / "nowhere.h5")
    with pytest.raises(FileNotFoundError, match="nowhere.h5.*Nothing is downloaded"):
        inception_feature_extractor(missing)
