"""CelebA and image-folder loading, on tiny synthetic image files."""

import io
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from trapmid_tf.data.loaders import load

_HEIGHT, _WIDTH = 218, 178  # aligned CelebA images


def _save(path, array, format=None, **options):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, format=format, **options)


def _face_in_crop_box():
    """A CelebA-sized image: white exactly in rows 55:163, cols 35:143, black elsewhere."""
    image = np.zeros((_HEIGHT, _WIDTH, 3), np.uint8)
    image[55:163, 35:143] = 255
    return image


def _truncated_jpeg():
    buffer = io.BytesIO()
    Image.fromarray(_face_in_crop_box()).save(buffer, format="JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def _write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")


@pytest.fixture
def celeba_dir(tmp_path):
    """Train: 3 faces (labels 4, 0, 4); test: 1 face (label 2); public: 2 faces."""
    image_dir = tmp_path / "img_align_celeba"
    for index in range(1, 6):
        _save(str(image_dir / f"{index:06d}.jpg"), _face_in_crop_box(), quality=100, subsampling=0)
    _write_lines(
        tmp_path / "celeba_trainset.txt", ["000001.jpg 4", "000002.jpg 0", "", "000003.jpg 4"]
    )
    _write_lines(tmp_path / "celeba_testset.txt", ["000004.jpg 2"])
    _write_lines(tmp_path / "celeba_ganset.txt", ["000005.jpg", "000001.jpg 17"])
    return tmp_path


def _labelled(dataset):
    elements = list(dataset.as_numpy_iterator())
    return np.stack([x for x, _ in elements]), np.array([y for _, y in elements])


def test_celeba_crops_the_face_box(celeba_dir):
    (train, test), public = load("celeba", str(celeba_dir), image_size=16)
    x_train, y_train = _labelled(train)
    assert x_train.shape == (3, 16, 16, 3) and x_train.dtype == np.float32
    # A crop one pixel off would pull black into the border (about 0.85 there).
    assert x_train.min() > 0.97 and x_train.max() <= 1.0
    np.testing.assert_array_equal(y_train, [4, 0, 4])
    assert y_train.dtype == np.int32
    x_test, y_test = _labelled(test)
    np.testing.assert_array_equal(y_test, [2])
    assert x_test.min() > 0.97
    images = np.stack(list(public.as_numpy_iterator()))
    assert images.shape == (2, 16, 16, 3) and images.min() > 0.97
    assert [int(d.cardinality()) for d in (train, test, public)] == [3, 1, 2]


def test_celeba_default_size_is_64(celeba_dir):
    (train, _), public = load("celeba", str(celeba_dir))
    assert train.element_spec[0].shape == (64, 64, 3)
    assert public.element_spec.shape == (64, 64, 3)


def test_celeba_crop_is_exact_at_native_size(celeba_dir):
    pixels = np.random.default_rng(0).integers(0, 256, (_HEIGHT, _WIDTH, 3), dtype=np.uint8)
    _save(str(celeba_dir / "img_align_celeba" / "random.png"), pixels)
    _write_lines(celeba_dir / "celeba_testset.txt", ["random.png 1"])
    (_, test), _ = load("celeba", str(celeba_dir), image_size=108)
    x, y = next(test.as_numpy_iterator())
    np.testing.assert_allclose(x, pixels[55:163, 35:143] / 255, rtol=1e-6)
    assert y == 1


def test_celeba_missing_split_file_names_it(celeba_dir):
    os.remove(celeba_dir / "celeba_ganset.txt")
    with pytest.raises(FileNotFoundError, match="celeba_ganset.txt.*Nothing is downloaded"):
        load("celeba", str(celeba_dir))


def test_celeba_missing_image_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="img_align_celeba"):
        load("celeba", str(tmp_path))


def test_celeba_malformed_split_line_names_file_and_line(celeba_dir):
    _write_lines(celeba_dir / "celeba_trainset.txt", ["000001.jpg 4", "000002.jpg zero"])
    with pytest.raises(ValueError, match=r"celeba_trainset.txt:2: expected 'filename label'"):
        load("celeba", str(celeba_dir))


