"""`load` argument checking and the `DatasetSplits` result."""

import pytest

from trapmid_tf.data.loaders import DatasetSplits, load


def test_unknown_name_lists_known_names():
    known = (
        r"\['celeba', 'class_folder', 'digits', 'facescrub', 'fashion_mnist', 'ffhq', 'folder', "
        r"'mnist'\]"
    )
    with pytest.raises(ValueError, match=f"name must be one of {known}, got 'cifar'"):
        load("cifar")


# fashion_mnist has default folders: tests/data/test_idx.py.
@pytest.mark.parametrize(
    "name", ["mnist", "celeba", "ffhq", "facescrub", "folder", "class_folder"]
)
def test_missing_data_dir_says_what_to_put_there(name):
    with pytest.raises(FileNotFoundError, match=f"{name}' needs data_dir.*Nothing is downloaded"):
        load(name)


def test_nonexistent_data_dir_is_named(tmp_path):
    missing = str(tmp_path / "nowhere")
    expected = r"nowhere' does not exist.*train-images-idx3-ubyte"
    with pytest.raises(FileNotFoundError, match=expected):
        load("mnist", missing)


def test_digits_takes_no_data_dir(tmp_path):
    with pytest.raises(ValueError, match="data_dir must be None"):
        load("digits", str(tmp_path))


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"image_size": 0}, "image_size"),
        ({"image_size": 3.5}, "image_size"),
        ({"channels": 2}, "channels"),
        ({"channels": True}, "channels"),
        ({"seed": "7"}, "seed"),
    ],
)
def test_bad_arguments_are_named(kwargs, argument):
    with pytest.raises(ValueError, match=f"{argument} must be"):
        load("digits", **kwargs)


def test_dataset_splits_unpack_as_two_fields_and_carry_skipped_files():
    splits = DatasetSplits(("train", "test"), "public", skipped_files=["a.jpg", "b.jpg"])
    (train, test), public = splits
    assert (train, test, public) == ("train", "test", "public")
    assert splits.skipped == 2 and splits.skipped_files == ("a.jpg", "b.jpg")
    assert DatasetSplits(None, "public").skipped == 0
    assert splits._replace(public="other").skipped == 0
