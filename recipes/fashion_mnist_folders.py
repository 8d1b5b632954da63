"""Writes Fashion-MNIST out as image folders: the data of docs/your_model_your_data.md.

Example:
    python recipes/fashion_mnist_folders.py --out=runs/your_data/folders

The headline benchmark's threat model (recipes/headline_fashion_mnist.flags), as files:

    OUT/private/0_t-shirt_top/00001.png ...   training images of the private classes 0-4
    OUT/private_test/0_t-shirt_top/00000.png  their test images (t10k file), never trained on
    OUT/public/00000.png ...                  training images of classes 5-9, unlabelled
    OUT/other/00000.png ...                   test images of classes 5-9, unlabelled: images of
                                              no private class that the attacker does not hold
                                              (`trapmid-audit --other_dir`)
    OUT/folders.json                          counts, --per_class, the folders and the source
                                              files' SHA-256

Class folders are named `<label>_<name>`, so that their sorted order (the label order of
`trapmid-train --dataset=class_folder` and `trapmid-audit`) is Fashion-MNIST's. A file's name is
the image's position in its IDX file. Images are the files' own 28x28 grayscale uint8 pixels,
losslessly (PNG): read with `--image_size=32` they are exactly the images the headline
benchmark trains on (the same bilinear resize of the same pixels).

--data_dir holds the four IDX files (train-images-idx3-ubyte, ..., each optionally .gz); by
default they are looked for where Debian's `dataset-fashion-mnist` package and Keras's download
put them (`trapmid_tf.data.default_data_dir`). --per_class keeps the first N images of each
class (in file order) of each split, for quick tries.

Everything is written into a temporary folder beside --out and moved into place at the end, so
an interrupted run leaves no partial --out. An --out that already holds folders written from the
same files with the same --per_class and the same folders (`FOLDERS`) is left as it is (the
command says so); any other existing, non-empty --out is refused.
"""

import concurrent.futures
import json
import os
import shutil
import sys
import tempfile

from absl import app, flags

FLAGS = flags.FLAGS

# Fashion-MNIST's labels 0-9, as folder-name parts.
CLASS_NAMES = ("t-shirt_top", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle_boot")
PRIVATE, PRIVATE_TEST, PUBLIC, OTHER = "private", "private_test", "public", "other"
# The folders written, part of what identifies them (folders.json): folders written before
# OTHER existed are not taken for these.
FOLDERS = (PRIVATE, PRIVATE_TEST, PUBLIC, OTHER)
MANIFEST = "folders.json"


def define_flags():
    """Defines the recipe's flags."""
    flags.DEFINE_string("out", None, "Folder to write (must not exist, or be empty).")
    flags.DEFINE_string("data_dir", None, "Folder of the four Fashion-MNIST IDX files (default: "
                        "the first of trapmid_tf.data.loaders.DEFAULT_FOLDERS that holds them).")
    flags.DEFINE_integer("per_class", None, "Keep the first N images of each class of each split "
                         "(default: all).", lower_bound=1)


def class_folder_name(label):
    """The folder of Fashion-MNIST class `label`, e.g. 0 -> "0_t-shirt_top"."""
    return f"{label}_{CLASS_NAMES[label]}"


def folder_plan(train_images, train_labels, test_images, test_labels, per_class=None,
                private_classes=5):
    """Where each image goes: `(relative path, image)` pairs, in file order.

    Args:
        train_images, test_images: uint8 arrays (N, H, W), as `idx.read_mnist_family` reads them.
        train_labels, test_labels: int arrays (N,) of labels in 0..9.
        per_class: None, or the number of images kept of each class of each split (the first).
        private_classes: Labels below this are private (class folders), the others public.

    Returns:
        A list of `(path, image)`: `private/<class>/<i>.png` and `private_test/<class>/<i>.png`
        for the private classes, `public/<i>.png` and `other/<i>.png` for the others' train and
        test images, `i` the image's position in its file (5 digits).

    Raises:
        ValueError: if a label is outside 0..9.
    """
    import numpy as np

    plan = []
    for split, images, labels in (("train", train_images, train_labels),
                                  ("test", test_images, test_labels)):
        labels = np.asarray(labels)
        if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
            raise ValueError(
                f"Fashion-MNIST's {split} labels must be in 0..{len(CLASS_NAMES) - 1}; they "
                f"range over {labels.min()}..{labels.max()}."
            )
        kept = np.zeros(len(CLASS_NAMES), np.int64)
        for index, label in enumerate(labels.tolist()):
            if per_class is not None and kept[label] >= per_class:
                continue
            if label < private_classes:
                folder = os.path.join(PRIVATE if split == "train" else PRIVATE_TEST,
                                      class_folder_name(label))
            else:
                folder = PUBLIC if split == "train" else OTHER
            kept[label] += 1
            plan.append((os.path.join(folder, f"{index:05d}.png"), images[index]))
    return plan


def write_png(path, image):
    """Writes a uint8 HxW image as an 8-bit grayscale PNG (lossless)."""
    from PIL import Image

    Image.fromarray(image, mode="L").save(path, format="PNG")


def write_folders(out, plan, manifest):
    """Writes `plan`'s images and `manifest` (as folders.json) into `out`, atomically.

    The files go into a temporary folder beside `out`, renamed to `out` once all are written.

    Args:
        out: The folder to create; it must not exist, or be empty.
        plan: `folder_plan`'s `(relative path, image)` pairs.
        manifest: JSON-serialisable dict written as `out/folders.json`.

    Raises:
        FileExistsError: if `out` exists and is not empty.
    """
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".partial",
                                 dir=parent)
    try:
        for folder in sorted({os.path.dirname(path) for path, _ in plan}):
            os.makedirs(os.path.join(temporary, folder))
        with concurrent.futures.ThreadPoolExecutor() as pool:
            list(pool.map(lambda item: write_png(os.path.join(temporary, item[0]), item[1]),
                          plan))
        with open(os.path.join(temporary, MANIFEST), "w", encoding="utf-8") as stream:
            json.dump(manifest, stream, indent=2, sort_keys=True)
            stream.write("\n")
        os.chmod(temporary, 0o755)  # mkdtemp makes it owner-only
        if os.path.isdir(out) and not os.listdir(out):
            os.rmdir(out)
        try:
            os.rename(temporary, out)
        except OSError as error:  # appeared meanwhile, or a file
            raise FileExistsError(f"--out {out!r} exists and is not empty.") from error
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def source_identity(data_dir, per_class):
    """What the written folders depend on: `per_class`, `FOLDERS` and the four IDX files'
    SHA-256."""
    from trapmid_tf.data import idx
    from trapmid_tf.experiments.audit import file_sha256

    return dict(per_class=per_class, folders=list(FOLDERS), sha256={
        stem: file_sha256(idx.find_idx_file(data_dir, stem)) for stem in idx.MNIST_FILES.values()
    })