def test_celeba_listed_image_missing(celeba_dir):
    _write_lines(celeba_dir / "celeba_testset.txt", ["000004.jpg 2", "gone.jpg 3"])
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        load("celeba", str(celeba_dir))
    splits = load("celeba", str(celeba_dir), image_size=8, skip_unreadable=True)
    assert splits.skipped == 1
    assert splits.skipped_files == (str(celeba_dir / "img_align_celeba" / "gone.jpg"),)
    (_, test), _ = splits
    np.testing.assert_array_equal(_labelled(test)[1], [2])


@pytest.mark.parametrize("content", [b"this is not an image", _truncated_jpeg()])
def test_celeba_corrupt_image_error_names_it_and_can_be_skipped(celeba_dir, caplog, content):
    (celeba_dir / "img_align_celeba" / "bad.jpg").write_bytes(content)
    _write_lines(celeba_dir / "celeba_trainset.txt", ["000001.jpg 4", "bad.jpg 1", "000003.jpg 3"])

    (train, _), _ = load("celeba", str(celeba_dir), image_size=8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="cannot read image.*bad.jpg"):
        list(train.as_numpy_iterator())

    with caplog.at_level(logging.WARNING):
        splits = load("celeba", str(celeba_dir), image_size=8, skip_unreadable=True)
    assert splits.skipped == 1
    assert splits.skipped_files[0].endswith("bad.jpg")
    assert "bad.jpg" in caplog.text
    (train, _), _ = splits
    assert int(train.cardinality()) == 2
    np.testing.assert_array_equal(_labelled(train)[1], [4, 3])


def test_celeba_image_smaller_than_crop_names_it(celeba_dir):
    _save(str(celeba_dir / "img_align_celeba" / "small.jpg"), np.zeros((100, 100, 3), np.uint8))
    _write_lines(celeba_dir / "celeba_testset.txt", ["small.jpg 0"])
    (_, test), _ = load("celeba", str(celeba_dir), image_size=8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="small.jpg.*100x100"):
        list(test.as_numpy_iterator())


@pytest.fixture
def image_folder(tmp_path):
    """Three solid-colour images in nested folders, plus a file that is not an image."""
    _save(str(tmp_path / "a" / "red.png"), np.full((10, 6, 3), (255, 0, 0), np.uint8))
    _save(str(tmp_path / "a" / "b" / "gray.JPG"), np.full((12, 12, 3), 128, np.uint8), quality=100)
    _save(str(tmp_path / "c.bmp"), np.full((5, 7, 3), (0, 0, 255), np.uint8))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    return tmp_path


def test_folder_reads_all_images_recursively_in_path_order(image_folder):
    splits = load("folder", str(image_folder), image_size=8)
    assert splits.private is None and splits.skipped == 0
    images = np.stack(list(splits.public.as_numpy_iterator()))
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.float32
    # Sorted paths: a/b/gray.JPG, a/red.png, c.bmp.
    np.testing.assert_allclose(images[0], np.full((8, 8, 3), 128 / 255), atol=2 / 255)
    np.testing.assert_allclose(images[1], np.broadcast_to([1.0, 0.0, 0.0], (8, 8, 3)), atol=1e-6)
    np.testing.assert_allclose(images[2], np.broadcast_to([0.0, 0.0, 1.0], (8, 8, 3)), atol=1e-6)


def test_folder_default_size_and_one_channel(image_folder):
    _, public = load("folder", str(image_folder))
    assert public.element_spec.shape == (64, 64, 3)
    _, public = load("folder", str(image_folder), image_size=4, channels=1)
    assert public.element_spec.shape == (4, 4, 1)
    assert int(public.cardinality()) == 3


def test_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="no image files"):
        load("folder", str(tmp_path))


def test_folder_corrupt_image_skipped(image_folder):
    (image_folder / "broken.png").write_bytes(b"\x89PNG garbage")
    _, public = load("folder", str(image_folder), image_size=4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="broken.png"):
        list(public.as_numpy_iterator())
    splits = load("folder", str(image_folder), image_size=4, skip_unreadable=True)
    assert splits.skipped_files == (str(image_folder / "broken.png"),)
    assert len(list(splits.public.as_numpy_iterator())) == 3
