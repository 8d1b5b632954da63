"""trapmid-pipeline end to end on the tiny preset, and the single-stage commands."""

import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.cli_cases import command_outcomes

RECIPES = pathlib.Path(__file__).resolve().parents[2] / "recipes"
# The lookup baseline and the transfer null run first in every pipeline, whatever --attacks
# says.
ATTACKS = ("lookup", "transfer_null", "gmi", "kedmi", "lomma_gmi", "lomma_kedmi", "plgmi",
           "mi_face")
METRICS = ("aa1", "pixel_aa1", "aa5", "knn", "fid", "fid_all", "trapdoor_similarity",
           "chance_aa1")


def run(command, *flags, timeout=900):
    """Runs the console command module `trapmid_tf.cli.<command>` with `flags`."""
    return subprocess.run(
        [sys.executable, "-m", f"trapmid_tf.cli.{command}", *flags],
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    result = run("pipeline", "--preset=tiny", f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.mark.large  # shares a tiny pipeline run (minutes)
def test_results_hold_every_defense_and_attack(tiny):
    from trapmid_tf.experiments import pipeline

    out, result = tiny
    results = json.loads((out / "results.json").read_text())
    assert set(results["defenses"]) == {"none", "trapmid"}
    assert results["evaluation_model"]["classes"] == 10
    assert results["attacked_classes"] == 5  # the digits' private classes, not the judge's 10
    # The digits' references: the private test split alone (180 images of the 5 classes).
    assert results["pixel_judge"] == dict(references="private test split", images=180,
                                          classes=5)
    # The held-out judge: IR-18 (the targets are small CNNs) on the private test split's 180
    # images (36, 36, 35, 37, 36 per private class), 7 of each class (round(0.2 n)) held out
    # to test it.
    held_out = results["held_out_judge"]
    assert (held_out["architecture"], held_out["classes"]) == ("ir18", 5)
    assert (held_out["data"]["train_images"], held_out["data"]["test_images"]) == (145, 35)
    assert 0.0 <= held_out["accuracy"] <= 1.0
    # The profile: every stage but the report (still running when results.json is written).
    assert {"target none, seed 0", "evaluation model", "gmi prior, seed 0"} <= set(
        results["stage_seconds"])
    recorded = pipeline.PipelineSettings(**results["settings"])
    assert len(results["stage_seconds"]) == pipeline.stage_count(recorded) - 1
    for defense, scores in results["defenses"].items():
        assert scores["seeds"] == [0]
        assert set(scores["attacks"]) == set(ATTACKS)  # results.json sorts its keys
        assert 0.0 <= scores["accuracy"]["low"] <= scores["accuracy"]["high"] <= 1.0
        for attack in ATTACKS:
            summary = scores["attacks"][attack]
            assert set(METRICS) <= set(summary)
            assert 0.0 <= summary["aa1"]["mean"] <= summary["aa5"]["mean"] <= 1.0
            # The interval comes from the 10 per-image outcomes of the one seed.
            top1 = summary["groups"]["top1"]
            assert len(top1) == 1 and len(top1[0]) == 10
            assert summary["aa1"]["mean"] == pytest.approx(np.mean(top1[0]))
            assert summary["aa1"]["low"] <= summary["aa1"]["mean"] <= summary["aa1"]["high"]
            # 32x32 digits: the pixel judge scores the same 10 reconstructions.
            pixel_top1 = summary["groups"]["pixel_top1"]
            assert len(pixel_top1) == 1 and len(pixel_top1[0]) == 10
            assert summary["pixel_aa1"]["mean"] == pytest.approx(np.mean(pixel_top1[0]))
            # So does the held-out judge, the lookup and the transfer null included.
            held_out_top1 = summary["groups"]["held_out_top1"]
            assert len(held_out_top1) == 1 and len(held_out_top1[0]) == 10
            assert summary["held_out_aa1"]["mean"] == pytest.approx(np.mean(held_out_top1[0]))
            # Only the Trap-MID target has triggers to compare with.
            assert (summary["trapdoor_similarity"] is None) == (defense == "none")
    # Only the Trap-MID target has triggers whose leakage is measured.
    assert results["defenses"]["none"]["trigger_leakage"] is None
    leakage = results["defenses"]["trapmid"]["trigger_leakage"]
    assert leakage["triggers"] == 5 and leakage["chance"] == pytest.approx(1 / 10)
    # The printed table and the report show the same numbers.
    row = next(line for line in result.stdout.splitlines() if line.startswith("| trapmid "))
    assert f"{results['defenses']['trapmid']['attacks']['gmi']['aa1']['mean']:.3f}" in row
    report = (out / "report.md").read_text()
    assert "## Trigger leakage" in report
    from trapmid_tf.report.markdown import LEAKAGE_RULE

    assert LEAKAGE_RULE in report.splitlines()
    for attack in ATTACKS:
        assert f"![{attack}](grids/{attack}.png)" in report
        assert (out / "grids" / f"{attack}.png").stat().st_size > 0
    # Pictures of triggers and the TensorBoard folder holding them are owner-only.
    assert (out / "grids" / "triggers_trapmid.png").stat().st_mode & 0o777 == 0o600
    assert (out / "grids" / "gmi.png").stat().st_mode & 0o777 == 0o644
    assert (out / "logs").stat().st_mode & 0o777 == 0o700
    assert json.loads((out / "flags.json").read_text())["preset"] == "tiny"


@pytest.mark.large  # shares a tiny pipeline run (minutes)
def test_a_default_run_is_quiet_and_shows_its_stages(tiny):
    _, result = tiny
    for noise in ("cuInit", "oneDNN", "absl::InitializeLog", "Epoch 1/"):
        assert noise not in result.stderr and noise not in result.stdout
    # tiny (one seed): 2 targets, evaluator, held-out judge, the GMI prior of seed 0 (one per
    # training seed), 3 target priors x 2, 8 attacks (the lookup, the transfer null and six)
    # x 2, 2 scores, report.
    total = 2 + 1 + 1 + 1 + 6 + 16 + 2 + 1
    lines = result.stderr.splitlines()
    progress = [line for line in lines if line.startswith("[")]
    assert re.fullmatch(rf"\[-{{20}}\] 0/{total} stages, \d+s spent: target none, seed 0",
                        progress[0])
    assert progress[-1].startswith(f"[{'#' * 20}] {total}/{total} stages")
    assert len(progress) == total + 1  # one line as each stage starts, one at the end


@pytest.mark.large  # shares a tiny pipeline run (minutes)
def test_results_record_the_steps_each_stage_ran(tiny):
    out, _ = tiny
    results = json.loads((out / "results.json").read_text())
    for scores in results["defenses"].values():
        steps = scores["prior_steps"]["0"]
        # tiny: GMI 2 generator steps after 5 critic steps each; KED-MI 4 with n_critic 1;
        # PLG-MI 2 generator steps of 5 discriminator steps; 4 steps per LOMMA surrogate.
        assert steps["gmi"] == {"generator_steps": 2, "opponent_steps": 10}
        assert steps["kedmi"] == {"generator_steps": 4, "opponent_steps": 4}
        assert steps["plgmi"] == {"generator_steps": 2, "opponent_steps": 10}
        assert steps["lomma"] == {"distillation_steps": [4, 4, 4]}
        for attack in ATTACKS:
            # The lookup optimises nothing; the transfer null takes its own 10 steps.
            expected = {"lookup": 0, "transfer_null": 10}.get(attack, 4)
            assert scores["attacks"][attack]["inversion_steps"] == expected
    # The GMI prior of training seed 0, on the public data of the split of --seed (0).
    stage = json.loads((out / "priors" / "gmi" / "seed_0" / "stage.json").read_text())
    assert (stage["seed"], stage["split_seed"], stage["target"]) == (0, 0, None)


@pytest.mark.large  # shares a tiny pipeline run (minutes)
def test_reconstructions_are_stored_per_target_and_attack(tiny):
    out, _ = tiny
    stored_path = out / "targets" / "none" / "seed_0" / "attacks" / "gmi" / "reconstructions.npz"
    with np.load(stored_path) as stored:
        assert stored["images"].shape == (10, 32, 32, 1)  # 5 classes x 2
        assert stored["initial_images"].shape == (10, 32, 32, 1)
        np.testing.assert_array_equal(np.bincount(stored["labels"]), [2] * 5)
    lookup = out / "targets" / "none" / "seed_0" / "attacks" / "lookup" / "reconstructions.npz"
    with np.load(lookup) as stored:
        # Public images picked, not optimised: its 0-step start is the same pick.
        np.testing.assert_array_equal(stored["images"], stored["initial_images"])
        assert stored["latents"].shape == (10,) and int(stored["iterations"]) == 0
    null = out / "targets" / "none" / "seed_0" / "attacks" / "transfer_null" / "reconstructions.npz"
    with np.load(null) as stored:
        # Its 0-step start is random public images; 10 signed steps of 2/255 move a pixel by
        # at most 20/255 (1e-6: float32 rounding of ten additions to values in [0, 1]).
        assert np.abs(stored["images"] - stored["initial_images"]).max() <= 20 / 255 + 1e-6
        assert stored["images"].min() >= 0.0 and stored["images"].max() <= 1.0


def test_the_lookup_baseline_and_the_transfer_null_run_first_in_every_preset():
    from trapmid_tf.experiments import pipeline

    for preset in pipeline.PRESETS:
        assert pipeline.pipeline_settings(preset).attacks[:2] == ("lookup", "transfer_null")
    chosen = pipeline.pipeline_settings("tiny", attacks=["gmi", "lookup", "brep_mi"])
    assert chosen.attacks == ("lookup", "transfer_null", "gmi", "brep_mi")


def test_settings_record_the_preset_with_the_run_wide_choices_as_plain_json():
    from trapmid_tf.experiments import pipeline

    settings = pipeline.pipeline_settings("tiny", {"per_class": 3}, attacks=["gmi"],
                                          budget_scale=2, adaptive_weight=0.5)
    # The tiny preset as written in PRESETS, the override, every step budget doubled (the
    # tiny preset's: gmi 2, kedmi 4, plgmi 2, surrogates 4, every inversion 4).
    expected = dict(pipeline.PRESETS["tiny"], per_class=3, gmi_steps=4, kedmi_steps=8,
                    plgmi_steps=4, surrogate_steps=8, iterations=8, plgmi_iterations=8,
                    mi_face_iterations=8, recovery_iterations=8, brep_iterations=8,
                    attacks=["lookup", "transfer_null", "gmi"], adaptive_weight=0.5,
                    recovery_alpha=None, budget_scale=2, public_split=None)
    assert settings.as_dict() == expected
    assert json.loads(json.dumps(settings.as_dict())) == expected  # lists, not tuples


@pytest.mark.parametrize("changes, message", [
    (dict(preset="huge"), "`preset` must be one of"),
    (dict(overrides={"gmi_steps": 0}), "`gmi_steps` must be positive; received 0."),
    (dict(overrides={"seeds": [1, 1]}), "`seeds` must list distinct integers"),
    (dict(attacks=["fgsm"]), "`attacks` must list names among"),
    (dict(budget_scale=0), "`budget_scale` must be >= 1; received 0."),
])
def test_bad_settings_name_the_setting_not_a_flag(changes, message):
    from trapmid_tf.experiments import pipeline

    with pytest.raises(ValueError, match=re.escape(message)):
        pipeline.pipeline_settings(**changes)


def test_one_gmi_prior_per_training_seed_shared_by_its_defenses(monkeypatch, tmp_path):
    import io

    from trapmid_tf.experiments import pipeline, prior_stages, target_stages
    from trapmid_tf.experiments.progress import StageProgress

    settings = dataclasses.replace(  # public_split as run_pipeline sets it for the digits
        pipeline.pipeline_settings("tiny", {"seeds": [0, 1]}, attacks=["gmi", "mi_face"]),
        public_split="samples",
    )
    # 2 defenses x 2 seeds, per target its training, 4 attacks (the lookup, the transfer
    # null, gmi, mi_face) and its scores, no target prior; the evaluation model, the held-out
    # judge, one GMI prior per seed, report.
    assert pipeline.stage_count(settings) == 4 * (1 + 4 + 1) + 1 + 1 + 2 + 1
    # Every attack, 3 seeds: per target also the KED-MI, PLG-MI and LOMMA priors, 8 attacks.
    three = pipeline.pipeline_settings("tiny", {"seeds": [0, 1, 2]})
    assert pipeline.stage_count(three) == 6 * (1 + 3 + 8 + 1) + 1 + 1 + 3 + 1
    calls = []

    def record(name, public, target, prior_settings, out, overwrite, verbose):
        calls.append((name, target, prior_settings, out))
        return object()  # the trained networks, one object per training

    monkeypatch.setattr(prior_stages, "train_prior", record)
    run = pipeline.PipelineRun(out=str(tmp_path), seed=7)
    stream = io.StringIO()
    gmi = prior_stages.gmi_prior_per_seed(run, settings, "public images",
                                          StageProgress(24, stream))
    # The targets in the order run_pipeline attacks them (train_targets': seed by seed).
    keys = [(defense, seed) for seed in settings.seeds for defense in settings.defenses]
    assert keys == list(target_stages.target_configs(run, settings))
    priors = {(defense, seed): gmi(seed) for defense, seed in keys}
    assert [(name, target, out) for name, target, _, out in calls] == [
        ("gmi", None, str(tmp_path / "priors" / "gmi" / "seed_0")),
        ("gmi", None, str(tmp_path / "priors" / "gmi" / "seed_1")),
    ]
    first, second = (prior_settings for _, _, prior_settings, _ in calls)
    # Trained with the training seed, on the public data of the run's split (seed 7).
    assert (first["seed"], second["seed"]) == (0, 1)
    assert first["split_seed"] == second["split_seed"] == 7
    assert dict(first, seed=1) == second
    for seed in (0, 1):
        assert priors["none", seed] is priors["trapmid", seed]
        assert priors["none", seed][1] == calls[seed][2]
    assert priors["none", 0][0] is not priors["none", 1][0]
    stages = [line.split(": ", 1)[1] for line in stream.getvalue().splitlines()]
    assert stages == ["gmi prior, seed 0", "gmi prior, seed 1"]


@pytest.mark.large  # shares a tiny pipeline run (minutes)
def test_tensorboard_logs_hold_the_grids(tiny):
    import tensorflow as tf

    out, _ = tiny
    tags = set()
    for name in os.listdir(out / "logs"):
        for record in tf.data.TFRecordDataset(str(out / "logs" / name)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags.update(value.tag for value in event.summary.value)
    assert {"gmi", "plgmi", "triggers_trapmid"} <= tags


@pytest.mark.large  # shares a tiny pipeline run (minutes)
def test_a_copied_run_folder_reuses_every_stage(tiny, tmp_path):
    out, _ = tiny
    before = json.loads((out / "results.json").read_text())
    # A copy elsewhere is the same run: a stage's identity leaves out where it is written.
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    result = run("pipeline", "--preset=tiny", f"--out={moved}", "--verbose")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rebuilding" not in result.stderr
    # targets (2) + evaluator + held-out judge + the GMI prior of seed 0 + 3 target priors x 2
    # + 8 attacks x 2
    assert result.stderr.count("reusing the stored artefacts") == 2 + 1 + 1 + 1 + 6 + 16
    after = json.loads((moved / "results.json").read_text())
    assert after["defenses"] == before["defenses"]


@pytest.mark.large  # shares a tiny pipeline run (minutes)
def test_a_run_folder_without_the_held_out_judge_gains_it_alone(tiny, tmp_path):
    from trapmid_tf.experiments import pipeline
    from trapmid_tf.experiments.judges import HELD_OUT_FOLDER

    out, _ = tiny
    # A folder made before the held-out judge: every other stage as now (no other stage's
    # identity names the judge), no held_out_judge/.
    older = tmp_path / "older"
    shutil.copytree(out, older)
    shutil.rmtree(older / HELD_OUT_FOLDER)
    stages = sorted(older.rglob("stage.json"))
    written = {path: path.stat().st_mtime_ns for path in stages}
    results = pipeline.run_pipeline(
        pipeline.PipelineRun(out=str(older), preset="tiny"), pipeline.pipeline_settings("tiny")
    )
    # Every target, prior and attack stage reused untouched; only the judge trained anew.
    assert {path: path.stat().st_mtime_ns for path in stages} == written
    assert sorted(older.rglob("stage.json")) == sorted(
        stages + [older / HELD_OUT_FOLDER / "stage.json"])
    before = json.loads((out / "results.json").read_text())
    assert results["held_out_judge"]["data"] == before["held_out_judge"]["data"]
    # The scores are recomputed from the stored reconstructions (they are no stage): the
    # evaluation model's and the pixel judge's outcomes unchanged, the held-out judge's there.
    for defense, scores in results["defenses"].items():
        for attack, summary in scores["attacks"].items():
            stored = before["defenses"][defense]["attacks"][attack]["groups"]
            for key in ("top1", "top5", "knn", "pixel_top1"):
                assert summary["groups"][key] == stored[key]
            assert len(summary["groups"]["held_out_top1"][0]) == 10


@pytest.mark.large  # shares a tiny pipeline run (minutes)
def test_the_library_api_reuses_what_the_command_wrote(tiny, tmp_path):
    from trapmid_tf.experiments import pipeline

    out, _ = tiny
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    stages = sorted(moved.rglob("stage.json"))
    written = {path: path.stat().st_mtime_ns for path in stages}
    # The command's defaults are the library's: the same stages, nothing rebuilt.
    results = pipeline.run_pipeline(
        pipeline.PipelineRun(out=str(moved), preset="tiny"), pipeline.pipeline_settings("tiny")
    )
    assert len(stages) == 2 + 1 + 1 + 1 + 6 + 16
    assert {path: path.stat().st_mtime_ns for path in stages} == written
    before = json.loads((out / "results.json").read_text())
    assert results["defenses"] == before["defenses"]


@pytest.mark.large  # shares a tiny pipeline run (minutes)
def test_single_stage_recipes_chain(tiny, tmp_path):
    out, _ = tiny
    target = out / "targets" / "none" / "seed_0" / "classifier.keras"
    prior = tmp_path / "gmi"
    result = run("train_prior", "--prior=gmi", "--steps=1", "--base_channels=8",
                 f"--out={prior}")
    assert result.returncode == 0, result.stderr[-3000:]
    attacks = tmp_path / "attacks"
    result = run("attack", f"--target={target}", "--attacks=gmi,mi_face",
                 f"--gmi_prior={prior}", "--iterations=2", "--mi_face_iterations=2",
                 "--per_class=1", f"--out={attacks}")
    assert result.returncode == 0, result.stderr[-3000:]
    scores = tmp_path / "scores.json"
    result = run("evaluate", f"--evaluation_model={out / 'evaluator'}",
                 f"--target={target}", f"--attacks_dir={attacks}", f"--out={scores}")
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads(scores.read_text())
    assert set(evaluation) >= {"gmi", "mi_face", "evaluation_accuracy"}
    assert evaluation["gmi"]["trapdoor_similarity"] is None


BAD_FLAGS = [
    ("pipeline", ["--defenses=none,fortress", "--out=x"], "--defenses must list names"),
    ("pipeline", ["--attacks=gmi,fgsm", "--out=x"], "--attacks must list names"),
    ("pipeline", ["--defense=none", "--out=x"], "use --defenses here"),
    ("train_prior", ["--prior=plgmi", "--out=x"], "set --target"),
    ("train_prior", ["--prior=gmi", "--steps=0", "--out=x"], "--steps must be >= 1"),
    ("pipeline", ["--seeds=0,0", "--out=x"], "--seeds must list distinct"),
    ("pipeline", ["--budget_scale=0", "--out=x"], "--budget_scale must be >= 1"),
    ("pipeline", ["--adaptive_weight=-1", "--out=x"], "--adaptive_weight must be a"),
    ("pipeline", ["--recovery_alpha=1.5", "--out=x"], "--recovery_alpha must lie in"),
    ("pipeline", ["--brep_iterations=-1", "--out=x"], "--brep_iterations must be"),
    ("attack", ["--attacks=brep_mi", "--target=t.keras", "--out=x"], "take options"),
    ("attack", ["--attacks=plgmi", "--target=t.keras", "--out=x"], "needs --plgmi_prior"),
    ("evaluate", ["--evaluation_model=e", "--target=missing.keras", "--attacks_dir=a",
                  "--out=x"], "--target 'missing.keras' does not exist"),
]


# The flag file the README's headline table was made with; any existing --data_dir (the
# files are read only once the work starts).
HEADLINE = [f"--flagfile={RECIPES / 'headline_fashion_mnist.flags'}",
            f"--data_dir={RECIPES}", "--out=x"]


@pytest.fixture(scope="module")
def bad_flag_outcomes():
    """Every `BAD_FLAGS` command line, one interpreter per command: {index: outcome}; the
    `HEADLINE` command line's outcome under "headline"."""
    outcomes = {}
    for recipe in sorted({recipe for recipe, _, _ in BAD_FLAGS}):
        indices = [i for i, (name, _, _) in enumerate(BAD_FLAGS) if name == recipe]
        cases = [{"argv": BAD_FLAGS[i][1], "paths": ["x"]} for i in indices]
        keys = indices
        if recipe == "pipeline":
            cases.append({"argv": HEADLINE, "paths": ["x"]})
            keys = [*indices, "headline"]
        outcomes.update(zip(keys, command_outcomes(f"trapmid_tf.cli.{recipe}", cases)))
    return outcomes


def test_the_headline_benchmarks_flags_are_accepted(bad_flag_outcomes):
    assert bad_flag_outcomes["headline"]["message"] == ""
    assert bad_flag_outcomes["headline"]["started"]


@pytest.mark.parametrize("index", range(len(BAD_FLAGS)),
                         ids=[f"{r} {' '.join(f)}" for r, f, _ in BAD_FLAGS])
def test_bad_flags_are_rejected_before_any_work(bad_flag_outcomes, index):
    outcome = bad_flag_outcomes[index]
    assert not outcome["started"]
    assert BAD_FLAGS[index][2] in outcome["message"]
    assert outcome["written"] == []



def test_trapdoor_settings_reach_only_the_trapdoor_defenses(tmp_path):
    # One command line trains every defense: its Trap-MID settings must not reach (and be
    # refused for) the unprotected target.
    from trapmid_tf.experiments import pipeline
    from trapmid_tf.experiments.target_stages import target_configs

    run = pipeline.PipelineRun(
        out=str(tmp_path), target_settings=dict(
            min_trapdoor_accuracy=0.5, discriminator=False, alpha=0.3, epochs=2),
    )
    settings = pipeline.pipeline_settings("tiny", {"defenses": ["none", "trapmid", "negls"]})
    configs = target_configs(run, settings)
    trapmid = configs["trapmid", 0]
    assert (trapmid["min_trapdoor_accuracy"], trapmid["discriminator"]) == (0.5, False)
    for defense in ("none", "negls"):
        assert configs[defense, 0]["discriminator"] is True
        assert configs[defense, 0]["min_trapdoor_accuracy"] != 0.5
        assert configs[defense, 0]["epochs"] == 2


# The reference's budgets, read from its code (ntuaislab/Trap-MID), written out here by hand:
# plgmi/baselines/config/celeba.json "train_gan - first stage": epochs 120, batch_size 64,
# n_critic 5; utils.init_dataloader drop_last=True over data_files/celeba_ganset.txt (30,000
# images) -> 468 batches an epoch; GMI.py / KED_MI.py step the generator when step % n_critic
# == 0. plgmi/train_cgan.py: --max_iteration 30000, --n_dis 5, -B 64. lomma/engine.py
# train_augmodel: the "_20" checkpoint is saved at epoch index 19 of range(1, 21). recovery.py:
# 1500 iterations; plgmi/reconstruct.py: 600; top_n_selection.py: 30.
REFERENCE = dict(
    gmi_steps=11_232, kedmi_steps=11_232, plgmi_steps=30_000, surrogate_steps=8_892,
    kedmi_n_critic=5, kedmi_batch_size=64, top_n=30, iterations=1500, plgmi_iterations=600,
)


def test_full_preset_is_the_references_budgets(monkeypatch):
    from trapmid_tf.experiments import pipeline
    from trapmid_tf.experiments.prior_stages import REFERENCE_BATCH_SIZE, REFERENCE_N_CRITIC

    full = pipeline.preset_settings("full")
    assert {key: full[key] for key in REFERENCE} == REFERENCE
    assert REFERENCE_N_CRITIC == 5 and REFERENCE_BATCH_SIZE == 64
    assert full["per_class"] >= 20 and len(full["seeds"]) >= 3


@pytest.mark.slow  # two tiny pipelines (about 4 minutes); `make test-slow`
def test_convergence_runs_the_pipeline_at_each_scale(tmp_path):
    out = tmp_path / "convergence"
    result = subprocess.run(
        [sys.executable, str(RECIPES / "convergence.py"), "--scales=1,2", "--preset=tiny",
         "--attacks=gmi,mi_face", f"--out={out}"],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((out / "convergence.json").read_text())
    # By default the unprotected and the Trap-MID target, one block each; the lookup and the
    # transfer null have no scaled budget. One seed: no gain interval, no verdict.
    assert [row[:3] for row in table["rows"]] == [
        [defense, attack, scale] for defense in ("none", "trapmid")
        for attack in ("gmi", "mi_face") for scale in (1, 2)
    ]
    assert {row[5] for row in table["rows"]} == {"needs 2+ seeds", None}
    assert (out / "convergence.md").read_text().count("| attack | budget scale |") == 2
    # Doubling the budget doubled the steps every stage ran.
    for scale in (1, 2):
        results = json.loads((out / f"x{scale}" / "results.json").read_text())
        steps = results["defenses"]["none"]["prior_steps"]["0"]["gmi"]
        assert steps["generator_steps"] == 2 * scale
        assert results["defenses"]["none"]["attacks"]["gmi"]["inversion_steps"] == 4 * scale


OPTION_ATTACKS = ("plgmi_adaptive", "plgmi_adaptive_estimated", "trigger_recovery", "brep_mi")


@pytest.fixture(scope="module")
def adaptive(tmp_path_factory):
    """A second tiny run: the attackers who know the defense, and plain PLG-MI beside them."""
    out = tmp_path_factory.mktemp("adaptive")
    result = run("pipeline", "--preset=tiny", f"--attacks={','.join(OPTION_ATTACKS)},plgmi",
                 f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def centred_cosine(a, b):
    a, b = (np.ravel(x).astype(np.float64) for x in (a, b))
    a, b = a - a.mean(), b - b.mean()
    return a @ b / np.sqrt((a @ a) * (b @ b))


@pytest.mark.large  # shares a tiny pipeline run (minutes)
def test_option_attacks_run_with_their_options_and_budgets(adaptive):
    out = adaptive
    results = json.loads((out / "results.json").read_text())
    none, trapmid = (results["defenses"][d]["attacks"] for d in ("none", "trapmid"))
    assert none["plgmi_adaptive"] == {"not_applicable": "no trapdoor"}
    assert not (out / "targets" / "none" / "seed_0" / "attacks" / "plgmi_adaptive").exists()
    for attack in OPTION_ATTACKS:
        assert 0.0 <= trapmid[attack]["aa1"]["mean"] <= 1.0
    # tiny budgets: 4 PLG-MI++ steps (per round), 4 recovery steps, at most 4 BREP-MI steps.
    assert trapmid["plgmi_adaptive"]["inversion_steps"] == 4
    assert trapmid["plgmi_adaptive_estimated"]["inversion_steps"] == 4
    assert trapmid["trigger_recovery"]["inversion_steps"] == 4
    assert 0 <= trapmid["brep_mi"]["inversion_steps"] <= 4
    attacks = out / "targets" / "trapmid" / "seed_0" / "attacks"
    stage = json.loads((attacks / "plgmi_adaptive" / "stage.json").read_text())
    assert stage["options"]["penalty_weight"] == 1.0
    assert "defender" in stage["options"]["signatures"]
    # Trigger recovery blends at the target's own alpha (digits preset 0.1) by default.
    stage = json.loads((attacks / "trigger_recovery" / "stage.json").read_text())
    assert stage["options"]["alpha"] == stage["target"]["alpha"] == 0.1
    assert stage["options"]["iterations"] == 4
    assert json.loads((attacks / "brep_mi" / "stage.json").read_text())["options"] == {
        "max_iterations": 4, "max_initial_batches": 4}
    stage = json.loads((attacks / "plgmi_adaptive_estimated" / "stage.json").read_text())
    assert stage["options"]["top_n"] == 4 and "estimated" in stage["options"]["signatures"]
    # Each PLG-MI++ attack searched its own prior: PLG-MI's budget (tiny: 2 generator steps
    # of 5 discriminator steps) with the signature penalty at --adaptive_weight (1).
    target = out / "targets" / "trapmid" / "seed_0"
    steps = {"generator_steps": 2, "opponent_steps": 10}
    for attack in ("plgmi_adaptive", "plgmi_adaptive_estimated"):
        assert trapmid[attack]["prior"] == {"name": attack, "steps": steps,
                                            "signature_weight": 1.0}
        assert results["defenses"]["trapmid"]["prior_steps"]["0"][attack] == steps
        prior = json.loads((target / "priors" / attack / "stage.json").read_text())
        assert prior["signature_weight"] == 1.0 and prior["steps"] == 2
        assert json.loads((target / "attacks" / attack / "stage.json").read_text())[
            "priors"] == {attack: prior}
    assert "plgmi_adaptive" not in results["defenses"]["none"]["prior_steps"]["0"]
    assert not (out / "targets" / "none" / "seed_0" / "priors" / "plgmi_adaptive").exists()
    assert (target / "signatures" / "plgmi_adaptive_estimated" / "signatures.npy").is_file()


@pytest.mark.large  # shares a tiny pipeline run (minutes)
def test_recovered_patterns_are_compared_with_the_true_triggers(adaptive):
    out = adaptive
    results = json.loads((out / "results.json").read_text())
    recovery = results["defenses"]["trapmid"]["attacks"]["trigger_recovery"]
    target = out / "targets" / "trapmid" / "seed_0"
    with np.load(target / "attacks" / "trigger_recovery" / "reconstructions.npz") as stored:
        patterns, labels = stored["images"], stored["labels"]
    with np.load(target / "triggers.npz") as stored:
        triggers = stored["triggers"]
    cosine = np.array([[centred_cosine(p, t) for t in triggers] for p in patterns])
    own = cosine[np.arange(len(labels)), labels]
    # One seed: the interval over seeds is the seed's value.
    assert recovery["trigger_cosine"]["mean"] == pytest.approx(own.mean(), abs=1e-9)
    assert recovery["trigger_match"]["mean"] == pytest.approx(
        np.mean(np.argmax(cosine, axis=1) == labels))
    assert recovery["trigger_classes"] == 5
    assert "trigger_cosine" not in results["defenses"]["none"]["attacks"]["trigger_recovery"]


@pytest.mark.large  # shares a tiny pipeline run (minutes)
def test_trigger_leakage_is_the_evaluation_models_top1_on_the_triggers(adaptive):
    import keras
    import trapmid_tf.models  # noqa: F401  (registers the layers the evaluation model is made of)

    out = adaptive
    leakage = json.loads((out / "results.json").read_text())["defenses"]["trapmid"][
        "trigger_leakage"]
    with np.load(out / "targets" / "trapmid" / "seed_0" / "triggers.npz") as stored:
        triggers = stored["triggers"].astype(np.float64)
    judge = keras.models.load_model(out / "evaluator" / "classifier.keras")
    difference = triggers - triggers.mean(axis=0)
    low = difference.min(axis=(1, 2, 3), keepdims=True)
    parts = (difference - low) / (difference.max(axis=(1, 2, 3), keepdims=True) - low)
    classes = np.arange(len(triggers))
    for images, key in ((triggers, "trigger_top1"), (parts, "class_part_top1")):
        predicted = np.argmax(judge.predict(images.astype(np.float32), verbose=0), axis=1)
        assert leakage[key]["mean"] == pytest.approx(np.mean(predicted == classes))
    assert leakage["chance"] == pytest.approx(0.1)


@pytest.mark.large  # shares a tiny pipeline run (minutes)
def test_option_attacks_in_the_report(adaptive):
    out = adaptive
    report = (out / "report.md").read_text()
    assert "| none | 1 |" in report and "| not applicable: no trapdoor |" in report
    assert "| plgmi_adaptive vs plgmi | trapmid |" in report
    assert "## Trigger leakage" in report and "cosine with own trigger" in report
    section = report.split("## plgmi_adaptive\n")[1].split("## ")[0]
    assert "| none | not applicable: no trapdoor |" in section
    for attack in OPTION_ATTACKS:
        assert (out / "grids" / f"{attack}.png").stat().st_size > 0


@pytest.mark.large  # shares a tiny pipeline run (minutes)
def test_an_option_is_part_of_its_attacks_stage(adaptive):
    # Runs last among the tests of `adaptive`: it rewrites its results.json.
    result = run("pipeline", "--preset=tiny", "--attacks=plgmi_adaptive,brep_mi",
                 "--adaptive_weight=3", f"--out={adaptive}", "--verbose")
    assert result.returncode == 0, result.stderr[-3000:]
    rebuilt = [line for line in result.stderr.splitlines() if "rebuilding" in line]
    # The weight is part of PLG-MI++'s own prior (the Trap-MID target's; the unprotected
    # one has none) and of its attack.
    assert len(rebuilt) == 2
    assert "priors/plgmi_adaptive:" in rebuilt[0] and "attacks/plgmi_adaptive:" in rebuilt[1]
    # targets (2) + evaluator + held-out judge + the GMI prior of seed 0 (brep_mi's) + lookup
    # (2) + transfer null (2) + brep_mi (2); no plain PLG-MI prior (plgmi_adaptive never
    # searches it)
    assert result.stderr.count("reusing the stored artefacts") == 2 + 1 + 1 + 1 + 2 + 2 + 2


@pytest.mark.parametrize("changes, has_gap", [
    ({}, True), ({"budget_scale": 2}, False), ({"overrides": {"iterations": 50}}, False),
    ({"dataset": "fashion_mnist"}, False), ({"preset": "tiny"}, False),
])
def test_only_a_run_at_a_presets_own_budgets_carries_its_measured_gap(changes, has_gap):
    from trapmid_tf.experiments import pipeline
    from trapmid_tf.experiments.measured_convergence import MEASURED_GAPS
    from trapmid_tf.experiments.presets import measured_gap

    preset, dataset = changes.pop("preset", "quick"), changes.pop("dataset", "digits")
    settings = pipeline.pipeline_settings(preset, **changes)
    gap = measured_gap(settings, preset, dataset)
    assert gap == (MEASURED_GAPS["quick"].as_dict() if has_gap else None)
