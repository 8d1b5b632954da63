"""`load`: every dataset by name, as private train/test splits and a public set.

    (private_train, private_test), public = load("digits")

Private splits yield `(image, label)` with float32 HxWxC images in [0, 1] and int32
labels; the public split (the attacker's prior data) yields images only. All splits
are unbatched and have a known cardinality. Nothing is ever downloaded: datasets other
than "digits" are read from `data_dir`; without one, Fashion-MNIST is also looked for where
Debian's `dataset-fashion-mnist` package and Keras's own download
(`keras.datasets.fashion_mnist.load_data()`) put it (`default_data_dir`).
"""

import collections
import logging
import numbers
import os

import numpy as np
import tensorflow as tf

from trapmid_tf.data import digits, idx, images
from trapmid_tf.validation import is_integer

# Classes 0..NUM_PRIVATE_CLASSES-1 are private; the others feed the public set.
NUM_PRIVATE_CLASSES = 5
DIGITS_TEST_FRACTION = 0.2
# How the digit datasets find their public (attacker) data; see `load`.
PUBLIC_SPLITS = ("classes", "samples")
# With public_split="samples", this fraction of each private class's training pool is public.
PUBLIC_SAMPLE_FRACTION = 0.5
# The reference's CelebA private set: 1,000 identities, labels 0..999.
CELEBA_PRIVATE_IDENTITIES = 1000
# "class_folder" without test_dir: the fraction of each class held out for testing.
CLASS_FOLDER_TEST_FRACTION = 0.2

_logger = logging.getLogger(__name__)


