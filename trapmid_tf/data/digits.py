"""The embedded default dataset: scikit-learn's 8x8 handwritten digits (no files needed)."""

import numpy as np
from sklearn import datasets as sklearn_datasets

_MAX_PIXEL = 16.0


def load_digits_arrays():
    """Loads the 1,797 scikit-learn digits.

    Returns:
        `(images, labels)`: float32 images of shape (1797, 8, 8, 1) in [0, 1] (the
        original 0..16 values divided by 16) and int32 labels 0..9.
    """
    digits = sklearn_datasets.load_digits()
    images = (digits.images / _MAX_PIXEL).astype(np.float32)[..., np.newaxis]
    return images, digits.target.astype(np.int32)


def stratified_split(labels, test_fraction, seed):
    """Splits indices into train and test sets, class by class.

    Each class with n samples puts `round(n * test_fraction)` randomly chosen samples
    in the test set and the rest in the train set.

    Args:
        labels: 1-D integer array of class labels.
        test_fraction: fraction of each class that goes to the test set, in [0, 1].
        seed: integer seed of the random choice and of the final order.

    Returns:
        `(train_indices, test_indices)`: int64 index arrays into `labels`, each in a
        random order.

    Raises:
        ValueError: if `test_fraction` is outside [0, 1].
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction!r}.")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        num_test = int(round(len(members) * test_fraction))
        test.append(members[:num_test])
        train.append(members[num_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))
