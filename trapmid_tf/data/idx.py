"""IDX files (the MNIST family format), plain or gzip-compressed.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values in C order.
"""

import gzip
import os
import struct
import zlib

import numpy as np

_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path):
    """Reads one IDX file.

    Args:
        path: the file; a name ending in `.gz` is decompressed.

    Returns:
        A numpy array with the file's shape and a native-endian dtype.

    Raises:
        ValueError: if the file cannot be decompressed, its magic number is not an IDX
            one, or its length does not match the shape in its header (truncated or
            corrupt); the message names the file.
    """
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path!r} is not an IDX file: expected a magic number 0x0000TTNN with a type "
            f"code TT in {sorted(hex(code) for code in _IDX_DTYPES)}, got 0x{raw[:4].hex()}."
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(
            f"{path!r} is truncated: its header needs {header_size} bytes for {ndim} "
            f"dimensions, the file has {len(raw)}."
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header_size
    if found != expected:
        raise ValueError(
            f"{path!r} is truncated or corrupt: shape {shape} of {dtype.name} needs "
            f"{expected} data bytes, the file has {found}."
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def read_mnist_family(data_dir):
    """Reads the four standard MNIST / Fashion-MNIST IDX files of a folder.

    Args:
        data_dir: folder holding `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
            `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each optionally `.gz`.

    Returns:
        `(train_images, train_labels, test_images, test_labels)`: uint8 images of shape
        (N, H, W) and int32 labels of shape (N,).

    Raises:
        FileNotFoundError: if one of the four files is missing.
        ValueError: if a file is corrupt, or images and labels do not match.
    """
    arrays = {}
    for key, stem in MNIST_FILES.items():
        path = _find_idx_file(data_dir, stem)
        array = read_idx(path)
        expected_ndim = 3 if key.endswith("images") else 1
        if array.ndim != expected_ndim or array.dtype != np.uint8:
            raise ValueError(
                f"{path!r}: expected uint8 data of rank {expected_ndim}, got "
                f"{array.dtype.name} of shape {array.shape}."
            )
        arrays[key] = (path, array)
    splits = []
    for split in ("train", "test"):
        images_path, images = arrays[f"{split}_images"]
        labels_path, labels = arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise ValueError(
                f"{images_path!r} holds {len(images)} images but {labels_path!r} holds "
                f"{len(labels)} labels; they must match."
            )
        splits += [images, labels.astype(np.int32)]
    return tuple(splits)


def find_idx_file(data_dir, stem):
    """The IDX file `stem` (or `stem.gz`) in `data_dir`, or None if neither exists."""
    for name in (stem, stem + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return path
    return None


def _find_idx_file(data_dir, stem):
    path = find_idx_file(data_dir, stem)
    if path:
        return path
    raise FileNotFoundError(
        f"{os.path.join(data_dir, stem)!r} (or its .gz) not found: the MNIST-family loader "
        f"expects the four IDX files {sorted(MNIST_FILES.values())} in data_dir "
        f"{data_dir!r}. Nothing is downloaded; copy them there."
    )


def _read_bytes(path):
    if not path.endswith(".gz"):
        with open(path, "rb") as file:
            return file.read()
    try:
        with gzip.open(path, "rb") as file:
            return file.read()
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path!r} is not a readable gzip file: {error}") from error
