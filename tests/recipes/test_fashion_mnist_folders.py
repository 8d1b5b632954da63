"""recipes/fashion_mnist_folders.py on tiny Fashion-MNIST-like IDX files written here.

The files hold 28x28 uint8 images of ten classes in shuffled order; every image of class k has
pixels around the level 25k + 12 (noise of +-10), so that a small CNN tells the classes apart
within a few steps (the page test trains on them). The expected folder contents are derived
from the labels directly: the indices of each class in each file.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.data.test_idx import _idx_bytes, _write
from tests.recipes.recipe_loader import load_recipe

folders = load_recipe("fashion_mnist_folders")

TRAIN_PER_CLASS, TEST_PER_CLASS, SIDE = 8, 3, 28


def write_fashion_like_idx(folder, train_per_class=TRAIN_PER_CLASS,
                           test_per_class=TEST_PER_CLASS, seed=0):
    """Writes the four IDX files (the train images gzipped) into `folder`; returns the arrays.

    Returns:
        `(train_images, train_labels, test_images, test_labels)`.
    """
    rng = np.random.default_rng(seed)
    arrays = []
    for per_class in (train_per_class, test_per_class):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        levels = 25 * labels.astype(np.int64) + 12
        noise = rng.integers(-10, 11, (len(labels), SIDE, SIDE))
        images = np.clip(levels[:, None, None] + noise, 0, 255).astype(np.uint8)
        arrays += [images, labels]
    os.makedirs(folder, exist_ok=True)
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    for name, array in zip(names, arrays):
        _write(os.path.join(folder, name), _idx_bytes(array))
    return tuple(arrays)


@pytest.fixture
def source(tmp_path):
    """`(data_dir, arrays)` of tiny IDX files."""
    data_dir = str(tmp_path / "idx")
    return data_dir, write_fashion_like_idx(data_dir)


def expected_files(labels, classes, per_class=None):
    """`{class: [file names]}`: each class's indices in file order, the first `per_class`."""
    return {label: [f"{index:05d}.png" for index in np.flatnonzero(labels == label)[:per_class]]
            for label in classes}


def listing(folder):
    return sorted(os.listdir(folder))


@pytest.mark.parametrize("per_class", [None, 2])
def test_the_layout_holds_each_split_in_file_order(source, tmp_path, per_class):
    data_dir, (_, train_labels, _, test_labels) = source
    out = tmp_path / "out"
    manifest = folders.fashion_mnist_folders(str(out), data_dir, per_class)
    assert manifest["written"] is True
    assert listing(out) == ["folders.json", "other", "private", "private_test", "public"]
    names = [f"{label}_{folders.CLASS_NAMES[label]}" for label in range(5)]
    assert names == ["0_t-shirt_top", "1_trouser", "2_pullover", "3_dress", "4_coat"]
    assert listing(out / "private") == names == listing(out / "private_test")
    train = expected_files(train_labels, range(10), per_class)
    test = expected_files(test_labels, range(10), per_class)
    for label, name in enumerate(names):
        assert listing(out / "private" / name) == train[label]
        assert listing(out / "private_test" / name) == test[label]
    public = sorted(name for label in range(5, 10) for name in train[label])
    assert listing(out / "public") == public
    # The test file's images of classes 5-9: the other images, which the attacker lacks.
    other = sorted(name for label in range(5, 10) for name in test[label])
    assert listing(out / "other") == other
    kept = per_class or TRAIN_PER_CLASS
    assert manifest["counts"]["public"] == 5 * kept
    assert manifest["counts"]["other"] == 5 * min(kept, TEST_PER_CLASS)
    assert manifest["identity"]["folders"] == ["private", "private_test", "public", "other"]
    assert manifest["counts"]["private/0_t-shirt_top"] == kept
    assert manifest["counts"]["private_test/4_coat"] == min(kept, TEST_PER_CLASS)


def test_pixels_round_trip_exactly(source, tmp_path):
    data_dir, (train_images, train_labels, test_images, test_labels) = source
    out = tmp_path / "out"
    folders.fashion_mnist_folders(str(out), data_dir)
    for folder, images in (("private", train_images), ("private_test", test_images),
                           ("public", train_images), ("other", test_images)):
        for root, _, names in os.walk(out / folder):
            for name in names:
                with Image.open(os.path.join(root, name)) as image:
                    assert image.mode == "L"
                    pixels = np.asarray(image)
                np.testing.assert_array_equal(pixels, images[int(name[:-4])])
    assert train_labels[[int(name[:-4]) for name in listing(out / "public")]].min() == 5
    assert test_labels[[int(name[:-4]) for name in listing(out / "other")]].min() == 5


