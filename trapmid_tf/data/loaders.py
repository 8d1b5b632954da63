"""`load`: every dataset by name, as private train/test splits and a public set.

    (private_train, private_test), public = load("digits")

Private splits yield `(image, label)` with float32 HxWxC images in [0, 1] and int32
labels; the public split (the attacker's prior data) yields images only. All splits
are unbatched and have a known cardinality. Nothing is ever downloaded: datasets other
than "digits" are read from `data_dir`.
"""

import collections
import logging
import numbers
import os

import numpy as np
import tensorflow as tf

from trapmid_tf.data import digits, idx, images

# Classes 0..NUM_PRIVATE_CLASSES-1 are private; the others feed the public set.
NUM_PRIVATE_CLASSES = 5
DIGITS_TEST_FRACTION = 0.2

_logger = logging.getLogger(__name__)


class DatasetSplits(collections.namedtuple("DatasetSplits", ["private", "public"])):
    """What `load` returns: unpacks as `(private_train, private_test), public`.

    Attributes:
        private: `(train, test)` datasets of `(image, label)`, or None for a dataset
            with public data only ("folder").
        public: dataset of images.
        skipped_files: tuple of the image paths that `skip_unreadable=True` left out
            (not part of the tuple itself).
    """

    skipped_files = ()

    def __new__(cls, private, public, skipped_files=()):
        splits = super().__new__(cls, private, public)
        splits.skipped_files = tuple(skipped_files)
        return splits

    @property
    def skipped(self):
        """How many unreadable images were left out."""
        return len(self.skipped_files)


_DatasetSpec = collections.namedtuple(
    "_DatasetSpec", ["build", "image_size", "channels", "needs_files", "expected"]
)


def load(name, data_dir=None, *, image_size=None, channels=None, seed=0, skip_unreadable=False):
    """Loads a dataset as private train/test splits and a public split.

    Datasets (default image size and channels in brackets):
      - "digits" (32, 1): scikit-learn's 8x8 digits, embedded, no `data_dir`. Private:
        classes 0-4, 80/20 train/test per class (random, from `seed`). Public: 5-9.
      - "mnist", "fashion_mnist" (32, 1): the four IDX files in `data_dir`. Private:
        classes 0-4 of the train and test files. Public: classes 5-9 of the train file.
      - "celeba" (64, 3): `data_dir` holds `img_align_celeba/` and `celeba_trainset.txt`,
        `celeba_testset.txt`, `celeba_ganset.txt`; faces cropped to rows 55:163 and
        cols 35:143 before resizing.
      - "folder" (64, 3): every image below `data_dir`, as public data; `private` is None.
    Images are resized bilinearly with antialiasing; one channel is repeated to 3 when
    `channels=3`. File images are decoded lazily; see `trapmid_tf.data.images`.

    Args:
        name: one of the names above.
        data_dir: folder with the dataset files; must be None for "digits".
        image_size: side of the square output images; None for the dataset default.
        channels: 1 or 3; None for the dataset default.
        seed: int seed of the random splits ("digits"); other datasets ignore it.
        skip_unreadable: for image-file datasets, decode every image once now and
            leave out those that are missing or cannot be decoded; the paths are in
            the result's `skipped_files` (and `skipped` counts them) and a warning is
            logged. Without it a missing image raises now and an undecodable one
            raises when iterated, both naming the file.

    Returns:
        A `DatasetSplits(private, public)`.

    Raises:
        ValueError: for an unknown name or a bad argument.
        FileNotFoundError: if `data_dir` or a file it must hold is missing.
    """
    if not isinstance(name, str) or name not in _DATASETS:
        raise ValueError(f"name must be one of {sorted(_DATASETS)}, got {name!r}.")
    spec = _DATASETS[name]
    image_size = spec.image_size if image_size is None else image_size
    channels = spec.channels if channels is None else channels
    _check_arguments(image_size, channels, seed)
    _check_data_dir(name, spec, data_dir)
    splits = spec.build(
        data_dir=data_dir,
        image_size=int(image_size),
        channels=int(channels),
        seed=int(seed),
        skip_unreadable=bool(skip_unreadable),
    )
    if splits.skipped:
        _logger.warning(
            "Skipped %d unreadable image(s) of dataset %r, e.g. %s",
            splits.skipped,
            name,
            ", ".join(splits.skipped_files[:3]),
        )
    return splits


