"""Precision, recall, density and coverage of generated samples in feature space."""

import numpy as np

from trapmid_tf.validation import as_feature_matrix, check_positive_int, check_same_dims
from trapmid_tf.metrics.distance import squared_distance_blocks


def squared_knn_radii(features, nearest_k=5):
    """Squared distance from each sample to its `nearest_k`-th nearest other sample.

    `prdc`'s ball radii of one set; computed once, they serve every `prdc` call against
    the same real set (`real_radii`).

    Args:
        features: Float64 feature matrix `(n, dims)`, `n > nearest_k`.
        nearest_k: Neighbour rank that sets each ball's radius.

    Returns:
        A float64 array `(n,)`.
    """
    radii = np.empty(features.shape[0])
    for rows, block in squared_distance_blocks(features, features):
        # The sample itself (distance ~0) sorts first, so index k is the k-th other sample.
        radii[rows] = np.partition(block, nearest_k, axis=1)[:, nearest_k]
    return radii


def prdc(real_features, fake_features, nearest_k=5, real_radii=None):
    """Precision, recall, density and coverage (Naeem et al., 2020).

    Each sample defines a ball reaching its `nearest_k`-th nearest neighbour in its own
    set. With real samples X (n) and fake samples Y (m):
    - precision: fraction of fakes inside at least one real ball (Kynkaanniemi et al., 2019);
    - recall: fraction of reals inside at least one fake ball (Kynkaanniemi et al., 2019);
    - density: number of (real ball, fake) containments divided by `nearest_k * m`;
      about 1 when both sets come from the same distribution;
    - coverage: fraction of real balls that contain at least one fake.
    "Inside" is strict (distance < radius), so a set compared with itself gives
    precision = recall = coverage = 1 and, without distance ties, density = 1.

    Args:
        real_features: Features of real samples, shape `(n, dims)`, `n > nearest_k`.
        fake_features: Features of generated samples, shape `(m, dims)`, `m > nearest_k`.
        nearest_k: Neighbour rank that sets each ball's radius.
        real_radii: `squared_knn_radii(real_features, nearest_k)` when already computed (it
            costs n^2 distances: 30,000 real samples take seconds), else None.

    Returns:
        A dict with python float values for "precision", "recall", "density", "coverage".

    Raises:
        ValueError: If `nearest_k` is not a positive integer, a set has at most
            `nearest_k` samples, the feature dims differ, or `real_radii` has not one
            entry per real sample.
    """
    nearest_k = check_positive_int("nearest_k", nearest_k)
    real = as_feature_matrix(real_features, "real_features", min_rows=nearest_k + 1)
    fake = as_feature_matrix(fake_features, "fake_features", min_rows=nearest_k + 1)
    check_same_dims(real, "real_features", fake, "fake_features")
    if real_radii is None:
        real_radii = squared_knn_radii(real, nearest_k)
    elif np.shape(real_radii) != (real.shape[0],):
        raise ValueError(
            f"`real_radii` must have one entry per real sample, shape ({real.shape[0]},); "
            f"received shape {np.shape(real_radii)}."
        )
    fake_radii = squared_knn_radii(fake, nearest_k)

    real_balls_per_fake = np.zeros(fake.shape[0], dtype=np.int64)
    real_in_fake_ball = np.empty(real.shape[0], dtype=bool)
    real_ball_has_fake = np.empty(real.shape[0], dtype=bool)
    for rows, block in squared_distance_blocks(real, fake):
        fake_in_real_ball = block < real_radii[rows, None]
        real_balls_per_fake += fake_in_real_ball.sum(axis=0)
        real_ball_has_fake[rows] = fake_in_real_ball.any(axis=1)
        real_in_fake_ball[rows] = (block < fake_radii[None, :]).any(axis=1)

    return {
        "precision": float(np.mean(real_balls_per_fake > 0)),
        "recall": float(np.mean(real_in_fake_ball)),
        "density": float(np.sum(real_balls_per_fake) / (nearest_k * fake.shape[0])),
        "coverage": float(np.mean(real_ball_has_fake)),
    }
