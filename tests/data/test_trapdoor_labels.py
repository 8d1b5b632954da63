"""Balanced per-epoch trapdoor labels."""

import numpy as np
import pytest
import tensorflow as tf

from trapmid_tf.data.trapdoor_labels import with_trapdoor_labels


def _pairs(num_elements):
    """(x, y) with x a small image made from the index, y = index % 3."""
    x = np.arange(num_elements * 4, dtype=np.float32).reshape(num_elements, 2, 2, 1)
    y = (np.arange(num_elements) % 3).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((x, y)), x, y


def _epochs(dataset, count):
    """Trapdoor labels of `count` passes over the same dataset object."""
    return [np.array([t for _, _, t in dataset.as_numpy_iterator()]) for _ in range(count)]


def test_each_epoch_is_balanced_with_a_fresh_remainder():
    dataset, _, _ = _pairs(23)
    labelled = with_trapdoor_labels(dataset, num_classes=5, seed=0)
    epochs = _epochs(labelled, 6)
    remainders = set()
    for labels in epochs:
        counts = np.bincount(labels, minlength=5)
        assert len(labels) == 23 and labels.min() >= 0 and labels.max() < 5
        assert sorted(counts) == [4, 4, 5, 5, 5]  # floor(23/5)=4; 23 mod 5 = 3 get one more
        remainders.add(tuple(np.flatnonzero(counts == 5)))
    assert len(remainders) > 1  # the extra classes are redrawn
    assert not np.array_equal(epochs[0], epochs[1])  # the order is reshuffled


def test_divisible_size_gives_equal_counts():
    dataset, _, _ = _pairs(20)
    for labels in _epochs(with_trapdoor_labels(dataset, num_classes=4, seed=1), 2):
        np.testing.assert_array_equal(np.bincount(labels), [5, 5, 5, 5])


def test_same_seed_repeats_the_epoch_sequence():
    dataset, _, _ = _pairs(17)
    first = _epochs(with_trapdoor_labels(dataset, num_classes=3, seed=7), 3)
    second = _epochs(with_trapdoor_labels(dataset, num_classes=3, seed=7), 3)
    other = _epochs(with_trapdoor_labels(dataset, num_classes=3, seed=8), 3)
    np.testing.assert_array_equal(np.stack(first), np.stack(second))
    assert not np.array_equal(np.stack(first), np.stack(other))


def test_images_and_labels_pass_through_unchanged():
    dataset, x, y = _pairs(11)
    labelled = with_trapdoor_labels(dataset, num_classes=5, seed=3)
    assert labelled.element_spec[2] == tf.TensorSpec((), tf.int32)
    assert int(labelled.cardinality()) == 11
    elements = list(labelled.as_numpy_iterator())
    np.testing.assert_array_equal(np.stack([e[0] for e in elements]), x)
    np.testing.assert_array_equal(np.array([e[1] for e in elements]), y)


def test_unknown_cardinality_is_counted():
    dataset, _, _ = _pairs(30)
    filtered = dataset.filter(lambda x, y: y < 2)  # 20 elements, cardinality unknown
    labelled = with_trapdoor_labels(filtered, num_classes=4, seed=0)
    assert int(labelled.cardinality()) == 20
    labels = _epochs(labelled, 1)[0]
    np.testing.assert_array_equal(np.bincount(labels), [5, 5, 5, 5])


def test_batches_after_labelling():
    dataset, _, _ = _pairs(10)
    x, y, t = next(iter(with_trapdoor_labels(dataset, num_classes=2, seed=0).batch(4)))
    assert x.shape == (4, 2, 2, 1) and y.shape == (4,) and t.shape == (4,)


def test_one_class_gives_all_zeros():
    dataset, _, _ = _pairs(5)
    np.testing.assert_array_equal(_epochs(with_trapdoor_labels(dataset, 1), 1)[0], np.zeros(5))


def test_infinite_dataset_is_rejected():
    dataset, _, _ = _pairs(4)
    with pytest.raises(ValueError, match="infinite"):
        with_trapdoor_labels(dataset.repeat(), num_classes=2)


@pytest.mark.parametrize("num_classes", [0, 2.5, True, "3"])
def test_bad_num_classes(num_classes):
    dataset, _, _ = _pairs(4)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        with_trapdoor_labels(dataset, num_classes=num_classes)


def test_bad_seed():
    dataset, _, _ = _pairs(4)
    with pytest.raises(ValueError, match="seed must be None or an int"):
        with_trapdoor_labels(dataset, num_classes=2, seed=1.5)


def test_elements_must_be_pairs():
    images = tf.data.Dataset.from_tensor_slices(np.zeros((4, 2, 2, 1), np.float32))
    with pytest.raises(ValueError, match=r"\(x, y\) pairs"):
        with_trapdoor_labels(images, num_classes=2)
