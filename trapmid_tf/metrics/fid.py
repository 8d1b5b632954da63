"""Frechet distance between feature sets (FID) and an offline InceptionV3 feature extractor."""

import os

import keras
import numpy as np
import scipy.linalg
from keras import ops

from trapmid_tf.validation import as_feature_matrix, check_same_dims
from trapmid_tf.metrics.features import batched_predict

INCEPTION_IMAGE_SIZE = 299
# Added to the covariance diagonals when the square root of their product is not finite.
_SQRTM_EPS = 1e-6
# Largest imaginary part of sqrt(C_a C_b)'s diagonal, relative to its real part, that counts
# as numerical noise and is discarded.
_MAX_RELATIVE_IMAGINARY = 1e-3


def _mean_and_covariance(features):
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def _sqrt_of_product(cov_a, cov_b):
    """Real matrix square root of `cov_a @ cov_b`, regularised if needed."""
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.all(np.isfinite(root)):
        offset = _SQRTM_EPS * np.eye(cov_a.shape[0])
        root = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(root):
        diagonal = np.diagonal(root)
        scale = max(1.0, np.max(np.abs(diagonal.real)))
        if np.max(np.abs(diagonal.imag)) > _MAX_RELATIVE_IMAGINARY * scale:
            raise ValueError(
                "The square root of the product of the feature covariances has a large "
                f"imaginary part ({np.max(np.abs(diagonal.imag)):.3g}); the covariances are "
                "too ill-conditioned. Use more samples or fewer feature dims."
            )
        root = root.real
    return root


def frechet_distance(features_a, features_b):
    """Frechet distance between Gaussians fitted to two feature sets (the FID formula).

    `|mu_a - mu_b|^2 + tr(C_a + C_b - 2 sqrt(C_a C_b))`, with sample means and unbiased
    sample covariances. The square root is `scipy.linalg.sqrtm`; if it is not finite, 1e-6
    is added to both covariance diagonals; negligible imaginary parts are dropped.

    Args:
        features_a: Features, shape `(n_a, dims)`, `n_a >= 2`.
        features_b: Features, shape `(n_b, dims)`, `n_b >= 2`.

    Returns:
        The distance as a python float (0 up to rounding for identical sets).

    Raises:
        ValueError: If an input is not a finite matrix with at least 2 rows, the dims
            differ, or the covariance product has no real square root numerically.
    """
    features_a = as_feature_matrix(features_a, "features_a", min_rows=2)
    features_b = as_feature_matrix(features_b, "features_b", min_rows=2)
    check_same_dims(features_a, "features_a", features_b, "features_b")
    mean_a, cov_a = _mean_and_covariance(features_a)
    mean_b, cov_b = _mean_and_covariance(features_b)
    mean_term = np.sum((mean_a - mean_b) ** 2)
    trace_term = np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(_sqrt_of_product(cov_a, cov_b))
    return float(mean_term + trace_term)


def fid(images_a, images_b, feature_model, batch_size=100):
    """Frechet distance between the features `feature_model` gives two image sets.

    Absolute values depend on the feature extractor (InceptionV3 from
    `inception_feature_extractor`, or an evaluation model's features); compare FIDs only
    when computed with the same extractor.

    Args:
        images_a: Float32 NHWC images in [0, 1], at least 2.
        images_b: Float32 NHWC images in [0, 1], at least 2.
        feature_model: Keras model mapping a batch of images to `(batch, dims)` features.
        batch_size: Images per forward pass.

    Returns:
        The FID as a python float.

    Raises:
        ValueError: As `batched_predict` and `frechet_distance`.
    """
    features_a = batched_predict(feature_model, images_a, batch_size)
    features_b = batched_predict(feature_model, images_b, batch_size)
    return frechet_distance(features_a, features_b)


@keras.saving.register_keras_serializable(package="trapmid_tf")
class InceptionPreprocessing(keras.layers.Layer):
    """Maps [0, 1] NHWC images of any size to InceptionV3 input.

    Bilinear resize to `image_size` (no antialiasing, as PyTorch `F.interpolate`), grey
    images repeated to 3 channels, then scaled to [-1, 1] (`2x - 1`, the Keras
    InceptionV3 convention). Other channel counts raise ValueError when traced; after a
    shape-relaxed retrace they fail at run time instead.

    Args:
        image_size: Side of the square output images.
        **kwargs: Standard layer arguments.
    """

    def __init__(self, image_size=INCEPTION_IMAGE_SIZE, **kwargs):
        super().__init__(**kwargs)
        self.image_size = int(image_size)

    def call(self, images):
        channels = images.shape[-1]
        if channels not in (1, 3, None):  # None: traced with a relaxed shape.
            raise ValueError(f"`images` must have 1 or 3 channels; received {channels}.")
        size = (self.image_size, self.image_size)
        resized = ops.image.resize(images, size, interpolation="bilinear")
        # Broadcasting to 3 channels repeats a grey channel and leaves RGB unchanged.
        rgb = ops.broadcast_to(resized, ops.shape(resized)[:-1] + (3,))
        return rgb * 2.0 - 1.0

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.image_size, self.image_size, 3)

    def get_config(self):
        config = super().get_config()
        config.update(image_size=self.image_size)
        return config


def with_inception_preprocessing(backbone):
    """Puts `InceptionPreprocessing` in front of an InceptionV3 feature backbone.

    Args:
        backbone: `keras.applications.InceptionV3(include_top=False, pooling="avg", ...)`
            or any model taking `(batch, 299, 299, 3)` input in [-1, 1].

    Returns:
        A `keras.Sequential` model mapping [0, 1] images (1 or 3 channels, any size) to
        the backbone's features.
    """
    return keras.Sequential(
        [InceptionPreprocessing(), backbone], name="inception_feature_extractor"
    )


def inception_feature_extractor(weights_path):
    """InceptionV3 pool features (2048-d) of [0, 1] images, with weights from a local file.

    Nothing is downloaded. The file holds ImageNet weights of InceptionV3 without its
    top: the Keras release file `inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5`,
    or a `.weights.h5` saved from `keras.applications.InceptionV3(include_top=False)`.
    These are not the torchvision / TF-2015 Inception weights of the published FIDs, so
    values are comparable only within this package (reference_spec 6.13).

    Args:
        weights_path: Path to the weights file.

    Returns:
        A Keras model mapping `(batch, height, width, 1 or 3)` images in [0, 1] to
        `(batch, 2048)` features.

    Raises:
        FileNotFoundError: If `weights_path` is not an existing file.
    """
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(
            f"`weights_path` must be a local InceptionV3 (no-top) weights file; received "
            f"{weights_path!r}, which does not exist. Nothing is downloaded at run time: copy "
            "`inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5` (Keras applications "
            "release) to this machine and pass its path."
        )
    backbone = keras.applications.InceptionV3(
        include_top=False,
        weights=None,
        input_shape=(INCEPTION_IMAGE_SIZE, INCEPTION_IMAGE_SIZE, 3),
        pooling="avg",
    )
    backbone.load_weights(weights_path)
    return with_inception_preprocessing(backbone)
