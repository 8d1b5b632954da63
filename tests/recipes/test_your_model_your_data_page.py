"""docs/your_model_your_data.md: its shell commands run as written, on tiny data and budgets.

The commands are read from the page's ```sh blocks and run in order, each in bash, from a
folder where `recipes/` and `docs/` lead to the repository's (the page runs from the
repository root and writes below `runs/`), with the package's interpreter and commands first
on PATH. Flags appended to a command win over the page's (absl keeps the last value): the
folder recipe reads tiny Fashion-MNIST-like IDX files (tests/recipes/test_fashion_mnist_folders.py),
trapmid-train takes batches of 8 (the page's 64 would be one step an epoch), and trapmid-audit
the tiny preset's budgets. Each step must leave what the next one reads.
"""

import filecmp
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.recipes.test_fashion_mnist_folders import write_fashion_like_idx
from trapmid_tf.experiments.audit import AUDITED
from trapmid_tf.experiments.pipeline import PRESETS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAGE = os.path.join(ROOT, "docs", "your_model_your_data.md")
# 24 training images of each class: 120 public images, more than one GMI batch of 64.
TRAIN_PER_CLASS, TEST_PER_CLASS = 24, 12
# The tiny preset's budgets, as trapmid-audit flags (its own settings of a pipeline left out).
TINY_BUDGETS = [f"--{key}={value}" for key, value in PRESETS["tiny"].items()
                if key not in ("defenses", "seeds", "target_epochs", "require_trapdoor")]


def page_commands(path=PAGE):
    """The page's shell commands, in order, continuation lines joined."""
    with open(path, encoding="utf-8") as stream:
        blocks = re.findall(r"^```sh\n(.*?)^```", stream.read(), flags=re.DOTALL | re.MULTILINE)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [" ".join(line.split()) for line in lines if line.strip()]


def program(command):
    """What a command runs: the recipe's path, a console command, or the shell's program."""
    words = [word for word in shlex.split(command) if "=" not in word or word.startswith("-")]
    return words[1] if words[0] == "python" else words[0]


def overrides(command, data_dir):
    """The flags appended to `command`."""
    return {
        "recipes/fashion_mnist_folders.py": [f"--data_dir={data_dir}"],
        "trapmid-train": ["--batch_size=8"],
        "trapmid-audit": TINY_BUDGETS,
    }.get(program(command), [])


def test_the_page_has_the_walk_through_in_order():
    assert [program(command) for command in page_commands()] == [
        "recipes/fashion_mnist_folders.py", "trapmid-train", "trapmid-audit", "trapmid-train",
        "mkdir", "cp", "trapmid-audit",
    ]


def test_both_audits_give_their_judges_the_recipes_other_folder():
    from tests.recipes.recipe_loader import load_recipe

    commands = page_commands()
    (out,) = [word.split("=", 1)[1] for word in shlex.split(commands[0])
              if word.startswith("--out=")]
    audits = [shlex.split(command) for command in commands if program(command) == "trapmid-audit"]
    assert len(audits) == 2
    for words in audits:
        assert f"--other_dir={out}/{load_recipe('fashion_mnist_folders').OTHER}" in words


@pytest.mark.large  # two trainings and two tiny audits, each its own interpreter (minutes)
def test_the_pages_commands_run_as_written(tmp_path):
    data_dir = str(tmp_path / "idx")
    write_fashion_like_idx(data_dir, TRAIN_PER_CLASS, TEST_PER_CLASS)
    work = tmp_path / "work"
    work.mkdir()
    for name in ("recipes", "docs"):
        os.symlink(os.path.join(ROOT, name), work / name)
    environment = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep
                       + os.environ["PATH"])
    outputs = []
    for command in page_commands():
        line = " ".join([command, *overrides(command, data_dir)])
        result = subprocess.run(["bash", "-c", line], cwd=work, env=environment,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
        outputs.append(result.stdout)

    runs = work / "runs" / "yours"
    assert sorted(os.listdir(runs / "data" / "private")) == [
        "0_t-shirt_top", "1_trouser", "2_pullover", "3_dress", "4_coat"]
    assert len(os.listdir(runs / "data" / "public")) == 5 * TRAIN_PER_CLASS
    assert len(os.listdir(runs / "data" / "other")) == 5 * TEST_PER_CLASS
    trained = {name: json.loads((runs / name / "results.json").read_text())
               for name in ("unprotected", "trapmid")}
    assert trained["unprotected"]["alpha"] is None and trained["trapmid"]["alpha"] == 0.2
    assert (runs / "trapmid" / "triggers.npz").exists()
    for model, audit in (("unprotected", "audit_unprotected"), ("trapmid", "audit_trapmid")):
        results = json.loads((runs / audit / "results.json").read_text())
        assert list(results["defenses"]) == [AUDITED]
        assert results["model"]["path"] == str(runs / model / "classifier.keras")
        assert results["model"]["classes"] == sorted(os.listdir(runs / "data" / "private"))
        # Both judges know the 5 private classes and "other" (--other_dir): the 5 x 12 test
        # images of each.
        assert results["evaluation_model"]["classes"] == 6
        assert results["pixel_judge"]["images"] == 10 * TEST_PER_CLASS
        assert results["pixel_judge"]["classes"] == 6
        report = (runs / audit / "report.md").read_text()
        assert any(line.startswith(f"| {AUDITED} ") for line in report.splitlines())
    # The second audit reused the copied judge and GMI prior: the same files, not retrained.
    first, second = runs / "audit_unprotected", runs / "audit_trapmid"
    for stage in ("evaluator/classifier.keras", "priors/gmi/seed_0/generator.keras"):
        assert filecmp.cmp(first / stage, second / stage, shallow=False), stage
