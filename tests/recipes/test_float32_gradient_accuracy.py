"""recipes/float32_gradient_accuracy.py: its torch-free parts, and (large) the run itself."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from tests.recipes.recipe_loader import load_recipe

ROOT = pathlib.Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "float32_gradient_accuracy.py"
TORCH_PYTHON = os.environ.get("TRAPMID_TORCH_PYTHON", "/work/torchenv/bin/python")
POOLED = {"block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"}


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("float32_gradient_accuracy")


def test_relative_errors_scale_by_the_largest_entry_and_by_the_norm(recipe):
    # Difference (0, -1e-3, 0): max-based 1e-3 / 2, norm-based 1e-3 / sqrt(1 + 4), by hand.
    approximate, exact = np.array([1.0, -2.001, 0.0]), np.array([1.0, -2.0, 0.0])
    max_based, norm_based = recipe.relative_errors(approximate, exact)
    assert max_based == pytest.approx(5e-4, rel=1e-12)
    assert norm_based == pytest.approx(1e-3 / np.sqrt(5.0), rel=1e-12)


def test_conv_names_are_vgg16s_thirteen_convs_and_the_five_before_a_pool(recipe):
    names, pooled = recipe.conv_names()
    assert len(names) == 13 and names[0] == "block1_conv1" and names[-1] == "block5_conv3"
    assert pooled == POOLED


def test_decision_report_counts_flipped_relus_and_moved_pool_maxima(recipe):
    # One 4x4 map in four 2x2 windows (row-major within each window):
    #   window (0, 0): 3.0 vs 2.9 stays put; (0, 1): near-tied 1.0 / 1.0 + 1e-6 swaps places;
    #   (1, 0): all negative, its maximum is the ReLU's 0 on both sides (not counted);
    #   (1, 1): the entry -1e-7 turns +1e-7 (a ReLU flip; the window's maximum 0.5 stays).
    exact = np.array([[3.0, 0.1, 1.0, 0.2],
                      [2.9, 0.0, 1.0 + 1e-6, 0.3],
                      [-1.0, -2.0, 0.5, -1e-7],
                      [-3.0, -4.0, 0.1, 0.2]])
    approximate = exact.copy()
    approximate[0, 2], approximate[1, 2] = 1.0 + 1e-6, 1.0
    approximate[2, 3] = 1e-7
    report = recipe.decision_report({"block1_conv2": approximate[None, :, :, None]},
                                    {"block1_conv2": exact[None, :, :, None]})
    # Largest change 1e-6 (the swapped pair) over the largest |exact| 4.
    assert report["block1_conv2"]["error"] == pytest.approx(1e-6 / 4.0, rel=1e-9)
    assert report["block1_conv2"]["relu_flips"] == 1
    assert report["block1_conv2"]["pool_flips"] == 1


def test_decision_report_has_no_pool_count_for_convs_without_a_pool(recipe):
    exact = np.ones((1, 2, 2, 1))
    report = recipe.decision_report({"block1_conv1": -exact}, {"block1_conv1": exact})
    assert report["block1_conv1"]["relu_flips"] == 4 and "pool_flips" not in report["block1_conv1"]


@pytest.mark.large
def test_our_float64_gradients_are_pytorchs(tmp_path):
    if not os.path.isfile(TORCH_PYTHON):
        pytest.skip(f"No torch-enabled python at {TORCH_PYTHON} (set TRAPMID_TORCH_PYTHON).")
    subprocess.run(
        [sys.executable, str(RECIPE), f"--reference_python={TORCH_PYTHON}", f"--out={tmp_path}",
         "--side=32", "--batch=4"],
        check=True, cwd=ROOT, capture_output=True,
    )
    results = json.loads((tmp_path / "results.json").read_text())["0"]
    for onednn in ("onednn_1", "onednn_0"):
        # Two float64 implementations of the same sums (up to 4608 terms per conv output, 13
        # layers): a few thousand roundings of 1.1e-16 each, well under 1e-9.
        assert results[onednn]["f64_check"] <= 1e-9
    assert set(results["onednn_1"]["errors"]) == {"torch", "float64 nudged", "zoo", "keras_conv",
                                                   "keras_bn", "keras"}


def test_group_of_names_conv_kernels_and_batch_norm_kinds(recipe):
    assert recipe.group_of("block2_conv1/kernel") == "block2_conv1"
    assert recipe.group_of("block2_conv1_bn/gamma") == "conv BN gamma (max of 13)"
    assert recipe.group_of("feature_bn/gamma") == "feature BN gamma"
    assert recipe.group_of("logits/kernel") == "logits kernel"


def test_format_seeds_takes_the_largest_kernel_error_and_sums_the_flips(recipe):
    # Kernel norm-based errors 1e-3 and 4e-3 (the BN entry's 9e-1 is no kernel): 4.0e-03;
    # flips 2 + 3 ReLU and 1 pool.
    columns = {"zoo": {"block1_conv1/kernel": (5e-3, 1e-3), "block1_conv2/kernel": (2e-3, 4e-3),
                       "block1_conv1_bn/gamma": (9e-1, 9e-1)}}
    decisions = {"zoo": {"block1_conv1": {"error": 0.0, "relu_flips": 2},
                         "block1_conv2": {"error": 0.0, "relu_flips": 3, "pool_flips": 1}}}
    table = recipe.format_seeds({7: (columns, decisions)})
    assert table.splitlines()[-1] == "| 7 | 4.0e-03 (5/1) |"