def test_read_at_32_pixels_the_folders_are_the_benchmarks_images(source, tmp_path):
    import trapmid_tf as tm
    from trapmid_tf.experiments.evaluation import judge_references

    data_dir, _ = source
    out = tmp_path / "out"
    folders.fashion_mnist_folders(str(out), data_dir)
    (train, test), public = tm.data.load("fashion_mnist", data_dir)  # 32x32, classes 0-4
    splits = tm.data.load("class_folder", str(out / "private"),
                          test_dir=str(out / "private_test"), image_size=32)
    public_folder = tm.data.load("folder", str(out / "public"), image_size=32, channels=1)

    def arrays(dataset):
        pairs = list(dataset.as_numpy_iterator())
        return np.stack([x for x, _ in pairs]), np.array([y for _, y in pairs])

    for benchmark, folder in zip((train, test), splits.private):
        images, labels = arrays(benchmark)
        order = np.argsort(labels, kind="stable")  # class folders: by class, then file order
        folder_images, folder_labels = arrays(folder)
        np.testing.assert_array_equal(folder_labels, labels[order])
        # The same uint8 pixels through the same resize: identical floats.
        np.testing.assert_array_equal(folder_images, images[order])
    np.testing.assert_array_equal(np.stack(list(public_folder.public.as_numpy_iterator())),
                                  np.stack(list(public.as_numpy_iterator())))
    # other/ holds the pipeline's other-class references (file order = sorted name order).
    other_folder = tm.data.load("folder", str(out / "other"), image_size=32, channels=1)
    references = judge_references("fashion_mnist", data_dir, test)
    np.testing.assert_array_equal(np.stack(list(other_folder.public.as_numpy_iterator())),
                                  references.images[references.labels >= 5])


def test_a_second_run_keeps_what_it_wrote_and_refuses_anything_else(source, tmp_path):
    data_dir, _ = source
    out = tmp_path / "out"
    first = folders.fashion_mnist_folders(str(out), data_dir, per_class=2)
    probe = out / "public" / listing(out / "public")[0]
    stamp = probe.stat().st_mtime_ns
    again = folders.fashion_mnist_folders(str(out), data_dir, per_class=2)
    assert again["written"] is False and again["counts"] == first["counts"]
    assert probe.stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match=r"--per_class \(2; now 3\)"):
        folders.fashion_mnist_folders(str(out), data_dir, per_class=3)
    # Folders written before other/ existed (folders.json without `folders`) are not kept.
    manifest = json.loads((out / "folders.json").read_text())
    del manifest["identity"]["folders"]
    (out / "folders.json").write_text(json.dumps(manifest))
    with pytest.raises(FileExistsError, match=r"other folders \(\['private', 'private_test', "
                                              r"'public'\]; now .*'other'\]\)"):
        folders.fashion_mnist_folders(str(out), data_dir, per_class=2)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no folders.json"):
        folders.fashion_mnist_folders(str(other), data_dir)
    assert listing(other) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert folders.fashion_mnist_folders(str(empty), data_dir, per_class=1)["written"] is True


def test_an_interrupted_run_leaves_nothing_behind(source, tmp_path, monkeypatch):
    data_dir, _ = source
    written = []

    def failing(path, image):
        if len(written) == 3:
            raise OSError("disk full")
        written.append(path)
        Image.fromarray(image).save(path)

    monkeypatch.setattr(folders, "write_png", failing)
    with pytest.raises(OSError, match="disk full"):
        folders.fashion_mnist_folders(str(tmp_path / "out"), data_dir)
    assert listing(tmp_path) == ["idx"]  # no --out, no temporary folder


def test_a_missing_dataset_says_what_to_install(tmp_path, monkeypatch):
    from trapmid_tf.data import loaders

    monkeypatch.setitem(loaders.DEFAULT_FOLDERS, "fashion_mnist", (str(tmp_path / "none"),))
    with pytest.raises(FileNotFoundError,
                       match=r"apt-get install dataset-fashion-mnist.*--data_dir"):
        folders.fashion_mnist_folders(str(tmp_path / "out"))
    data_dir = tmp_path / "idx"
    write_fashion_like_idx(str(data_dir))
    os.remove(data_dir / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        folders.fashion_mnist_folders(str(tmp_path / "out"), str(data_dir))
    assert not (tmp_path / "out").exists()


def test_labels_outside_the_ten_classes_are_refused():
    images = np.zeros((2, SIDE, SIDE), np.uint8)
    with pytest.raises(ValueError,
                       match=r"train labels must be in 0\.\.9; they range over 0\.\.10"):
        folders.folder_plan(images, np.array([0, 10]), images, np.array([0, 1]))
