"""Image-file datasets (CelebA, FFHQ, FaceScrub, image and class folders), decoded lazily.

Each face dataset is prepared as the reference prepares it (Trap-MID `dataset.py`, PLG-MI
`plgmi/baselines/dataloader.py`, `utils.load_image_list`): CelebA is cropped to its 108x108
face box; FFHQ thumbnails are brought to 128x128 (PIL antialiasing, when not already that size)
and centre-cropped to 88x88; FaceScrub faces are brought to 64x64 (PIL antialiasing); then every
image is resized bilinearly with antialiasing to the output size. The reference flips CelebA's
private training images at random (`random_horizontal_flip`; never test or public images).

Images are decoded with PIL as the dataset is iterated, so only file names are held in
memory. A file that cannot be decoded then stops the iteration with a
`tf.errors.InvalidArgumentError` whose message names the file. With
`skip_unreadable=True` every file is instead decoded once when the dataset is built and
the unreadable (or missing) ones are left out, so the count is known up front.
"""

import concurrent.futures
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from trapmid_tf.data import digits

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
CELEBA_IMAGE_DIR = "img_align_celeba"
CELEBA_SPLIT_FILES = {
    "train": "celeba_trainset.txt",
    "test": "celeba_testset.txt",
    "public": "celeba_ganset.txt",
}
# (top, left, height, width) of the face crop in the 178x218 aligned CelebA images.
CELEBA_CROP = (55, 35, 108, 108)
# FFHQ: `thumbnails128x128/NNNNN/NNNNN.png` listed in the reference's `ffhq_ganset.txt`
# (plgmi/data_files/), brought to 128x128 and centre-cropped to 88x88.
FFHQ_IMAGE_DIR = "thumbnails128x128"
FFHQ_SPLIT_FILE = "ffhq_ganset.txt"
FFHQ_SOURCE_SIZE = 128
FFHQ_CROP = (20, 20, 88, 88)
# FaceScrub: `faceScrub/<name>/face/<hash>.jpg` below data_dir, listed in the reference's
# `facescrub_ganset.txt` (plgmi/data_files/), brought to 64x64 and not cropped (the GAN priors'
# preparation; the reference's top-n selection and LOMMA crop 54x54 at offset 5 instead).
FACESCRUB_SPLIT_FILE = "facescrub_ganset.txt"
FACESCRUB_SOURCE_SIZE = 64

_PIL_MODES = {1: "L", 3: "RGB"}
# PIL modes without colour: a class folder of only these is read with one channel.
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")


def prepare_image(image, image_size, channels):
    """Converts one image to the model input: float32 in [0, 1], square, `channels` deep.

    Args:
        image: HxWxC tensor, uint8 (0..255) or float in [0, 1], with C equal to 1 or
            `channels`.
        image_size: side of the square output, in pixels, or its `(height, width)`.
        channels: output channels; a 1-channel image is repeated to fill them.

    Returns:
        A float32 tensor of shape (image_size, image_size, channels) (or (height,
        width, channels)).
    """
    size = (image_size, image_size) if np.ndim(image_size) == 0 else tuple(image_size)
    image = tf.image.convert_image_dtype(image, tf.float32)
    image = tf.image.resize(image, size, method="bilinear", antialias=True)
    image = tf.clip_by_value(image, 0.0, 1.0)
    if image.shape[-1] != channels:
        image = tf.repeat(image, channels, axis=-1)
    return image


def read_image(path, channels, crop=None, source_size=None):
    """Decodes one image file with PIL.

    Args:
        path: the image file.
        channels: 1 (grayscale) or 3 (RGB).
        crop: optional `(top, left, height, width)` box to cut out.
        source_size: optional side the image is first resized to (PIL's antialiasing
            Lanczos filter, skipped when it already is `source_size` square), before `crop`.

    Returns:
        A uint8 array of shape (H, W, channels).

    Raises:
        ValueError: if the file cannot be read or decoded, or is smaller than `crop`;
            the message names the file.
    """
    try:
        with Image.open(path) as image:
            image = image.convert(_PIL_MODES[channels])
            if source_size is not None and image.size != (source_size, source_size):
                image = image.resize((source_size, source_size), Image.LANCZOS)
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ...).
        raise ValueError(f"cannot read image {path!r}: {error}") from error
    if crop is not None:
        top, left, height, width = crop
        if image.width < left + width or image.height < top + height:
            raise ValueError(
                f"image {path!r} is {image.width}x{image.height} (WxH); the crop at "
                f"rows {top}:{top + height}, cols {left}:{left + width} needs at least "
                f"{left + width}x{top + height}."
            )
        image = image.crop((left, top, left + width, top + height))
    return np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, channels)