def _check_arguments(image_size, channels, seed):
    if not _is_int(image_size) or image_size < 1:
        raise ValueError(f"image_size must be None or an int >= 1, got {image_size!r}.")
    if not _is_int(channels) or channels not in (1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}.")
    if not _is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}.")


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_data_dir(name, spec, data_dir):
    if not spec.needs_files:
        if data_dir is not None:
            raise ValueError(
                f"dataset {name!r} is embedded: data_dir must be None, got {data_dir!r}."
            )
        return
    if data_dir is None or not os.path.isdir(data_dir):
        problem = "needs data_dir" if data_dir is None else f"data_dir {data_dir!r} does not exist"
        raise FileNotFoundError(
            f"dataset {name!r} {problem}: a folder holding {spec.expected}. "
            "Nothing is downloaded; put the files there and pass its path."
        )


def _load_digits(data_dir, image_size, channels, seed, skip_unreadable):
    del data_dir, skip_unreadable  # Embedded; no files.
    all_images, all_labels = digits.load_digits_arrays()
    private = all_labels < NUM_PRIVATE_CLASSES
    images_private, labels_private = all_images[private], all_labels[private]
    train, test = digits.stratified_split(labels_private, DIGITS_TEST_FRACTION, seed)
    return DatasetSplits(
        private=(
            _array_dataset(images_private[train], labels_private[train], image_size, channels),
            _array_dataset(images_private[test], labels_private[test], image_size, channels),
        ),
        public=_array_dataset(all_images[~private], None, image_size, channels),
    )


def _load_mnist_family(data_dir, image_size, channels, seed, skip_unreadable):
    del seed, skip_unreadable  # Fixed splits; no image files.
    train_images, train_labels, test_images, test_labels = idx.read_mnist_family(data_dir)
    train_images, test_images = train_images[..., np.newaxis], test_images[..., np.newaxis]
    private_train = train_labels < NUM_PRIVATE_CLASSES
    private_test = test_labels < NUM_PRIVATE_CLASSES
    return DatasetSplits(
        private=(
            _array_dataset(
                train_images[private_train], train_labels[private_train], image_size, channels
            ),
            _array_dataset(
                test_images[private_test], test_labels[private_test], image_size, channels
            ),
        ),
        public=_array_dataset(train_images[~private_train], None, image_size, channels),
    )


def _load_celeba(data_dir, image_size, channels, seed, skip_unreadable):
    del seed  # Fixed splits.
    train, test, public, skipped_files = images.celeba_splits(
        data_dir, image_size, channels, skip_unreadable
    )
    return DatasetSplits((train, test), public, skipped_files)


def _load_folder(data_dir, image_size, channels, seed, skip_unreadable):
    del seed  # No splits.
    public, skipped_files = images.folder_images(data_dir, image_size, channels, skip_unreadable)
    return DatasetSplits(None, public, skipped_files)


def _array_dataset(image_array, labels, image_size, channels):
    """In-memory images (NHWC, uint8 or float in [0, 1]) prepared lazily per element."""

    def prepare(image):
        return images.prepare_image(image, image_size, channels)

    if labels is None:
        return tf.data.Dataset.from_tensor_slices(image_array).map(prepare)
    dataset = tf.data.Dataset.from_tensor_slices((image_array, labels.astype(np.int32)))
    return dataset.map(lambda image, label: (prepare(image), label))


_MNIST_EXPECTED = f"the four IDX files {sorted(idx.MNIST_FILES.values())} (each optionally .gz)"
_DATASETS = {
    "digits": _DatasetSpec(_load_digits, 32, 1, needs_files=False, expected=None),
    "mnist": _DatasetSpec(_load_mnist_family, 32, 1, needs_files=True, expected=_MNIST_EXPECTED),
    "fashion_mnist": _DatasetSpec(
        _load_mnist_family, 32, 1, needs_files=True, expected=_MNIST_EXPECTED
    ),
    "celeba": _DatasetSpec(
        _load_celeba,
        64,
        3,
        needs_files=True,
        expected=f"{images.CELEBA_IMAGE_DIR}/ and {sorted(images.CELEBA_SPLIT_FILES.values())}",
    ),
    "folder": _DatasetSpec(
        _load_folder,
        64,
        3,
        needs_files=True,
        expected=f"image files ({', '.join(images.IMAGE_EXTENSIONS)}), in subfolders or not",
    ),
}
