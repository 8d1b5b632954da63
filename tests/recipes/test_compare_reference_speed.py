"""The pure parts of recipes/compare_reference_speed.py (no torch, no timing checks)."""

import statistics
import sys

import pytest
from absl import app
from tests.recipes.recipe_loader import load_recipe


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("compare_reference_speed")


@pytest.fixture
def reference_repo(tmp_path):
    for path in ("engine.py", "classify.py", "plgmi/train_cgan.py", "lomma/models/generator.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    return str(tmp_path)


def test_rounds_merge_into_one_summary_per_side(recipe):
    results = {}
    recipe.merge_round(results, "P1", "ours", [10.0, 12.0, 11.0])
    recipe.merge_round(results, "P1", "reference", [20.0, 30.0])
    recipe.merge_round(results, "P1", "ours", [13.0, 9.0])
    recipe.merge_round(results, "P1", "reference", [25.0, 40.0, 22.0])
    recipe.merge_round(results, "A3", "ours", [1.5] * 5)
    recipe.merge_round(results, "A3", "reference", [3.0] * 5)
    recipe.merge_round(results, "W2", "ours", [300.0] * 5)
    recipe.merge_round(results, "W2", "reference", [400.0] * 5)
    assert results["P1"]["ours"] == [[10.0, 12.0, 11.0], [13.0, 9.0]]
    comparison = recipe.compare(results)
    ours, reference = comparison["P1"]["ours"], comparison["P1"]["reference"]
    # Medians over all rounds' repetitions, computed by hand: ours 11, reference 25.
    assert ours["median_ms"] == statistics.median([10, 12, 11, 13, 9]) == 11.0
    assert (ours["min_ms"], ours["max_ms"], ours["repetitions"]) == (9.0, 13.0, 5)
    assert reference["median_ms"] == 25.0
    assert comparison["P1"]["ours_over_reference"] == 0.44
    assert comparison["P1"]["unit"] == "ms/iteration"
    assert comparison["A3"]["ours"]["median_s"] == 1.5
    assert comparison["A3"]["ours_over_reference"] == 0.5
    assert comparison["A3"]["unit"] == "s/100 iterations"
    assert comparison["W2"]["ours_over_reference"] == 0.75
    assert comparison["W2"]["unit"] == "ms/step"
    table = recipe.format_table(comparison).splitlines()
    assert table[0] == "| workload | unit | ours | reference | ours / reference |"
    assert "| P1 | ms/iteration | 11.0 | 25.0 | 0.44 |" in table
    assert "| A3 | s/100 iterations | 1.5 | 3.0 | 0.5 |" in table


def test_merge_rejects_an_unknown_side(recipe):
    with pytest.raises(ValueError, match="`side` must be 'ours' or 'reference'"):
        recipe.merge_round({}, "P1", "theirs", [1.0])


def test_summary_of_no_timings_is_an_error(recipe):
    with pytest.raises(ValueError, match="No timings"):
        recipe.summarize([[]], "ms")


def test_good_flags_pass(recipe, reference_repo):
    recipe.check_flags(["P1", "A3"], sys.executable, reference_repo, 2, 5)


@pytest.mark.parametrize(
    "workloads, python, use_repo, rounds, repetitions, message",
    [
        (["P9"], sys.executable, True, 1, 5, "--workloads must be some of"),
        ([], sys.executable, True, 1, 5, "--workloads must be some of"),
        (["P1"], None, True, 1, 5, "--reference_python must be an executable"),
        (["P1"], "/nonexistent/python", True, 1, 5, "--reference_python must be an executable"),
        (["P1"], sys.executable, False, 1, 5, "--reference_repo must be a checkout"),
        (["P1"], sys.executable, True, 0, 5, "--rounds must be >= 1; got 0"),
        (["P1"], sys.executable, True, 1, 4, "--repetitions must be >= 5; got 4"),
    ],
)
def test_bad_flags_are_rejected(recipe, reference_repo, tmp_path, workloads, python, use_repo,
                                rounds, repetitions, message):
    repo = reference_repo if use_repo else str(tmp_path / "empty")
    with pytest.raises(app.UsageError, match=message):
        recipe.check_flags(workloads, python, repo, rounds, repetitions)


def test_reference_definitions_are_taken_without_their_imports(recipe, tmp_path):
    source = tmp_path / "helpers.py"
    source.write_text("import cv2\n\ndef double(x):\n    return 2 * x\n\nclass Box:\n    pass\n")
    loaded = recipe.load_reference_functions(str(source), ["double", "Box"], {})
    assert loaded.double(21) == 42 and loaded.Box.__name__ == "Box"
    with pytest.raises(RuntimeError, match=r"lacks \['triple'\]"):
        recipe.load_reference_functions(str(source), ["triple"], {})
