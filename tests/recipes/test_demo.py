"""recipes/demo.py end to end with one epoch per run."""

import json
import pathlib
import subprocess
import sys

DEMO = pathlib.Path(__file__).resolve().parents[2] / "recipes" / "demo.py"


def test_demo_trains_both_targets_and_prints_the_table(tmp_path):
    result = subprocess.run(
        [sys.executable, str(DEMO), f"--out={tmp_path}", "--epochs=1"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"none", "trapmid"}
    assert summary["none"]["trapdoor_accuracy"] is None
    for defense, results in summary.items():
        assert results["epochs"] == 1
        row = next(line for line in result.stdout.splitlines() if line.startswith(f"| {defense} |"))
        assert f"{100 * results['test_accuracy']:.1f}%" in row
        assert (tmp_path / defense / "classifier.keras").exists()