def existing_identity(out):
    """The identity stored in `out/folders.json`, None if `out` is missing or empty.

    Raises:
        FileExistsError: if `out` is not empty and holds no readable folders.json.
    """
    if not os.path.exists(out) or (os.path.isdir(out) and not os.listdir(out)):
        return None
    try:
        with open(os.path.join(out, MANIFEST), encoding="utf-8") as stream:
            return json.load(stream)["identity"]
    except (OSError, ValueError, KeyError):
        raise FileExistsError(
            f"--out {out!r} exists and is not an empty folder, and holds no {MANIFEST} of this "
            "recipe: give a new folder (or remove this one)."
        ) from None


def fashion_mnist_folders(out, data_dir=None, per_class=None):
    """Writes the folders of the module docstring into `out` unless it holds them already.

    Args:
        out: The folder to write.
        data_dir: Folder of the four IDX files, or None for the default folders.
        per_class: None, or the images kept of each class of each split.

    Returns:
        The manifest: `identity` (`source_identity`), `data_dir`, `counts` (images per
        folder) and `written` (False when `out` already held them).

    Raises:
        FileNotFoundError: if no data_dir is given and no default folder holds the files, or
            a file is missing from data_dir.
        FileExistsError: if `out` holds anything else.
        ValueError: if a file is corrupt or a label is outside 0..9.
    """
    from trapmid_tf.data import idx, loaders

    if data_dir is None:
        data_dir = loaders.default_data_dir("fashion_mnist")
        if data_dir is None:
            raise FileNotFoundError(
                f"Fashion-MNIST's four IDX files are in none of "
                f"{list(loaders.DEFAULT_FOLDERS['fashion_mnist'])}: install Debian's (or "
                "Ubuntu's) package (`sudo apt-get install dataset-fashion-mnist`), or pass "
                f"--data_dir=a folder holding {sorted(idx.MNIST_FILES.values())} (each "
                "optionally .gz)."
            )
    try:  # first: a missing or corrupt file is named
        arrays = idx.read_mnist_family(data_dir)
    except (FileNotFoundError, ValueError) as error:
        raise type(error)(f"--data_dir {data_dir!r}: {error}") from error
    identity = source_identity(data_dir, per_class)
    stored = existing_identity(out)
    if stored is not None:
        if stored != identity:  # folders.json before `folders` was recorded: the first three
            raise FileExistsError(
                f"--out {out!r} holds folders written from other files, with another "
                f"--per_class ({stored['per_class']}; now {per_class}) or other folders "
                f"({stored.get('folders', list(FOLDERS[:3]))}; now {list(FOLDERS)}): give a "
                "new folder (or remove this one)."
            )
        with open(os.path.join(out, MANIFEST), encoding="utf-8") as stream:
            return dict(json.load(stream), written=False)
    plan = folder_plan(*arrays, per_class=per_class,
                       private_classes=loaders.NUM_PRIVATE_CLASSES)
    counts = {}
    for path, _ in plan:
        folder = os.path.dirname(path)
        counts[folder] = counts.get(folder, 0) + 1
    manifest = dict(identity=identity, data_dir=os.path.abspath(data_dir), counts=counts)
    write_folders(out, plan, manifest)
    return dict(manifest, written=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.out:
        raise app.UsageError("--out must be set.")
    try:
        manifest = fashion_mnist_folders(FLAGS.out, FLAGS.data_dir, FLAGS.per_class)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        raise app.UsageError(str(error)) from error
    counts = manifest["counts"]
    for split in FOLDERS:
        images = sum(n for folder, n in counts.items() if folder.split(os.sep)[0] == split)
        folders = sum(1 for folder in counts if folder.split(os.sep)[0] == split)
        kind = f"{folders} class folders" if split in (PRIVATE, PRIVATE_TEST) else "unlabelled"
        print(f"{os.path.join(FLAGS.out, split)}: {images} images ({kind})")
    done = "written" if manifest["written"] else "already there, from the same files: kept"
    print(f"{FLAGS.out}: {done} (Fashion-MNIST from {manifest['data_dir']}).")


if __name__ == "__main__":
    define_flags()
    from trapmid_tf.startup import import_tensorflow

    import_tensorflow()  # quiet start-up: trapmid_tf.data imports TensorFlow
    try:
        main(FLAGS(sys.argv))
    except (app.UsageError, flags.Error) as error:
        sys.exit(f"fashion_mnist_folders: {error}")
