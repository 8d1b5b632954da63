"""The blend weight a class_folder run takes without --alpha, and where each alpha came from.

The expected values are read off docs/trapdoor_formation.md by hand: every measured run is
32x32x1 with 5 classes (1024 pixel values), where 0.1 formed the trapdoor and 0.02 did not;
images of at least 1024 pixel values with at most 5 classes keep 0.1, anything with fewer
pixel values or more classes (not measured, harder) takes 0.2.
"""

import importlib

import pytest

from trapmid_tf.experiments.target_config import (
    RESUMABLE_CHANGES, default_alpha, identity, resolve_config, with_alpha,
)


@pytest.mark.parametrize(
    "image_shape, num_classes, alpha, measured",
    [
        ((32, 32, 1), 5, 0.1, True),  # the digits and Fashion-MNIST runs
        ((32, 32, 1), 2, 0.1, False),  # fewer classes, same pixel values
        ((32, 32, 3), 5, 0.1, False),  # 3072 pixel values
        ((64, 64, 3), 5, 0.1, False),  # 12288: the paper's face size, with 5 classes
        ((32, 32, 1), 6, 0.2, False),  # one class more than measured
        ((32, 32, 1), 10, 0.2, False),
        ((64, 64, 3), 1000, 0.2, False),  # the paper's faces: 1000 classes
        ((28, 28, 1), 5, 0.2, False),  # 784 < 1024 pixel values
        ((16, 16, 3), 5, 0.2, False),  # 768 < 1024
        ((8, 8, 3), 3, 0.2, False),  # 192 < 1024
    ],
)
def test_the_default_follows_the_measured_point(image_shape, num_classes, alpha, measured):
    value, reason = default_alpha(image_shape, num_classes)
    assert value == alpha
    height, width, channels = image_shape
    assert reason.startswith(
        f"default for {height}x{width}x{channels} images and {num_classes} classes: "
    )
    assert reason.split(": ", 1)[1].startswith("measured there" if measured else "not measured")


def test_the_reason_names_what_is_harder_than_measured():
    _, fewer_values = default_alpha((28, 28, 1), 5)
    assert "fewer pixel values than the measured 32x32x1" in fewer_values
    assert "more classes" not in fewer_values
    _, both = default_alpha((8, 8, 3), 10)
    assert (
        "fewer pixel values than the measured 32x32x1 carry the trigger and more classes than "
        "the measured 5 share the triggered images" in both
    )


@pytest.mark.parametrize(
    "image_shape, num_classes, message",
    [
        ((32, 32), 5, r"`image_shape` must be \(height, width, channels\), positive ints; "
                      r"received \(32, 32\)\."),
        ((32, 0, 1), 5, r"`image_shape` .* received \(32, 0, 1\)\."),
        ((32.0, 32, 1), 5, r"`image_shape` .* received \(32\.0, 32, 1\)\."),
        ((32, 32, 1), 0, r"`num_classes` must be an integer >= 1; received 0\."),
    ],
)
def test_bad_shapes_and_class_counts_are_named(image_shape, num_classes, message):
    with pytest.raises(ValueError, match=message):
        default_alpha(image_shape, num_classes)


def class_folder_config(folder, **changes):
    return resolve_config(dict(
        dataset="class_folder", data_dir=str(folder), defense="trapmid", out=str(folder),
        **changes,
    ))


def test_class_folder_leaves_alpha_to_the_data_unless_given(tmp_path):
    config = class_folder_config(tmp_path)
    assert config["alpha"] is None and config["alpha_source"] == "measured default"
    resolved, reason = with_alpha(config, (32, 32, 1), 5)
    assert resolved["alpha"] == 0.1 and reason == default_alpha((32, 32, 1), 5)[1]
    assert resolved["alpha_source"] == "measured default"
    assert config["alpha"] is None  # a new dict; the settings stay as resolved
    # An explicit alpha wins, even where the rule would choose another weight.
    given = class_folder_config(tmp_path, alpha=0.05)
    assert given["alpha"] == 0.05 and given["alpha_source"] == "flag"
    assert with_alpha(given, (8, 8, 3), 3) == (given, None)


@pytest.mark.parametrize(
    "dataset, alpha",
    [("digits", 0.1), ("mnist", 0.02), ("fashion_mnist", 0.02), ("celeba", 0.02)],
)
def test_other_presets_keep_their_alpha(tmp_path, dataset, alpha):
    data_dir = None if dataset == "digits" else str(tmp_path)
    config = resolve_config(dict(dataset=dataset, data_dir=data_dir, out=str(tmp_path)))
    assert config["alpha"] == alpha and config["alpha_source"] == "preset"
    assert with_alpha(config, (8, 8, 3), 1000) == (config, None)
    given = resolve_config(dict(dataset=dataset, data_dir=data_dir, out=str(tmp_path),
                                alpha=0.3))
    assert given["alpha"] == 0.3 and given["alpha_source"] == "flag"


def test_how_alpha_was_chosen_is_not_part_of_the_target(tmp_path):
    preset = resolve_config(dict(out=str(tmp_path)))
    given = resolve_config(dict(out=str(tmp_path), alpha=0.1))
    assert preset["alpha_source"] != given["alpha_source"]
    assert identity(preset) == identity(given)
    assert "alpha_source" in RESUMABLE_CHANGES


def test_the_command_states_a_measured_default_before_the_trapdoor_line(capsys):
    command = importlib.import_module("trapmid_tf.cli.train_target")
    reason = "default for 8x8x3 images and 3 classes: why"
    results = dict(trapdoor_formed=True, trapdoor_accuracy=0.95, trapdoor_warning_threshold=0.9,
                   alpha=0.2, alpha_source="measured default", alpha_reason=reason)
    command.print_results(results)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [
        f"alpha 0.2 ({reason}; set --alpha to choose).",
        "Trapdoor formed: test trapdoor accuracy 0.950 >= 0.9.",
    ]
    for source in ("flag", "preset", None):
        assert command.alpha_line(dict(results, alpha_source=source)) is None
