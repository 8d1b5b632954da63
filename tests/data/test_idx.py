"""IDX parsing and the MNIST-family loader, on tiny IDX files written here."""

import gzip
import os
import struct

import numpy as np
import pytest

from trapmid_tf.data.idx import read_idx
from trapmid_tf.data import loaders
from trapmid_tf.data.loaders import load, load_evaluation_data
from trapmid_tf.experiments.target_config import resolve_config

_TYPE_CODES = {np.dtype("uint8"): 0x08, np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D}


def _idx_bytes(array):
    header = bytes([0, 0, _TYPE_CODES[array.dtype], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write(path, data):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as file:
        file.write(data)
    return str(path)


@pytest.mark.parametrize("name", ["plain-idx", "packed-idx.gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-70000, 1, 2**30], dtype=np.int32),
        np.array([[0.5, -1.25]], dtype=np.float32),
    ],
)
def test_read_idx_round_trip(tmp_path, name, array):
    path = _write(tmp_path / name, _idx_bytes(array))
    loaded = read_idx(path)
    assert loaded.dtype == array.dtype
    np.testing.assert_array_equal(loaded, array)


def test_truncated_file_is_an_error_naming_it(tmp_path):
    data = _idx_bytes(np.zeros((3, 4, 4), np.uint8))
    path = _write(tmp_path / "cut-idx3-ubyte", data[:-5])
    with pytest.raises(ValueError, match="cut-idx3-ubyte.*truncated"):
        read_idx(path)


def test_truncated_header_is_an_error(tmp_path):
    path = _write(tmp_path / "header-idx", _idx_bytes(np.zeros((3, 4, 4), np.uint8))[:9])
    with pytest.raises(ValueError, match="header-idx.*truncated"):
        read_idx(path)


def test_extra_bytes_are_an_error(tmp_path):
    path = _write(tmp_path / "long-idx", _idx_bytes(np.zeros(4, np.uint8)) + b"\x00")
    with pytest.raises(ValueError, match="long-idx"):
        read_idx(path)


def test_bad_magic_is_an_error(tmp_path):
    path = _write(tmp_path / "not-idx", b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(ValueError, match="not-idx.*magic"):
        read_idx(path)


def test_truncated_gzip_is_an_error_naming_it(tmp_path):
    compressed = gzip.compress(_idx_bytes(np.arange(200, dtype=np.uint8)))
    path = tmp_path / "broken-idx.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(ValueError, match="broken-idx.gz"):
        read_idx(str(path))


def _write_mnist(folder, gz_names=()):
    """Writes tiny MNIST files: 20 train and 10 test 4x4 images; returns the arrays."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (20, 4, 4), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array(list(range(10)) * 2, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 4, 4), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([9, 0, 8, 1, 7, 2, 6, 3, 5, 4], dtype=np.uint8),
    }
    for name, array in arrays.items():
        suffix = ".gz" if name in gz_names else ""
        _write(os.path.join(folder, name + suffix), _idx_bytes(array))
    return arrays


def _arrays(dataset):
    elements = list(dataset.as_numpy_iterator())
    if isinstance(elements[0], tuple):
        return np.stack([x for x, _ in elements]), np.array([y for _, y in elements])
    return np.stack(elements)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mnist_splits_by_class(tmp_path, name):
    arrays = _write_mnist(tmp_path, gz_names=("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
    train_images = arrays["train-images-idx3-ubyte"]
    train_labels = arrays["train-labels-idx1-ubyte"]
    test_images = arrays["t10k-images-idx3-ubyte"]
    test_labels = arrays["t10k-labels-idx1-ubyte"]

    (train, test), public = load(name, str(tmp_path), image_size=4)

    x_train, y_train = _arrays(train)
    np.testing.assert_allclose(x_train[..., 0], train_images[train_labels < 5] / 255, rtol=1e-6)
    np.testing.assert_array_equal(y_train, train_labels[train_labels < 5])
    assert y_train.dtype == np.int32
    x_test, y_test = _arrays(test)
    np.testing.assert_allclose(x_test[..., 0], test_images[test_labels < 5] / 255, rtol=1e-6)
    np.testing.assert_array_equal(y_test, test_labels[test_labels < 5])
    np.testing.assert_allclose(
        _arrays(public)[..., 0], train_images[train_labels >= 5] / 255, rtol=1e-6
    )


def test_mnist_default_size_and_three_channels(tmp_path):
    _write_mnist(tmp_path)
    (train, _), public = load("mnist", str(tmp_path))
    assert train.element_spec[0].shape == (32, 32, 1)
    assert int(train.cardinality()) == 10 and int(public.cardinality()) == 10
    (train, _), _ = load("mnist", str(tmp_path), image_size=8, channels=3)
    x, _ = next(train.as_numpy_iterator())
    assert x.shape == (8, 8, 3)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


def test_mnist_missing_file_names_it(tmp_path):
    _write_mnist(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.*Nothing is downloaded"):
        load("mnist", str(tmp_path))


def test_mnist_count_mismatch_is_an_error(tmp_path):
    _write_mnist(tmp_path)
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx_bytes(np.zeros(9, np.uint8)))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*10 images.*9 labels"):
        load("mnist", str(tmp_path))


def test_mnist_wrong_rank_is_an_error(tmp_path):
    _write_mnist(tmp_path)
    _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(np.zeros((20, 1), np.uint8)))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.*rank 1"):
        load("mnist", str(tmp_path))


def test_mnist_samples_split_moves_half_of_each_private_class_to_the_public(tmp_path):
    arrays = _write_mnist(tmp_path)
    train_labels = arrays["train-labels-idx1-ubyte"]
    (train, test), public = load("mnist", str(tmp_path), image_size=4, public_split="samples")
    _, y_train = _arrays(train)
    _, y_test = _arrays(test)
    # Two training images per class: one stays private, one becomes public.
    np.testing.assert_array_equal(np.bincount(y_train, minlength=5), [1] * 5)
    assert len(y_test) == 5
    assert len(_arrays(public)) == np.sum(train_labels >= 5) + 5


def test_mnist_evaluation_data_is_all_ten_classes(tmp_path):
    arrays = _write_mnist(tmp_path)
    train, test, num_classes = load_evaluation_data("mnist", str(tmp_path), image_size=4)
    assert num_classes == 10
    np.testing.assert_array_equal(_arrays(train)[1], arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(_arrays(test)[1], arrays["t10k-labels-idx1-ubyte"])


def test_fashion_mnist_without_data_dir_is_read_from_the_first_default_folder(
        tmp_path, monkeypatch):
    empty, partial, complete, later = (tmp_path / name for name in ("a", "b", "c", "d"))
    for folder in (empty, partial, complete, later):
        folder.mkdir()
    _write_mnist(partial)
    os.remove(partial / "t10k-labels-idx1-ubyte")  # three of four files: not a dataset
    arrays = _write_mnist(complete, gz_names=("train-images-idx3-ubyte",))
    _write_mnist(later)
    folders = tuple(str(folder) for folder in (empty, partial, complete, later))
    monkeypatch.setitem(loaders.DEFAULT_FOLDERS, "fashion_mnist", folders)
    assert loaders.default_data_dir("fashion_mnist") == str(complete)
    assert loaders.default_data_dir("mnist") is None  # no default folders
    (train, _), _ = load("fashion_mnist", image_size=4)
    labels = arrays["train-labels-idx1-ubyte"]
    np.testing.assert_array_equal(_arrays(train)[1], labels[labels < 5])


def test_fashion_mnist_found_nowhere_says_where_it_looked_and_how_to_supply_it(
        tmp_path, monkeypatch):
    monkeypatch.setitem(loaders.DEFAULT_FOLDERS, "fashion_mnist", (str(tmp_path),))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as error:
        load("fashion_mnist")
    assert str(tmp_path) in str(error.value) and "data_dir" in str(error.value)
    with pytest.raises(FileNotFoundError, match="needs data_dir"):
        load("mnist")


def test_target_settings_without_data_dir_take_the_default_folder(tmp_path, monkeypatch):
    # Regression: resolve_config checked isdir(None) when the default folder held the files.
    _write_mnist(tmp_path)
    monkeypatch.setitem(loaders.DEFAULT_FOLDERS, "fashion_mnist", (str(tmp_path),))
    config = resolve_config(dict(dataset="fashion_mnist", model="small_cnn"))
    assert config["data_dir"] is None  # loaded from the default folder at training time
    monkeypatch.setitem(loaders.DEFAULT_FOLDERS, "fashion_mnist", (str(tmp_path / "none"),))
    with pytest.raises(ValueError, match="`data_dir`, which is not set"):
        resolve_config(dict(dataset="fashion_mnist", model="small_cnn"))