def celeba_splits(data_dir, image_size, channels, skip_unreadable):
    """Builds the CelebA private train/test sets and the public (GAN) set.

    Args:
        data_dir: folder with `img_align_celeba/` and the split files
            `celeba_trainset.txt`, `celeba_testset.txt` (lines `filename label`) and
            `celeba_ganset.txt` (lines `filename` or `filename label`).
        image_size: side of the output images (after the 108x108 face crop).
        channels: 1 or 3.
        skip_unreadable: leave out missing or undecodable images instead of failing.

    Returns:
        `(train, test, public, skipped_files)`: datasets of `(image, label)`,
        `(image, label)` and `image`, and a tuple of the paths left out.

    Raises:
        FileNotFoundError: if the image folder, a split file or (without
            `skip_unreadable`) a listed image is missing.
        ValueError: if a split file has a malformed line.
    """
    image_dir = os.path.join(data_dir, CELEBA_IMAGE_DIR)
    expected = (
        f"CelebA expects {CELEBA_IMAGE_DIR}/ (the aligned 178x218 JPEGs) and the split files "
        f"{sorted(CELEBA_SPLIT_FILES.values())} in data_dir {data_dir!r}. Nothing is "
        "downloaded; put them there."
    )
    datasets, skipped_files = [], []
    for split, file_name in CELEBA_SPLIT_FILES.items():
        dataset, skipped = listed_images(
            image_dir, os.path.join(data_dir, file_name), image_size, channels,
            skip_unreadable, labelled=split != "public", crop=CELEBA_CROP, expected=expected,
        )
        datasets.append(dataset)
        skipped_files += skipped
    return (*datasets, tuple(skipped_files))


def ffhq_images(data_dir, image_size, channels, skip_unreadable):
    """Builds the FFHQ public set as the reference's GAN priors read it.

    Args:
        data_dir: folder with `thumbnails128x128/` (the 70,000 `NNNNN/NNNNN.png`
            thumbnails) and the reference's split file `ffhq_ganset.txt`.
        image_size: side of the output images (after the centre 88x88 crop).
        channels: 1 or 3.
        skip_unreadable: leave out missing or undecodable images instead of failing.

    Returns:
        `(images, skipped_files)`: a dataset of images and a tuple of the paths left out.

    Raises:
        FileNotFoundError: if the image folder, the split file or (without
            `skip_unreadable`) a listed image is missing.
    """
    expected = (
        f"FFHQ expects {FFHQ_IMAGE_DIR}/ and the split file {FFHQ_SPLIT_FILE} (from the "
        f"reference's plgmi/data_files/) in data_dir {data_dir!r}. Nothing is downloaded; "
        "put them there."
    )
    return listed_images(
        os.path.join(data_dir, FFHQ_IMAGE_DIR), os.path.join(data_dir, FFHQ_SPLIT_FILE),
        image_size, channels, skip_unreadable, labelled=False, crop=FFHQ_CROP,
        source_size=FFHQ_SOURCE_SIZE, expected=expected,
    )


def facescrub_images(data_dir, image_size, channels, skip_unreadable):
    """Builds the FaceScrub public set as the reference's GAN priors read it.

    Args:
        data_dir: folder holding `faceScrub/<name>/face/*.jpg` and the reference's split
            file `facescrub_ganset.txt`, whose lines are paths relative to `data_dir`.
        image_size: side of the output images.
        channels: 1 or 3.
        skip_unreadable: leave out missing or undecodable images instead of failing (the
            reference skips them silently).

    Returns:
        `(images, skipped_files)`: a dataset of images and a tuple of the paths left out.

    Raises:
        FileNotFoundError: if the split file or (without `skip_unreadable`) a listed
            image is missing.
    """
    expected = (
        f"FaceScrub expects faceScrub/ and the split file {FACESCRUB_SPLIT_FILE} (from the "
        f"reference's plgmi/data_files/) in data_dir {data_dir!r}. Nothing is downloaded; "
        "put them there."
    )
    return listed_images(
        data_dir, os.path.join(data_dir, FACESCRUB_SPLIT_FILE), image_size, channels,
        skip_unreadable, labelled=False, source_size=FACESCRUB_SOURCE_SIZE, expected=expected,
    )


