"""The labelled image-folder dataset ("class_folder"): layout, splits, channels, sizes, errors."""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from trapmid_tf.data.loaders import load, load_evaluation_data

# Decoded pixels are uint8 / 255 in float32 and, at the files' own size, resized at scale 1
# (weights 1 and 0): values in [0, 1] off by a few float32 roundings, 1.2e-7 each.
PIXEL_TOLERANCE = 1e-6


def write_image(path, pixels):
    """Writes a uint8 HxW (grayscale) or HxWx3 (RGB) array as an image file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(pixels, np.uint8)).save(path)
    return str(path)


def write_folder(root, counts, shape=(8, 8), seed=0):
    """Writes random images, `counts[name]` per class subfolder; returns {name: [arrays]}."""
    rng = np.random.default_rng(seed)
    written = {}
    for name, count in counts.items():
        written[name] = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]
        for i, pixels in enumerate(written[name]):
            write_image(os.path.join(root, name, f"{i}.png"), pixels)
    return written


def as_arrays(dataset):
    """`(images, labels)` of a dataset of `(image, label)` as numpy arrays."""
    images, labels = zip(*dataset.as_numpy_iterator())
    return np.stack(images), np.asarray(labels)


def keys(images):
    """One hashable key per image: its pixels as bytes (exact after rounding to 0..255)."""
    return [np.round(image * 255).astype(np.uint8).tobytes() for image in images]


def by_pixels(images):
    """The images in the order of their keys."""
    return [image for _, image in sorted(zip(keys(images), images), key=lambda pair: pair[0])]


def test_layout_labels_pixels_and_contract(tmp_path):
    # Class folders written out of order: labels follow the sorted names, as Keras's.
    written = write_folder(tmp_path, {"zebra": 5, "ant": 5})
    write_image(tmp_path / "stray.png", np.zeros((8, 8)))  # beside the classes: not used
    splits = load("class_folder", str(tmp_path), test_fraction=0.4, seed=0)
    (train, test), public = splits
    assert splits.class_names == ("ant", "zebra") and public is None
    assert train.element_spec == (
        tf.TensorSpec((8, 8, 1), tf.float32), tf.TensorSpec((), tf.int32)
    )
    images, labels = (np.concatenate(pair) for pair in zip(as_arrays(train), as_arrays(test)))
    for label, name in enumerate(splits.class_names):
        expected = [pixels[..., np.newaxis] / 255.0 for pixels in written[name]]
        np.testing.assert_allclose(
            by_pixels(images[labels == label]), by_pixels(expected), atol=PIXEL_TOLERANCE
        )


def test_seeded_split_is_reproducible_disjoint_and_stratified(tmp_path):
    write_folder(tmp_path, {"a": 10, "b": 7})
    first = [as_arrays(split) for split in load("class_folder", str(tmp_path), seed=3).private]
    again = [as_arrays(split) for split in load("class_folder", str(tmp_path), seed=3).private]
    other = load("class_folder", str(tmp_path), seed=4).private[1]
    (train_images, train_labels), (test_images, test_labels) = first
    for (images, labels), (images_again, labels_again) in zip(first, again):
        np.testing.assert_array_equal(images, images_again)
        np.testing.assert_array_equal(labels, labels_again)
    assert not set(keys(train_images)) & set(keys(test_images))
    assert len(set(keys(train_images)) | set(keys(test_images))) == 17
    # Default fraction 0.2: round(10 * 0.2) = 2 and round(7 * 0.2) = 1 test images.
    assert np.bincount(test_labels).tolist() == [2, 1]
    assert np.bincount(train_labels).tolist() == [8, 6]
    assert set(keys(as_arrays(other)[0])) != set(keys(test_images))


def test_second_folder_is_the_test_set_and_must_have_the_same_classes(tmp_path):
    write_folder(tmp_path / "train", {"a": 3, "b": 2})
    held_out = write_folder(tmp_path / "test", {"a": 1, "b": 2}, seed=1)
    (train, test), _ = load(
        "class_folder", str(tmp_path / "train"), test_dir=str(tmp_path / "test")
    )
    assert np.bincount(as_arrays(train)[1]).tolist() == [3, 2]
    test_images, test_labels = as_arrays(test)
    assert np.bincount(test_labels).tolist() == [1, 2]
    expected = [pixels[..., np.newaxis] / 255.0 for pixels in held_out["a"]]
    np.testing.assert_allclose(test_images[test_labels == 0], expected, atol=PIXEL_TOLERANCE)
    write_folder(tmp_path / "other", {"a": 1, "c": 1})
    message = r"data_dir has \['a', 'b'\], test_dir has \['a', 'c'\]"
    with pytest.raises(ValueError, match=message):
        load("class_folder", str(tmp_path / "train"), test_dir=str(tmp_path / "other"))


def test_channels_follow_the_files_or_the_argument(tmp_path):
    gray = np.full((8, 8), 90, np.uint8)
    write_image(tmp_path / "a" / "gray.png", gray)
    write_image(tmp_path / "b" / "gray.png", gray)
    (train, _), _ = load("class_folder", str(tmp_path), test_fraction=0.1)
    assert train.element_spec[0].shape == (8, 8, 1)
    # One colour file makes the dataset RGB; grayscale files are repeated to 3 channels.
    write_image(tmp_path / "b" / "colour.png", np.full((8, 8, 3), (200, 100, 50), np.uint8))
    (train, _), _ = load("class_folder", str(tmp_path), test_fraction=0.1)
    images, _ = as_arrays(train)
    assert images.shape[1:] == (8, 8, 3)
    assert sum(np.allclose(image, 90 / 255, atol=PIXEL_TOLERANCE) for image in images) == 2
    colour = images[~np.isclose(images[:, 0, 0, 0], 90 / 255)]
    np.testing.assert_allclose(colour[0, 0, 0], np.array([200, 100, 50]) / 255, atol=PIXEL_TOLERANCE)
    # channels=1: PIL's luminance, 0.299 R + 0.587 G + 0.114 B = 124.2, stored as an integer.
    (train, _), _ = load("class_folder", str(tmp_path), test_fraction=0.1, channels=1)
    images, _ = as_arrays(train)
    luminance = images[~np.isclose(images[:, 0, 0, 0], 90 / 255)][0] * 255
    assert np.all(np.abs(luminance - 124.2) <= 0.5 + 255 * PIXEL_TOLERANCE)


def test_sizes_are_kept_or_resized(tmp_path):
    # One common non-square size (6 wide, 10 high) is kept as (height, width).
    write_image(tmp_path / "same" / "a" / "0.png", np.full((10, 6), 40, np.uint8))
    write_image(tmp_path / "same" / "b" / "0.png", np.full((10, 6), 40, np.uint8))
    write_image(tmp_path / "same" / "b" / "1.png", np.full((10, 6), 40, np.uint8))
    (train, _), _ = load("class_folder", str(tmp_path / "same"), test_fraction=0.4)
    assert train.element_spec[0].shape == (10, 6, 1)
    # Mixed sizes resize to image_size; a constant image stays that constant.
    write_image(tmp_path / "same" / "a" / "1.png", np.full((8, 8), 40, np.uint8))
    (train, test), _ = load(
        "class_folder", str(tmp_path / "same"), test_fraction=0.4, image_size=4
    )
    images = np.concatenate([as_arrays(train)[0], as_arrays(test)[0]])
    assert images.shape == (4, 4, 4, 1)
    np.testing.assert_allclose(images, 40 / 255, atol=PIXEL_TOLERANCE)


def test_mixed_sizes_without_image_size_name_two_files_and_their_sizes(tmp_path):
    first = write_image(tmp_path / "a" / "0.png", np.zeros((8, 8)))
    other = write_image(tmp_path / "b" / "0.png", np.zeros((10, 6)))
    message = f"{first}' is 8x8 and '{other}' is 6x10 \\(width x height\\); pass image_size"
    with pytest.raises(ValueError, match=message):
        load("class_folder", str(tmp_path))


def test_empty_class_folder_is_named(tmp_path):
    write_folder(tmp_path, {"a": 2})
    os.makedirs(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match=f"class folder '{tmp_path}/b' holds no image"):
        load("class_folder", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="has no class subfolder"):
        load("class_folder", str(tmp_path / "a"))


def test_unreadable_files_are_named_or_skipped(tmp_path):
    write_folder(tmp_path, {"a": 3, "b": 3})
    bad = tmp_path / "b" / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=f"cannot read image '{bad}'"):
        load("class_folder", str(tmp_path))
    splits = load("class_folder", str(tmp_path), skip_unreadable=True)
    assert splits.skipped_files == (str(bad),)
    assert sum(int(split.cardinality()) for split in splits.private) == 6
    # A file whose header reads but whose pixels do not fails when iterated, named.
    truncated = tmp_path / "b" / "truncated.png"
    truncated.write_bytes((tmp_path / "b" / "0.png").read_bytes()[:60])
    bad.unlink()
    (train, test), _ = load("class_folder", str(tmp_path), test_fraction=0.5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="truncated.png"):
        for split in (train, test):
            list(split.as_numpy_iterator())
    # Skipped, the class loses it but keeps its three others.
    splits = load("class_folder", str(tmp_path), skip_unreadable=True)
    assert splits.skipped_files == (str(truncated),)
    # A class whose every file is unreadable is empty, named.
    bad.write_bytes(b"not an image")
    os.makedirs(tmp_path / "c")
    os.rename(bad, tmp_path / "c" / "bad.png")
    message = f"class folder '{tmp_path}/c' holds no readable image file"
    with pytest.raises(FileNotFoundError, match=message):
        load("class_folder", str(tmp_path), skip_unreadable=True)


def test_a_class_left_without_training_images_is_named(tmp_path):
    write_folder(tmp_path, {"a": 4, "single": 1})
    # round(1 * 0.6) = 1: the only image of "single" would be held out.
    with pytest.raises(ValueError, match="leaves class 'single' \\(1 images\\) no training"):
        load("class_folder", str(tmp_path), test_fraction=0.6)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"test_fraction": 0.0}, ValueError, r"test_fraction must be in \(0, 1\), got 0.0"),
        ({"test_fraction": 1}, ValueError, r"test_fraction must be in \(0, 1\), got 1"),
        ({"test_fraction": 0.5, "test_dir": "{tmp}"}, ValueError, "not both"),
        ({"test_dir": "{tmp}/missing"}, FileNotFoundError, "test_dir '{tmp}/missing' does not"),
        ({"test_dir": "{tmp}"}, ValueError, "test_dir must differ from data_dir"),
    ],
)
def test_bad_split_arguments_are_named(tmp_path, kwargs, error, message):
    write_folder(tmp_path, {"a": 2})
    kwargs = {key: value.format(tmp=tmp_path) if isinstance(value, str) else value
              for key, value in kwargs.items()}
    with pytest.raises(error, match=message.format(tmp=tmp_path)):
        load("class_folder", str(tmp_path), **kwargs)


def test_split_arguments_are_refused_for_fixed_splits(tmp_path):
    with pytest.raises(ValueError, match="apply to dataset 'class_folder' only; dataset 'digits'"):
        load("digits", test_fraction=0.3)
    with pytest.raises(ValueError, match="apply to dataset 'class_folder' only"):
        load_evaluation_data("digits", test_dir=str(tmp_path))


def test_evaluation_data_are_the_same_splits_with_the_class_count(tmp_path):
    write_folder(tmp_path, {"a": 5, "b": 5, "c": 5})
    train, test, num_classes = load_evaluation_data("class_folder", str(tmp_path), seed=2)
    assert num_classes == 3
    (expected_train, expected_test), _ = load("class_folder", str(tmp_path), seed=2)
    for split, expected in ((train, expected_train), (test, expected_test)):
        np.testing.assert_array_equal(as_arrays(split)[0], as_arrays(expected)[0])
