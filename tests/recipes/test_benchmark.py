"""recipes/benchmark.py runs a workload and writes its JSON (structure only: no timing checks)."""

import json
import pathlib
import subprocess
import sys

BENCHMARK = pathlib.Path(__file__).resolve().parents[2] / "recipes" / "benchmark.py"


def test_benchmark_writes_timings_and_ratio(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--workloads=W3", "--steps=1", "--warmup=1",
         f"--out={out}"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    w3 = report["workloads"]["W3"]
    for variant in ("plain", "trapmid"):
        assert w3[variant]["repetitions"] == 5
        assert w3[variant]["min_ms"] <= w3[variant]["median_ms"] <= w3[variant]["max_ms"]
    assert w3["trapmid_over_plain"] == round(
        w3["trapmid"]["median_ms"] / w3["plain"]["median_ms"], 2
    )
    assert report["environment"]["tensorflow"].startswith("2.21")
    assert "| W3 | Trap-MID / plain |" in result.stdout


def test_unknown_workload_is_rejected():
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--workloads=W9"], capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "unknown ['W9']" in result.stderr
