"""recipes/benchmark.py runs a workload and writes its JSON (structure only: no timing checks)."""

import json
import pathlib
import subprocess
import sys

import pytest
from absl.testing import flagsaver

from tests.cli_cases import command_outcomes
from tests.recipes.recipe_loader import recipe_apart

BENCHMARK = pathlib.Path(__file__).resolve().parents[2] / "recipes" / "benchmark.py"


def test_benchmark_writes_timings_and_ratios(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--workloads=W3,A2", "--steps=1", "--warmup=1",
         "--attack_iterations=3", "--variants=plain,trapmid,trapmid_fast", "--phases",
         f"--out={out}"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    w3 = report["workloads"]["W3"]
    for variant in ("plain", "trapmid", "trapmid_fast"):
        assert w3[variant]["repetitions"] == 5
        assert w3[variant]["min_ms"] <= w3[variant]["median_ms"] <= w3[variant]["max_ms"]
    for variant in ("trapmid", "trapmid_fast"):
        assert w3[f"{variant}_over_plain"] == round(
            w3[variant]["median_ms"] / w3["plain"]["median_ms"], 2
        )
    a2 = report["workloads"]["A2"]["mi_face"]
    assert a2["repetitions"] == 5 and 0 < a2["min_s"] <= a2["median_s"] <= a2["max_s"]
    assert report["environment"]["tensorflow"].startswith("2.21")
    assert report["environment"]["attack_iterations_per_repetition"] == 3
    assert "| W3 | Trap-MID / plain |" in result.stdout
    assert "| W3 | Trap-MID fast / plain |" in result.stdout
    assert "| A2 | mi_face |" in result.stdout and "s/100 iterations |" in result.stdout
    phases = report["trapmid_phases"]["W3"]
    assert set(phases) == {
        "plain_step", "trapmid_step", "discriminator_phase", "trigger_phase",
        "classifier_phase", "augmentation",
    }
    for stats in phases.values():
        assert stats["repetitions"] == 5
        assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["max_ms"]
    assert "| W3 phases | discriminator_phase |" in result.stdout
    assert "A2" not in report["trapmid_phases"]  # attacks have no phases


@pytest.mark.large  # builds and steps every prior and attack workload (about 160 s)
def test_prior_and_attack_workloads_run_one_tiny_step_each(tmp_path):
    """Every new workload is built and timed (narrow GANs via --gan_width), with phases."""
    out = tmp_path / "attack_bench.json"
    new = ["P1", "P2", "P3", "P1d", "P2d", "P3d", "A1d", "A3", "A3d"]
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), f"--workloads={','.join(new)}", "--warmup=0",
         "--prior_iterations=1", "--attack_iterations=1", "--gan_width=2", "--phases",
         f"--out={out}"],
        capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["environment"]["prior_iterations_per_repetition"] == 1
    assert report["environment"]["gan_width_override"] == 2
    priors = {"P1": "gmi", "P2": "plgmi", "P3": "kedmi", "P1d": "gmi", "P2d": "plgmi",
              "P3d": "kedmi"}
    attacks = {"A1d": "gmi", "A3": "plgmi", "A3d": "plgmi"}
    for workload, name in priors.items():
        stats = report["workloads"][workload][name]
        assert stats["repetitions"] == len(stats["values"]) == 5
        assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["max_ms"]
        assert f"| {workload} | {name} |" in result.stdout
    for workload, name in attacks.items():
        stats = report["workloads"][workload][name]
        assert stats["repetitions"] == 5 and 0 < stats["min_s"] <= stats["max_s"]
    assert "ms/iteration |" in result.stdout and "ms/call |" in result.stdout
    phases = report["attack_phases"]
    assert set(phases) == set(new)
    assert set(phases["P1"]) == {"generator_forward", "generator_gradient", "opponent_gradient",
                                 "gradient_penalty_gradient"}
    assert set(phases["P3"]) == {"generator_forward", "generator_gradient", "opponent_gradient",
                                 "target_forward"}
    assert set(phases["P2"]) == {"generator_forward", "generator_gradient", "opponent_gradient",
                                 "target_forward", "augmentation"}
    assert set(phases["A1d"]) == {"generator_forward", "critic_forward", "target_forward",
                                  "iteration_gradient"}
    assert set(phases["A3"]) == {"generator_forward", "augmentation", "target_forward",
                                 "iteration_gradient"}