def _keras_dataset_folders(subfolder):
    """Where Keras's dataset download stores `subfolder`: its home, or /tmp/.keras."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return tuple(os.path.join(base, "datasets", subfolder) for base in (home, "/tmp/.keras"))


# Folders searched, in order, for a dataset's files when no data_dir is given.
DEFAULT_FOLDERS = {
    "fashion_mnist": (
        *_keras_dataset_folders("fashion-mnist"), "/usr/share/datasets/fashion-mnist",
    ),
}


class DatasetSplits(collections.namedtuple("DatasetSplits", ["private", "public"])):
    """What `load` returns: unpacks as `(private_train, private_test), public`.

    Attributes:
        private: `(train, test)` datasets of `(image, label)`, or None for a dataset
            with public data only ("folder").
        public: dataset of images, or None for a dataset with private data only
            ("class_folder").
        skipped_files: tuple of the image paths that `skip_unreadable=True` left out
            (not part of the tuple itself).
        class_names: tuple of the class names, index = label ("class_folder"; else
            empty; not part of the tuple itself).
    """

    skipped_files = ()
    class_names = ()

    def __new__(cls, private, public, skipped_files=(), class_names=()):
        splits = super().__new__(cls, private, public)
        splits.skipped_files = tuple(skipped_files)
        splits.class_names = tuple(class_names)
        return splits

    @property
    def skipped(self):
        """How many unreadable images were left out."""
        return len(self.skipped_files)


_DatasetSpec = collections.namedtuple(
    "_DatasetSpec",
    [
        "build", "image_size", "channels", "needs_files", "expected", "digit_classes",
        "labelled", "held_out",
    ],
    defaults=[False, True, False],
)


def load(
    name,
    data_dir=None,
    *,
    image_size=None,
    channels=None,
    seed=0,
    skip_unreadable=False,
    public_split="classes",
    test_dir=None,
    test_fraction=None,
):
    """Loads a dataset as private train/test splits and a public split.

    Datasets (default image size and channels in brackets):
      - "digits" (32, 1): scikit-learn's 8x8 digits, embedded, no `data_dir`. Private:
        classes 0-4, 80/20 train/test per class (random, from `seed`). Public: 5-9.
      - "mnist", "fashion_mnist" (32, 1): the four IDX files in `data_dir`. Private:
        classes 0-4 of the train and test files. Public: classes 5-9 of the train file.
      For these three, `public_split="samples"` instead makes the public set a disjoint
      random half (from `seed`) of each private class's training images, unlabelled, plus
      every image of classes 5-9: the attacker then holds in-distribution data of the
      private classes, but never the private images themselves.
      - "celeba" (64, 3): `data_dir` holds `img_align_celeba/` and `celeba_trainset.txt`,
        `celeba_testset.txt`, `celeba_ganset.txt`; faces cropped to rows 55:163 and
        cols 35:143 before resizing.
      - "ffhq" (64, 3): public data only (`private` is None): `data_dir` holds
        `thumbnails128x128/` and the reference's `ffhq_ganset.txt`; thumbnails brought
        to 128x128, centre-cropped to 88x88.
      - "facescrub" (64, 3): public data only: `data_dir` holds `faceScrub/` and the
        reference's `facescrub_ganset.txt` (paths relative to `data_dir`); faces brought
        to 64x64 (PIL antialiasing).
      - "folder" (64, 3): every image below `data_dir`, as public data; `private` is None.
      - "class_folder" (the files' size and channels): labelled images in the layout of
        `keras.utils.image_dataset_from_directory`, one subfolder of `data_dir` per class,
        label = index of the subfolder name in sorted order; `public` is None. The test
        split is `test_dir` (the same class subfolders) or else `test_fraction` (default
        `CLASS_FOLDER_TEST_FRACTION`) of each class, drawn with `seed`. Without
        `image_size` every image must have one size, which is kept (not necessarily
        square); without `channels`, 1 if every image is grayscale, else 3 (grayscale
        files then repeated to RGB). `class_names` of the result names the labels. See
        `trapmid_tf.data.images.class_folder_splits`.
    Images are resized bilinearly with antialiasing; one channel is repeated to 3 when
    `channels=3`. File images are decoded lazily; see `trapmid_tf.data.images`. No split
    is augmented: the reference's random flip of CelebA's training images is
    `random_horizontal_flip`, applied per epoch after any caching.

    Args:
        name: one of the names above.
        data_dir: folder with the dataset files; must be None for "digits".
        image_size: side of the square output images; None for the dataset default.
        channels: 1 or 3; None for the dataset default.
        seed: int seed of the random splits ("digits", "class_folder"); others ignore it.
        public_split: "classes" (the reference's split, above) or "samples"; only the
            digit datasets accept "samples".
        skip_unreadable: for image-file datasets, decode every image once now and
            leave out those that are missing or cannot be decoded; the paths are in
            the result's `skipped_files` (and `skipped` counts them) and a warning is
            logged. Without it a missing image raises now and an undecodable one
            raises when iterated, both naming the file.
        test_dir: "class_folder" only: folder of the test images, same class subfolders.
        test_fraction: "class_folder" only, without `test_dir`: fraction of each class
            held out for testing, in (0, 1).

    Returns:
        A `DatasetSplits(private, public)`.

    Raises:
        ValueError: for an unknown name or a bad argument.
        FileNotFoundError: if `data_dir` or a file it must hold is missing.

    Example:
        >>> (train, test), public = load("digits", public_split="samples")
        >>> [int(split.cardinality()) for split in (train, test, public)]
        [361, 180, 1256]
        >>> train.element_spec[0].shape, train.element_spec[1].dtype
        (TensorShape([32, 32, 1]), tf.int32)
    """
    if not isinstance(name, str) or name not in _DATASETS:
        raise ValueError(f"name must be one of {sorted(_DATASETS)}, got {name!r}.")
    spec = _DATASETS[name]
    image_size = spec.image_size if image_size is None else image_size
    channels = spec.channels if channels is None else channels
    _check_arguments(image_size, channels, seed)
    _check_public_split(name, public_split)
    data_dir = _checked_data_dir(name, spec, data_dir)
    build_options = dict(
        data_dir=data_dir,
        image_size=None if image_size is None else int(image_size),
        channels=None if channels is None else int(channels),
        seed=int(seed),
        skip_unreadable=bool(skip_unreadable),
    )
    if spec.digit_classes:
        build_options["public_split"] = public_split
    build_options.update(_held_out_options(name, data_dir, test_dir, test_fraction))
    splits = spec.build(**build_options)
    if splits.skipped:
        _logger.warning(
            "Skipped %d unreadable image(s) of dataset %r, e.g. %s",
            splits.skipped,
            name,
            ", ".join(splits.skipped_files[:3]),
        )
    return splits


def load_evaluation_data(
    name, data_dir=None, *, image_size=None, channels=None, seed=0, test_dir=None,
    test_fraction=None,
):
    """Labelled train/test splits for the attack evaluation model of a dataset.

    The evaluation model judges reconstructions, as a human would; like the reference it
    may see the private training images. "digits": all ten classes, 80/20 per class
    (random, from `seed`); "mnist", "fashion_mnist": all ten classes of the train and
    test files (the reference's MNIST evaluator); "celeba": the private identities'
    train/test splits; "class_folder": its splits, as `load` makes them. "ffhq",
    "facescrub" and "folder" have no labels and raise.

    Args:
        name, data_dir, image_size, channels, test_dir, test_fraction: as in `load`.
        seed: int seed of the digits and class-folder splits.

    Returns:
        `(train, test, num_classes)`: unbatched datasets of `(image, label)` and the
        number of classes.

    Raises:
        ValueError: for an unknown or unlabelled dataset or a bad argument.
        FileNotFoundError: if `data_dir` or a file it must hold is missing.
    """
    if name not in _DATASETS or not _DATASETS[name].labelled:
        labelled = sorted(key for key, spec in _DATASETS.items() if spec.labelled)
        raise ValueError(f"name must be one of {labelled}, got {name!r}.")
    spec = _DATASETS[name]
    image_size = spec.image_size if image_size is None else image_size
    channels = spec.channels if channels is None else channels
    _check_arguments(image_size, channels, seed)
    data_dir = _checked_data_dir(name, spec, data_dir)
    _held_out_options(name, data_dir, test_dir, test_fraction)
    if name == "celeba":
        (train, test), _ = load(name, data_dir, image_size=image_size, channels=channels)
        return train, test, CELEBA_PRIVATE_IDENTITIES
    if spec.held_out:
        splits = load(
            name, data_dir, image_size=image_size, channels=channels, seed=seed,
            test_dir=test_dir, test_fraction=test_fraction,
        )
        return (*splits.private, len(splits.class_names))
    if name == "digits":
        all_images, all_labels = digits.load_digits_arrays()
        train, test = digits.stratified_split(all_labels, DIGITS_TEST_FRACTION, seed)
        train_images, train_labels = all_images[train], all_labels[train]
        test_images, test_labels = all_images[test], all_labels[test]
    else:
        train_images, train_labels, test_images, test_labels = idx.read_mnist_family(data_dir)
        train_images, test_images = train_images[..., np.newaxis], test_images[..., np.newaxis]
    return (
        _array_dataset(train_images, train_labels, image_size, channels),
        _array_dataset(test_images, test_labels, image_size, channels),
        int(np.max(train_labels)) + 1,
    )


def _check_arguments(image_size, channels, seed):
    # None stays only for "class_folder", whose defaults come from its files.
    if image_size is not None and (not is_integer(image_size) or image_size < 1):
        raise ValueError(f"image_size must be None or an int >= 1, got {image_size!r}.")
    if channels is not None and (not is_integer(channels) or channels not in (1, 3)):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}.")
    if not is_integer(seed):
        raise ValueError(f"seed must be an int, got {seed!r}.")


def _check_public_split(name, public_split):
    allowed = PUBLIC_SPLITS if _DATASETS[name].digit_classes else PUBLIC_SPLITS[:1]
    if public_split not in allowed:
        raise ValueError(
            f"public_split must be one of {list(allowed)} for dataset {name!r}, "
            f"got {public_split!r}."
        )


def default_data_dir(name):
    """The first of a dataset's `DEFAULT_FOLDERS` that holds its files.

    Args:
        name: A dataset name of `load`.

    Returns:
        The folder, or None when no default folder holds the files (or the dataset has none).
    """
    for folder in DEFAULT_FOLDERS.get(name, ()):
        if all(idx.find_idx_file(folder, stem) for stem in idx.MNIST_FILES.values()):
            return folder
    return None


def _checked_data_dir(name, spec, data_dir):
    """`data_dir`, or the dataset's default folder when it is None; raises if unusable."""
    if not spec.needs_files:
        if data_dir is not None:
            raise ValueError(
                f"dataset {name!r} is embedded: data_dir must be None, got {data_dir!r}."
            )
        return None
    data_dir = default_data_dir(name) if data_dir is None else data_dir
    if data_dir is None and name in DEFAULT_FOLDERS:
        raise FileNotFoundError(
            f"dataset {name!r} found in none of {list(DEFAULT_FOLDERS[name])}: pass data_dir, a "
            f"folder holding {spec.expected}, or install Debian's dataset-fashion-mnist "
            "package, or (with network) fill Keras's cache with "
            "keras.datasets.fashion_mnist.load_data()."
        )
    if data_dir is None or not os.path.isdir(data_dir):
        problem = "needs data_dir" if data_dir is None else f"data_dir {data_dir!r} does not exist"
        raise FileNotFoundError(
            f"dataset {name!r} {problem}: a folder holding {spec.expected}. "
            "Nothing is downloaded; put the files there and pass its path."
        )
    return data_dir


def _held_out_options(name, data_dir, test_dir, test_fraction):
    """Checked `test_dir` and `test_fraction` build arguments ({} for fixed splits)."""
    if not _DATASETS[name].held_out:
        if test_dir is not None or test_fraction is not None:
            raise ValueError(
                f"test_dir and test_fraction apply to dataset 'class_folder' only; dataset "
                f"{name!r} has fixed splits, got test_dir={test_dir!r}, "
                f"test_fraction={test_fraction!r}."
            )
        return {}
    if test_dir is not None:
        if test_fraction is not None:
            raise ValueError(
                f"give test_dir or test_fraction, not both; got test_dir={test_dir!r}, "
                f"test_fraction={test_fraction!r}."
            )
        if not os.path.isdir(test_dir):
            raise FileNotFoundError(f"test_dir {test_dir!r} does not exist.")
        if os.path.realpath(test_dir) == os.path.realpath(data_dir):
            raise ValueError(f"test_dir must differ from data_dir; both are {test_dir!r}.")
        return dict(test_dir=test_dir, test_fraction=None)
    if test_fraction is None:
        test_fraction = CLASS_FOLDER_TEST_FRACTION
    if not isinstance(test_fraction, numbers.Real) or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}.")
    return dict(test_dir=None, test_fraction=float(test_fraction))


def _load_class_folder(
    data_dir, image_size, channels, seed, skip_unreadable, test_dir, test_fraction
):
    train, test, class_names, skipped_files = images.class_folder_splits(
        data_dir, test_dir, test_fraction, image_size, channels, seed, skip_unreadable
    )
    return DatasetSplits((train, test), None, skipped_files, class_names)


def _load_digits(data_dir, image_size, channels, seed, skip_unreadable, public_split):
    del data_dir, skip_unreadable  # Embedded; no files.
    all_images, all_labels = digits.load_digits_arrays()
    private = np.flatnonzero(all_labels < NUM_PRIVATE_CLASSES)
    pool, test = digits.stratified_split(all_labels[private], DIGITS_TEST_FRACTION, seed)
    return _digit_splits(
        all_images, all_labels, private[pool], private[test], public_split, seed, image_size,
        channels,
    )


def _load_mnist_family(
    data_dir, image_size, channels, seed, skip_unreadable, public_split
):
    del skip_unreadable  # No image files.
    train_images, train_labels, test_images, test_labels = idx.read_mnist_family(data_dir)
    images = np.concatenate([train_images, test_images])[..., np.newaxis]
    labels = np.concatenate([train_labels, test_labels])
    is_test = np.arange(len(labels)) >= len(train_labels)
    pool = np.flatnonzero((labels < NUM_PRIVATE_CLASSES) & ~is_test)
    test = np.flatnonzero((labels < NUM_PRIVATE_CLASSES) & is_test)
    return _digit_splits(
        images, labels, pool, test, public_split, seed, image_size, channels, ~is_test
    )


def _digit_splits(
    all_images, all_labels, pool, test, public_split, seed, image_size, channels,
    public_candidates=None,
):
    """Private train/test and public splits of a dataset whose classes 0-4 are private.

    Args:
        all_images, all_labels: the whole dataset.
        pool: indices of the private classes' training pool; `test`: their test indices.
        public_split: "classes" (public = classes 5-9) or "samples" (also a random
            `PUBLIC_SAMPLE_FRACTION` of each class of the pool, taken out of it).
        seed: seed of that random choice.
        public_candidates: boolean mask of the images that may be public (default: all).
    """
    other_classes = all_labels >= NUM_PRIVATE_CLASSES
    if public_candidates is not None:
        other_classes &= public_candidates
    public = np.flatnonzero(other_classes)
    if public_split == "samples":
        kept, given = digits.stratified_split(
            all_labels[pool], PUBLIC_SAMPLE_FRACTION, seed + 1
        )
        public = np.sort(np.concatenate([public, pool[given]]))
        pool = pool[kept]
    return DatasetSplits(
        private=(
            _array_dataset(all_images[pool], all_labels[pool], image_size, channels),
            _array_dataset(all_images[test], all_labels[test], image_size, channels),
        ),
        public=_array_dataset(all_images[public], None, image_size, channels),
    )


def _load_celeba(data_dir, image_size, channels, seed, skip_unreadable):
    del seed  # Fixed splits.
    train, test, public, skipped_files = images.celeba_splits(
        data_dir, image_size, channels, skip_unreadable
    )
    return DatasetSplits((train, test), public, skipped_files)


def _public_only(read_images):
    """A dataset builder for `read_images(data_dir, image_size, channels, skip_unreadable)`."""

    def build(data_dir, image_size, channels, seed, skip_unreadable):
        del seed  # No splits.
        public, skipped_files = read_images(data_dir, image_size, channels, skip_unreadable)
        return DatasetSplits(None, public, skipped_files)

    return build


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
    "digits": _DatasetSpec(
        _load_digits, 32, 1, needs_files=False, expected=None, digit_classes=True
    ),
    "mnist": _DatasetSpec(
        _load_mnist_family, 32, 1, needs_files=True, expected=_MNIST_EXPECTED, digit_classes=True
    ),
    "fashion_mnist": _DatasetSpec(
        _load_mnist_family, 32, 1, needs_files=True, expected=_MNIST_EXPECTED, digit_classes=True
    ),
    "celeba": _DatasetSpec(
        _load_celeba,
        64,
        3,
        needs_files=True,
        expected=f"{images.CELEBA_IMAGE_DIR}/ and {sorted(images.CELEBA_SPLIT_FILES.values())}",
    ),
    **{
        name: _DatasetSpec(
            _public_only(read_images), 64, 3, needs_files=True, expected=expected,
            labelled=False,
        )
        for name, read_images, expected in (
            ("ffhq", images.ffhq_images, f"{images.FFHQ_IMAGE_DIR}/ and {images.FFHQ_SPLIT_FILE}"),
            ("facescrub", images.facescrub_images, f"faceScrub/ and {images.FACESCRUB_SPLIT_FILE}"),
            ("folder", images.folder_images,
             f"image files ({', '.join(images.IMAGE_EXTENSIONS)}), in subfolders or not"),
        )
    },
    "class_folder": _DatasetSpec(
        _load_class_folder, None, None, needs_files=True, held_out=True,
        expected="one subfolder of image files per class (label: sorted subfolder order)",
    ),
}