def listed_images(
    image_dir, split_path, image_size, channels, skip_unreadable, labelled, crop=None,
    source_size=None, expected="",
):
    """Builds a dataset of the images a split file lists, prepared like `read_image`.

    Args:
        image_dir: folder the listed file names are relative to.
        split_path: split file (see `read_split_file`).
        image_size: side of the output images.
        channels: 1 or 3.
        skip_unreadable: leave out missing or undecodable images instead of failing.
        labelled: whether the lines carry labels, returned with the images.
        crop: optional `(top, left, height, width)` box, as in `read_image`.
        source_size: optional side to resize to before the crop, as in `read_image`.
        expected: sentence appended to a missing-file error, saying what goes where.

    Returns:
        `(dataset, skipped_files)`: `(image, label)` pairs when `labelled`, else images,
        and a tuple of the paths left out.

    Raises:
        FileNotFoundError: if `image_dir`, the split file or (without
            `skip_unreadable`) a listed image is missing.
        ValueError: if the split file has a malformed line.
    """
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"image folder {image_dir!r} not found. {expected}".strip())
    if not os.path.isfile(split_path):
        raise FileNotFoundError(f"split file {split_path!r} not found. {expected}".strip())
    names, labels = read_split_file(split_path, labelled=labelled)
    paths = [os.path.join(image_dir, name) for name in names]
    read_options = dict(crop=crop, source_size=source_size)
    keep, skipped = _readable(paths, channels, read_options, skip_unreadable)
    paths = [paths[i] for i in keep]
    labels = None if labels is None else np.asarray(labels, np.int32)[keep]
    return _image_dataset(paths, labels, image_size, channels, read_options), tuple(skipped)


