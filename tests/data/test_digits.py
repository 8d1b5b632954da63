"""The embedded digits dataset, checked against scikit-learn's arrays directly."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from trapmid_tf.data.digits import stratified_split
from trapmid_tf.data.loaders import load, load_evaluation_data


def _arrays(dataset):
    """Stacks an unbatched dataset of images or (image, label) into numpy arrays."""
    elements = list(dataset.as_numpy_iterator())
    if isinstance(elements[0], tuple):
        return np.stack([x for x, _ in elements]), np.array([y for _, y in elements])
    return np.stack(elements)


def _sorted_rows(images):
    flat = images.reshape(len(images), -1)
    return flat[np.lexsort(flat.T[::-1])]


@pytest.fixture(scope="module")
def sklearn_digits():
    digits = load_digits()
    return digits.images, digits.target


@pytest.fixture(scope="module")
def default_splits():
    (train, test), public = load("digits")
    return _arrays(train), _arrays(test), _arrays(public), (train, test, public)


def test_default_shapes_dtypes_and_range(default_splits):
    (x_train, y_train), (x_test, y_test), x_public, datasets = default_splits
    for x in (x_train, x_test, x_public):
        assert x.shape[1:] == (32, 32, 1)
        assert x.dtype == np.float32
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert x.max() > 0.9  # real content, not an all-dark image
    assert y_train.dtype == np.int32 and y_test.dtype == np.int32
    train, test, public = datasets
    assert int(train.cardinality()) == len(x_train)
    assert int(test.cardinality()) == len(x_test)
    assert int(public.cardinality()) == len(x_public)


def test_private_classes_and_public_count(default_splits, sklearn_digits):
    (_, y_train), (_, y_test), x_public, _ = default_splits
    _, target = sklearn_digits
    assert set(y_train) == set(y_test) == {0, 1, 2, 3, 4}
    assert len(x_public) == np.sum(target >= 5)


def test_split_is_80_20_per_class(default_splits, sklearn_digits):
    (_, y_train), (_, y_test), _, _ = default_splits
    _, target = sklearn_digits
    for label in range(5):
        count = np.sum(target == label)
        expected_test = round(0.2 * count)
        assert np.sum(y_test == label) == expected_test
        assert np.sum(y_train == label) == count - expected_test


def test_native_size_images_are_the_sklearn_images(sklearn_digits):
    images, target = sklearn_digits
    (train, test), public = load("digits", image_size=8)
    (x_train, y_train), (x_test, y_test) = _arrays(train), _arrays(test)
    for label in range(5):
        loaded = np.concatenate([x_train[y_train == label], x_test[y_test == label]])
        np.testing.assert_array_equal(
            _sorted_rows(loaded), _sorted_rows(images[target == label] / 16.0).astype(np.float32)
        )
    np.testing.assert_array_equal(
        _sorted_rows(_arrays(public)), _sorted_rows(images[target >= 5] / 16.0).astype(np.float32)
    )


def _bilinear_upsample(image, size):
    """Half-pixel-centre bilinear resize of a 2-D image (edges clamped)."""
    source = (np.arange(size) + 0.5) * image.shape[0] / size - 0.5
    source = np.clip(source, 0, image.shape[0] - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, image.shape[0] - 1)
    weight = source - low
    rows = image[low] * (1 - weight)[:, None] + image[high] * weight[:, None]
    return rows[:, low] * (1 - weight)[None, :] + rows[:, high] * weight[None, :]


def test_upsampling_is_bilinear(sklearn_digits):
    images, target = sklearn_digits
    _, public = load("digits", image_size=20)
    first_public = next(public.as_numpy_iterator())
    expected = _bilinear_upsample(images[target >= 5][0] / 16.0, 20)
    np.testing.assert_allclose(first_public[..., 0], expected, atol=1e-5)


def test_three_channels_repeat_the_gray_channel():
    (train, _), _ = load("digits", channels=3, image_size=16)
    x, _ = next(train.as_numpy_iterator())
    assert x.shape == (16, 16, 3)
    np.testing.assert_array_equal(x[..., 0], x[..., 1])
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


def test_same_seed_same_split_other_seed_other_split():
    def train_arrays(seed):
        (train, _), _ = load("digits", image_size=8, seed=seed)
        return _arrays(train)

    x_a, y_a = train_arrays(3)
    x_b, y_b = train_arrays(3)
    x_c, _ = train_arrays(4)
    np.testing.assert_array_equal(x_a, x_b)
    np.testing.assert_array_equal(y_a, y_b)
    assert not np.array_equal(_sorted_rows(x_a), _sorted_rows(x_c))  # other members


def test_stratified_split_partitions_each_class():
    labels = np.array([0] * 10 + [1] * 7 + [2] * 3)
    train, test = stratified_split(labels, test_fraction=0.3, seed=0)
    assert sorted(np.concatenate([train, test])) == list(range(len(labels)))
    assert [np.sum(labels[test] == c) for c in range(3)] == [3, 2, 1]


def test_stratified_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(np.zeros(4), test_fraction=1.5, seed=0)


def test_samples_split_gives_half_of_each_private_class_to_the_public(sklearn_digits):
    images, target = sklearn_digits
    (train, test), public = load("digits", image_size=8, public_split="samples")
    (x_train, y_train), (x_test, y_test) = _arrays(train), _arrays(test)
    x_public = _arrays(public)
    (_, reference_test), _ = load("digits", image_size=8)
    # The test split is the reference split's; the training pool is halved per class.
    np.testing.assert_array_equal(_arrays(reference_test)[1], y_test)
    for label in range(5):
        pool = np.sum(target == label) - np.sum(y_test == label)
        assert np.sum(y_train == label) == pool - round(0.5 * pool)
    # Every image lands in exactly one split: train + test + public is the whole dataset,
    # so no private training image is public.
    together = np.concatenate([x_train, x_test, x_public])
    np.testing.assert_array_equal(
        _sorted_rows(together), _sorted_rows(images[..., None] / 16.0).astype(np.float32)
    )
    assert len(x_public) == len(images) - len(x_train) - len(x_test)


def test_public_split_is_checked():
    with pytest.raises(ValueError, match=r"public_split must be one of \['classes', 'samples'\]"):
        load("digits", public_split="pixels")


def test_evaluation_data_has_all_ten_classes(sklearn_digits):
    images, target = sklearn_digits
    train, test, num_classes = load_evaluation_data("digits", image_size=8)
    (x_train, y_train), (x_test, y_test) = _arrays(train), _arrays(test)
    assert num_classes == 10
    for label in range(10):
        assert np.sum(y_test == label) == round(0.2 * np.sum(target == label))
    np.testing.assert_array_equal(
        _sorted_rows(np.concatenate([x_train, x_test])),
        _sorted_rows(images[..., None] / 16.0).astype(np.float32),
    )


def test_evaluation_data_rejects_unlabelled_folder():
    with pytest.raises(ValueError, match="name must be one of"):
        load_evaluation_data("folder")