def test_precisions_are_timed_side_by_side(tmp_path):
    """Each precision of --precisions is timed, named "<name>@<precision>" (float32 plainly),
    with its ratio of medians to the first precision."""
    out = tmp_path / "precisions.json"
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--workloads=W3,A2", "--variants=plain",
         "--steps=1", "--warmup=0", "--attack_iterations=1",
         "--precisions=float32,mixed_bfloat16", f"--out={out}"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["environment"]["precisions"] == ["float32", "mixed_bfloat16"]
    for workload, name, unit in (("W3", "plain", "ms"), ("A2", "mi_face", "s")):
        timings = report["workloads"][workload]
        for key in (name, f"{name}@mixed_bfloat16"):
            assert timings[key]["repetitions"] == 5
        assert timings[f"{name}@mixed_bfloat16_over_{name}"] == round(
            timings[f"{name}@mixed_bfloat16"][f"median_{unit}"] / timings[name][f"median_{unit}"],
            2,
        )
        assert f"| {workload} | {name}@mixed_bfloat16 / {name} |" in result.stdout


def test_compile_modes_are_timed_side_by_side(tmp_path):
    """Each mode of --compile_modes is timed, named "<name>@xla" (graph plainly), with its
    ratio of medians to the first mode; Trap-MID, whose augmentation layer declares no XLA
    support, is recorded as failed and the run goes on."""
    out = tmp_path / "compile_modes.json"
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--workloads=W3", "--variants=plain,trapmid",
         "--steps=1", "--warmup=0", "--compile_modes=graph,xla", f"--out={out}"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["environment"]["compile_modes"] == ["graph", "xla"]
    w3 = report["workloads"]["W3"]
    for key in ("plain", "plain@xla", "trapmid"):
        assert w3[key]["repetitions"] == 5, key
    assert w3["trapmid@xla"] == {
        "failed": "XLAUnsupported: Keras compiled TrapMIDModel with jit_compile=False; layers "
        "without XLA support: ['augment']"
    }
    for numerator, denominator in (("plain@xla", "plain"), ("trapmid", "plain")):
        assert w3[f"{numerator}_over_{denominator}"] == round(
            w3[numerator]["median_ms"] / w3[denominator]["median_ms"], 2
        )
    # No ratio with the failure in it.
    assert {key for key in w3 if "_over_" in key} == {"plain@xla_over_plain", "trapmid_over_plain"}
    assert "| W3 | plain@xla / plain |" in result.stdout
    assert "| W3 | trapmid@xla | failed | | | XLAUnsupported: " in result.stdout


def test_precision_and_compile_mode_ratios_are_taken_along_each_axis():
    """With two precisions and two modes, each setting is named "<name>[@precision][@mode]"
    and compared with the first mode at its precision and with the first precision in its
    mode; an entry that failed enters no ratio."""
    with recipe_apart("benchmark") as recipe, flagsaver.flagsaver():
        recipe.FLAGS(["benchmark", "--precisions=float32,mixed_bfloat16",
                      "--compile_modes=graph,xla"])
        names = [recipe.at_setting("plain", *setting) for setting in recipe.settings()]
        assert names == ["plain", "plain@xla", "plain@mixed_bfloat16", "plain@mixed_bfloat16@xla"]
        timings = {name: {"median_ms": median} for name, median in zip(names, (10, 5, 20, 8))}
        timings.update(trapmid={"median_ms": 30}, **{"trapmid@xla": {"failed": "no kernel"}})
        recipe.add_setting_ratios(timings, ["plain", "trapmid"])
    ratios = {key: value for key, value in timings.items() if "_over_" in key}
    assert ratios == {  # the medians' quotients by hand
        "plain@xla_over_plain": 0.5,
        "plain@mixed_bfloat16_over_plain": 2.0,
        "plain@mixed_bfloat16@xla_over_plain@xla": 1.6,
        "plain@mixed_bfloat16@xla_over_plain@mixed_bfloat16": 0.4,
    }


BAD_FLAGS = [
    (["--workloads=W9"], "unknown ['W9']"),
    (["--variants=plain,fastest"], "--variants must be some of"),
    (["--workloads=P1d", "--prior_iterations=0"], "--prior_iterations must be >= 1"),
    (["--workloads=P1d", "--gan_width=0"], "--gan_width must be >= 1"),
    (["--precisions=float32,float16"], "--precisions must be distinct names among"),
    (["--compile_modes=graph,jit"], "--compile_modes must be distinct names among"),
    (["--compile_modes=xla,xla"], "--compile_modes must be distinct names among"),
]


def test_bad_flags_are_rejected_before_any_work():
    outcomes = command_outcomes(str(BENCHMARK), [{"argv": argv} for argv, _ in BAD_FLAGS],
                                work_starts_at="environment")
    for (argv, message), outcome in zip(BAD_FLAGS, outcomes):
        assert not outcome["started"] and message in outcome["message"], (argv, outcome)