def random_horizontal_flip(dataset, seed):
    """Mirrors each image of a dataset left-right with probability 1/2.

    Each element's draw depends on `seed` and its position only (stateless), so the same
    dataset and seed give the same flips every time it is iterated: pass a new seed for
    each epoch (as trapmid-train does with one made of the run seed and the
    epoch), after any `cache` or `shuffle`. The reference flips CelebA's private training
    images this way (`transforms.RandomHorizontalFlip(p=0.5)`), never test or public ones.

    Args:
        dataset: Unbatched dataset of images or of tuples whose first item is an HxWxC
            image; the other items pass through.
        seed: Int seed.

    Returns:
        The dataset with images flipped at random.

    Example:
        >>> flipped = random_horizontal_flip(train, seed=0)
        >>> flipped.element_spec == train.element_spec
        True
    """
    seed = tf.constant(int(seed), tf.int64)

    def flip(index, element):
        image, rest = (element[0], element[1:]) if isinstance(element, tuple) else (element, ())
        image = tf.image.stateless_random_flip_left_right(image, seed=tf.stack([seed, index]))
        return (image, *rest) if rest else image

    return dataset.enumerate().map(flip, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def folder_images(data_dir, image_size, channels, skip_unreadable):
    """Builds an unlabelled dataset from every image below a folder.

    Files ending in .png, .jpg, .jpeg or .bmp (any case) are taken, recursively, in
    sorted path order, and resized to a square (aspect ratio not kept).

    Args:
        data_dir: the folder.
        image_size: side of the output images.
        channels: 1 or 3.
        skip_unreadable: leave out undecodable images instead of failing.

    Returns:
        `(images, skipped_files)`: a dataset of images and a tuple of the paths left out.

    Raises:
        FileNotFoundError: if the folder holds no image file.
    """
    paths = image_files(data_dir)
    if not paths:
        raise FileNotFoundError(
            f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under data_dir "
            f"{data_dir!r}. Nothing is downloaded; put the public images there."
        )
    keep, skipped = _readable(paths, channels, {}, skip_unreadable)
    dataset = _image_dataset([paths[i] for i in keep], None, image_size, channels, {})
    return dataset, tuple(skipped)


def class_folder_splits(
    data_dir, test_dir, test_fraction, image_size, channels, seed, skip_unreadable
):
    """Builds labelled train/test sets from class folders, as Keras lays them out.

    The layout of `keras.utils.image_dataset_from_directory`: one subfolder of `data_dir`
    per class, class index = position of its name in sorted order; a class's images are
    the files ending in .png, .jpg, .jpeg or .bmp (any case) below its subfolder, at any
    depth. Files directly in `data_dir` are not used. The test set is `test_dir` (same
    class subfolders) or, without it, `round(n * test_fraction)` images of each class of
    n, drawn with `seed`.

    Image headers are read when the datasets are built (sizes and colour modes); pixels
    are decoded lazily. Channels: with `channels` None, 1 when every image is grayscale,
    else 3; PIL converts each image to that (a grayscale image repeated to RGB, a colour
    one to its luminance). Size: with `image_size` None, every image must have one
    (height, width), which the output keeps; else all are resized to
    `image_size`x`image_size`.

    Args:
        data_dir: the class folders (the training set when `test_dir` is given).
        test_dir: None, or a folder with the same class subfolders: the test set.
        test_fraction: fraction of each class held out for testing when `test_dir` is
            None, in (0, 1); ignored otherwise.
        image_size: None (keep the common size) or the side of the output images.
        channels: None (from the files, as above), 1 or 3.
        seed: int seed of the held-out draw.
        skip_unreadable: leave out missing or undecodable images instead of failing.

    Returns:
        `(train, test, class_names, skipped_files)`: datasets of `(image, label)`, the
        tuple of class names (index = label) and a tuple of the paths left out.

    Raises:
        FileNotFoundError: if a folder has no class subfolder, or a class subfolder no
            (readable) image file; the message names it.
        ValueError: if the two folders' classes differ, if images differ in size and
            `image_size` is None, if a class has too few images for `test_fraction`, or
            (without `skip_unreadable`) if an image header cannot be read; each names
            what is wrong.
    """
    class_names, paths, labels = _class_folder_files(data_dir)
    folders = [data_dir] * len(paths)
    if test_dir is not None:
        test_names, test_paths, test_labels = _class_folder_files(test_dir)
        if test_names != class_names:
            raise ValueError(
                f"test_dir {test_dir!r} must hold the same class subfolders as data_dir "
                f"{data_dir!r}; data_dir has {list(class_names)}, test_dir has "
                f"{list(test_names)}."
            )
        paths, labels = paths + test_paths, np.concatenate([labels, test_labels])
        folders += [test_dir] * len(test_paths)
    keep, skipped = _readable(paths, channels or 3, {}, skip_unreadable)
    for folder in dict.fromkeys(folders):
        kept = np.asarray([labels[i] for i in keep if folders[i] == folder], np.int64)
        empty = np.flatnonzero(np.bincount(kept, minlength=len(class_names)) == 0)
        if empty.size:
            empty = os.path.join(folder, class_names[empty[0]])
            raise FileNotFoundError(f"class folder {empty!r} holds no readable image file.")
    is_test = np.asarray([folders[i] != data_dir for i in keep])
    paths, labels = [paths[i] for i in keep], labels[keep]
    headers = image_headers(paths)
    if channels is None:
        channels = _channels(headers)
    size = image_size or _common_size(paths, headers)
    if test_dir is None:
        train, test = digits.stratified_split(labels, test_fraction, seed)
        untrained = np.flatnonzero(np.bincount(labels[train], minlength=len(class_names)) == 0)
        if untrained.size:
            label = untrained[0]
            raise ValueError(
                f"test_fraction {test_fraction} leaves class {class_names[label]!r} "
                f"({int(np.sum(labels == label))} images) no training image; add images or "
                "lower test_fraction."
            )
    else:
        train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    datasets = (
        _image_dataset([paths[i] for i in part], labels[part], size, channels, {})
        for part in (train, test)
    )
    return (*datasets, class_names, tuple(skipped))


def image_headers(paths):
    """Reads the size and colour mode of image files without decoding their pixels.

    Args:
        paths: image files.

    Returns:
        A list of `((width, height), mode)`, one per path, `mode` being PIL's ("L",
        "RGB", ...).

    Raises:
        ValueError: if a file cannot be opened as an image; the message names it.
    """

    def header(path):
        try:
            with Image.open(path) as image:
                return image.size, image.mode
        except Exception as error:  # PIL raises many types (OSError, SyntaxError, ...).
            raise ValueError(f"cannot read image {path!r}: {error}") from error

    with concurrent.futures.ThreadPoolExecutor() as pool:
        return list(pool.map(header, paths))


def folder_shape(folder):
    """The sizes and channels of the image files below `folder`, from their headers.

    Args:
        folder: A folder of image files (at any depth, as `folder_images` reads it).

    Returns:
        `(sizes, channels)`: the set of the files' `(height, width)`, and 1 if every file
        is grayscale, else 3 (the channels `class_folder_splits` reads a folder with).

    Raises:
        FileNotFoundError: if the folder holds no image file.
        ValueError: if a file cannot be opened as an image; the message names it.
    """
    paths = image_files(folder)
    if not paths:
        raise FileNotFoundError(
            f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under {folder!r}."
        )
    headers = image_headers(paths)
    return {(height, width) for (width, height), _ in headers}, _channels(headers)


def _channels(headers):
    """1 if every `image_headers` entry is grayscale, else 3."""
    return 1 if all(mode in GRAYSCALE_MODES for _, mode in headers) else 3


def _class_folder_files(folder):
    """`(class_names, paths, labels)` of a folder of class subfolders (see
    `class_folder_splits`), raising FileNotFoundError naming an empty class folder."""
    class_names = tuple(
        sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    )
    if not class_names:
        raise FileNotFoundError(
            f"folder {folder!r} has no class subfolder; it must hold one subfolder of "
            "image files per class."
        )
    paths, labels = [], []
    for label, name in enumerate(class_names):
        files = image_files(os.path.join(folder, name))
        if not files:
            raise FileNotFoundError(
                f"class folder {os.path.join(folder, name)!r} holds no image file "
                f"({', '.join(IMAGE_EXTENSIONS)})."
            )
        paths += files
        labels += [label] * len(files)
    return class_names, paths, np.asarray(labels, np.int32)


def _common_size(paths, headers):
    """The `(height, width)` every image has, or a ValueError naming two that differ."""
    first_size = headers[0][0]
    for path, (size, _) in zip(paths, headers):
        if size != first_size:
            raise ValueError(
                f"images differ in size, e.g. {paths[0]!r} is {first_size[0]}x"
                f"{first_size[1]} and {path!r} is {size[0]}x{size[1]} (width x height); "
                "pass image_size to resize every image to one square side."
            )
    return first_size[1], first_size[0]


def image_files(folder):
    """The image files below `folder`, at any depth, in sorted path order."""
    return sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )


