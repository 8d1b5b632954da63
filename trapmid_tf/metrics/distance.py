"""Squared Euclidean distances in feature space and the KNN distance of an attack."""

import numpy as np

from trapmid_tf.validation import as_feature_matrix, as_labels, check_same_dims

# Largest distance block held in memory at once (float64 entries, 32 MiB).
_MAX_BLOCK_ENTRIES = 1 << 22


def squared_distance_blocks(queries, references):
    """Yields the squared distance matrix between two feature sets, in row blocks.

    Uses `|q|^2 + |r|^2 - 2 q.r` in float64, clipped at 0, on blocks of query rows small
    enough to keep memory bounded for large sets.

    Args:
        queries: Features, shape `(n, dims)`.
        references: Features, shape `(m, dims)`.

    Yields:
        `(rows, block)`: a `slice` of query rows and their `(rows, m)` squared distances.

    Raises:
        ValueError: If an input is not a finite non-empty matrix or the dims differ.
    """
    queries = as_feature_matrix(queries, "queries")
    references = as_feature_matrix(references, "references")
    check_same_dims(queries, "queries", references, "references")
    reference_norms = np.sum(references**2, axis=1)
    block_rows = max(1, _MAX_BLOCK_ENTRIES // references.shape[0])
    for start in range(0, queries.shape[0], block_rows):
        rows = slice(start, start + block_rows)
        block = queries[rows]
        squared = np.sum(block**2, axis=1)[:, None] + reference_norms[None, :]
        squared -= 2.0 * block @ references.T
        yield rows, np.maximum(squared, 0.0)


def min_squared_distances(features, labels, reference_features, reference_labels):
    """Per sample, the minimum squared L2 distance to a reference sample of its label.

    Args:
        features: Query features, shape `(n, dims)` (e.g. evaluation-model features of
            reconstructed images).
        labels: Integer class of each query, shape `(n,)`.
        reference_features: Reference features, shape `(m, dims)` (e.g. features of the
            private training images).
        reference_labels: Integer class of each reference, shape `(m,)`.

    Returns:
        A float64 array of shape `(n,)`.

    Raises:
        ValueError: If shapes disagree or a query label has no reference sample.
    """
    features = as_feature_matrix(features, "features")
    labels = as_labels(labels, "labels", features.shape[0])
    reference_features = as_feature_matrix(reference_features, "reference_features")
    reference_labels = as_labels(reference_labels, "reference_labels", reference_features.shape[0])
    check_same_dims(features, "features", reference_features, "reference_features")
    missing = np.setdiff1d(labels, reference_labels)
    if missing.size:
        raise ValueError(
            "Every label in `labels` needs a reference sample in `reference_labels`; "
            f"received labels without one: {missing.tolist()}."
        )
    minima = np.empty(features.shape[0])
    for label in np.unique(labels):
        query_index = np.flatnonzero(labels == label)
        references = reference_features[reference_labels == label]
        for rows, block in squared_distance_blocks(features[query_index], references):
            minima[query_index[rows]] = block.min(axis=1)
    return minima


def knn_distance(features, labels, reference_features, reference_labels):
    """KNN distance: mean over queries of the minimum squared L2 distance to same-label references.

    This is the literature's "KNN Dist" (reference_spec section 4): lower means the
    reconstructions lie closer to the private data of their class.

    Args:
        features: Query features, shape `(n, dims)`.
        labels: Integer class of each query, shape `(n,)`.
        reference_features: Reference features, shape `(m, dims)`.
        reference_labels: Integer class of each reference, shape `(m,)`.

    Returns:
        The mean minimum squared distance, a python float.

    Raises:
        ValueError: If shapes disagree or a query label has no reference sample.
    """
    minima = min_squared_distances(features, labels, reference_features, reference_labels)
    return float(np.mean(minima))
