"""FFHQ and FaceScrub as named datasets, and the training flip, on tiny synthetic folders.

Expected images are sliced from the source arrays directly (NumPy), at output sizes equal to
the crop so the final bilinear resize is the identity: float32 conversion of k/255 and an
identity resize agree within a few float32 ulps, hence 1e-6.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import trapmid_tf as tm
from trapmid_tf.data import images

ATOL = 1e-6


def save_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def random_image(rng, height, width):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def public_images(dataset):
    return np.stack(list(dataset.as_numpy_iterator()))


@pytest.fixture
def ffhq_dir(tmp_path):
    """Three 128x128 thumbnails and one 256x256 image (brought to 128 first)."""
    rng = np.random.default_rng(0)
    sources = {}
    for index in range(3):
        name = f"00000/{index:05d}.png"
        sources[name] = random_image(rng, 128, 128)
        save_png(tmp_path / images.FFHQ_IMAGE_DIR / name, sources[name])
    sources["01000/01000.png"] = random_image(rng, 256, 256)
    save_png(tmp_path / images.FFHQ_IMAGE_DIR / "01000/01000.png", sources["01000/01000.png"])
    (tmp_path / images.FFHQ_SPLIT_FILE).write_text("\n".join(sources) + "\n")
    return tmp_path, sources


def test_ffhq_is_the_centre_88_crop_of_the_128_thumbnail(ffhq_dir):
    data_dir, sources = ffhq_dir
    splits = tm.data.load("ffhq", str(data_dir), image_size=88)
    assert splits.private is None
    loaded = public_images(splits.public)
    assert loaded.shape == (4, 88, 88, 3)
    for image, (name, source) in zip(loaded, sources.items()):
        if source.shape[0] != 128:  # the reference's PIL antialiased resize to 128 first
            source = np.asarray(Image.fromarray(source).resize((128, 128), Image.LANCZOS))
        np.testing.assert_allclose(image, source[20:108, 20:108] / 255.0, atol=ATOL, err_msg=name)
    assert public_images(tm.data.load("ffhq", str(data_dir)).public).shape == (4, 64, 64, 3)


def test_ffhq_without_its_split_file_says_where_it_goes(ffhq_dir):
    data_dir, _ = ffhq_dir
    os.remove(data_dir / images.FFHQ_SPLIT_FILE)
    with pytest.raises(FileNotFoundError, match="ffhq_ganset.txt.*plgmi/data_files"):
        tm.data.load("ffhq", str(data_dir))


@pytest.fixture
def facescrub_dir(tmp_path):
    """Two 64x64 faces, one 100x80 face (brought to 64x64), one unreadable file."""
    rng = np.random.default_rng(1)
    sources = {
        "faceScrub/Ann_A/face/a.png": random_image(rng, 64, 64),
        "faceScrub/Ann_A/face/b.png": random_image(rng, 100, 80),
        "faceScrub/Bob_B/face/c.png": random_image(rng, 64, 64),
    }
    for name, source in sources.items():
        save_png(tmp_path / name, source)
    (tmp_path / "faceScrub/Bob_B/face/bad.jpg").write_bytes(b"not an image")
    lines = list(sources) + ["faceScrub/Bob_B/face/bad.jpg"]
    (tmp_path / images.FACESCRUB_SPLIT_FILE).write_text("\n".join(lines) + "\n")
    return tmp_path, sources


def test_facescrub_faces_are_brought_to_64_and_unreadable_ones_skipped(facescrub_dir):
    data_dir, sources = facescrub_dir
    splits = tm.data.load("facescrub", str(data_dir), skip_unreadable=True)
    assert splits.private is None
    assert splits.skipped_files == (str(data_dir / "faceScrub/Bob_B/face/bad.jpg"),)
    loaded = public_images(splits.public)
    assert loaded.shape == (3, 64, 64, 3)
    for image, source in zip(loaded, sources.values()):
        if source.shape[:2] != (64, 64):
            source = np.asarray(Image.fromarray(source).resize((64, 64), Image.LANCZOS))
        np.testing.assert_allclose(image, source / 255.0, atol=ATOL)


def test_facescrub_unreadable_image_is_named_without_the_flag(facescrub_dir):
    data_dir, _ = facescrub_dir
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad.jpg"):
        public_images(tm.data.load("facescrub", str(data_dir)).public)


@pytest.mark.parametrize("name", ["ffhq", "facescrub"])
def test_public_only_faces_have_no_evaluation_data(name, tmp_path):
    with pytest.raises(ValueError, match="name must be one of .*'celeba'"):
        tm.data.load_evaluation_data(name, str(tmp_path))


def test_random_flip_gives_each_image_or_its_mirror_and_both_occur():
    rng = np.random.default_rng(2)
    source = rng.uniform(size=(64, 4, 6, 3)).astype("float32")
    labels = np.arange(64, dtype=np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((source, labels))
    flipped = list(tm.data.random_horizontal_flip(dataset, seed=7).as_numpy_iterator())
    mirrored = []
    for (image, label), original in zip(flipped, source):
        assert label == len(mirrored)  # labels pass through, order kept
        if np.array_equal(image, original[:, ::-1]):
            mirrored.append(True)
        else:
            np.testing.assert_array_equal(image, original)
            mirrored.append(False)
    assert 0 < sum(mirrored) < len(mirrored)
    # Stateless: the same seed flips the same images; another seed flips others.
    again = [image for image, _ in tm.data.random_horizontal_flip(dataset, seed=7)]
    np.testing.assert_array_equal(np.stack(again), np.stack([x for x, _ in flipped]))
    other = np.stack([x for x, _ in tm.data.random_horizontal_flip(dataset, seed=8)])
    assert not np.array_equal(other, np.stack([x for x, _ in flipped]))


def test_random_flip_of_an_image_only_dataset():
    source = np.arange(2 * 3 * 5 * 1, dtype="float32").reshape(2, 3, 5, 1)
    flipped = list(tm.data.random_horizontal_flip(
        tf.data.Dataset.from_tensor_slices(source), seed=0).as_numpy_iterator())
    for image, original in zip(flipped, source):
        assert np.array_equal(image, original) or np.array_equal(image, original[:, ::-1])