def read_split_file(path, labelled):
    """Reads a split list with one `filename label` (or `filename`) per line.

    Args:
        path: the text file; blank lines are ignored.
        labelled: whether every line must carry an integer label. If False, lines
            may have a label or not, and labels are not returned.

    Returns:
        `(names, labels)`: a list of file names and a list of int labels (None when
        `labelled` is False).

    Raises:
        ValueError: on a malformed line, naming the file and line number.
    """
    names, labels = [], []
    allowed_fields = (2,) if labelled else (1, 2)
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) not in allowed_fields or (labelled and not _is_int(fields[1])):
                form = "'filename label'" if labelled else "'filename' or 'filename label'"
                raise ValueError(f"{path}:{number}: expected {form}, got {line.strip()!r}.")
            names.append(fields[0])
            if labelled:
                labels.append(int(fields[1]))
    return names, labels if labelled else None


def _is_int(text):
    try:
        int(text)
    except ValueError:
        return False
    return True


def _readable(paths, channels, read_options, skip_unreadable):
    """Returns `(indices of the paths to keep, list of the paths skipped)`.

    `read_options` are `read_image`'s keyword arguments (crop, source_size).
    """
    if not skip_unreadable:
        for path in paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"image {path!r} is listed but not found (pass skip_unreadable=True "
                    "to leave out missing and unreadable images)."
                )
        return list(range(len(paths))), []

    def is_readable(path):
        try:
            read_image(path, channels, **read_options)
        except ValueError:
            return False
        return True

    with concurrent.futures.ThreadPoolExecutor() as pool:
        readable = list(pool.map(is_readable, paths))
    keep = [i for i, ok in enumerate(readable) if ok]
    return keep, [path for path, ok in zip(paths, readable) if not ok]


def _image_dataset(paths, labels, image_size, channels, read_options):
    """Lazily decoded images (`labels` None) or `(image, label)` pairs."""

    def decode(path):
        image = tf.numpy_function(
            lambda encoded: read_image(os.fsdecode(encoded), channels, **read_options),
            [path],
            tf.uint8,
            stateful=False,
        )
        image.set_shape([None, None, channels])
        return prepare_image(image, image_size, channels)

    paths = tf.constant(paths, dtype=tf.string, shape=[len(paths)])
    if labels is None:
        dataset = tf.data.Dataset.from_tensor_slices(paths)
        return dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = tf.data.Dataset.from_tensor_slices((paths, tf.constant(labels, tf.int32)))
    return dataset.map(
        lambda path, label: (decode(path), label), num_parallel_calls=tf.data.AUTOTUNE
    )
