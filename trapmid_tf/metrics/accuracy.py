"""Top-k accuracy of class scores (natural, trapdoor and attack accuracy)."""

import numpy as np

from trapmid_tf.validation import as_feature_matrix, as_labels, check_positive_int


def top_k_accuracy(scores, labels, k=1):
    """Fraction of samples whose label is among the `k` highest-scoring classes.

    Ties are resolved in the sample's favour: a sample counts as correct when fewer than
    `k` classes score strictly higher than its label. The result therefore does not
    depend on the order of classes (unlike `torch.topk`, which breaks ties arbitrarily);
    with continuous logits ties do not occur and both agree.

    Args:
        scores: Logits or probabilities, shape `(samples, classes)`, finite.
        labels: Integer true classes, shape `(samples,)`, in `[0, classes)`.
        k: Number of top classes that count, in `[1, classes]`.

    Returns:
        The accuracy as a python float in [0, 1].

    Raises:
        ValueError: If the shapes disagree, a label is out of range, or `k` is not an
            integer in `[1, classes]`.
    """
    scores = as_feature_matrix(scores, "scores")
    num_samples, num_classes = scores.shape
    labels = as_labels(labels, "labels", num_samples, num_classes)
    k = check_positive_int("k", k)
    if k > num_classes:
        raise ValueError(f"`k` must be <= the number of classes ({num_classes}); received {k}.")
    label_scores = scores[np.arange(num_samples), labels]
    num_strictly_higher = np.sum(scores > label_scores[:, None], axis=1)
    return float(np.mean(num_strictly_higher < k))
