"""The privacy-report experiment: targets per defense and seed, priors, attacks, scores, report.

`run_pipeline(run, settings)` goes through the stages and reuses each one that `run.out`
already holds, finished with the same settings (`trapmid_tf.files.build_or_reuse`): per
training seed one target per defense, the evaluation model, the held-out judge (a second
learned judge, trained on images no target trains on: `held_out_judge`), per training seed
the GMI prior
(trained with that seed, shared by that seed's targets), per target the priors that depend on
it (each PLG-MI++ attack its own PLG-MI prior, penalised with its trapdoor signatures, and
the estimated variant its signatures first) and every attack (always with the lookup
baseline, the floor of the report's verdicts, and the transfer null, the test of its
judges), then the scores and the report. A stage's identity is what its artefacts depend on,
never where they are written, so a run folder can be moved and reused. `trapmid-pipeline` is
its command line (its help lists the stages and the files written).

This module runs the stages in order and writes the results; the stages live in modules of
their own: `presets` (what a run works on, its budgets and checked settings), `target_stages`,
`judges`, `prior_stages` and `attack_stages` (with the scores of one target).
"""

import dataclasses
import os
import time

import numpy as np
import tensorflow as tf

import trapmid_tf as tm
import trapmid_tf.report as report  # `from trapmid_tf import report` loads the whole API
from trapmid_tf.experiments.attack_stages import attack_seed, attack_target
from trapmid_tf.experiments.attacks import attacked_classes
from trapmid_tf.experiments.evaluation import (
    judge_references, make_detector, make_evaluator, private_arrays,
)
from trapmid_tf.experiments.judges import held_out_judge, judge
from trapmid_tf.experiments.presets import (
    PRESETS, PipelineRun, PipelineSettings, measured_gap, pipeline_settings, preset_settings,
)
from trapmid_tf.experiments.prior_stages import (
    ESTIMATED, gmi_directory, gmi_prior_per_seed, penalised_prior_records, pipeline_priors,
    prior_steps, target_priors,
)
from trapmid_tf.experiments.priors import default_public_split
from trapmid_tf.experiments.progress import StageProgress
from trapmid_tf.experiments.summary import summarize_seeds
from trapmid_tf.experiments.target_stages import (
    TrainedTarget, stage_target, stored_triggers, target_configs, target_dir, target_triggers,
    train_targets,
)
from trapmid_tf.files import secret_folder, write_json

# What users and the docs take from here: a run, its settings and presets, its stage count.
__all__ = ["PRESETS", "PipelineRun", "PipelineSettings", "pipeline_settings", "preset_settings",
           "run_pipeline", "stage_count"]


def stage_count(settings):
    """The number of stages `main` goes through with `settings` (for its progress line)."""
    priors = pipeline_priors(settings.attacks)
    targets = len(settings.seeds) * len(settings.defenses)
    # Per target: its training, its own priors (PLG-MI++'s penalised ones too, and the
    # estimated variant's signatures before its prior), each attack, its scores.
    own = len([name for name in priors if name != "gmi"]) + int(ESTIMATED in priors)
    per_target = 1 + own + len(settings.attacks) + 1
    gmi = len(settings.seeds) * int("gmi" in priors)  # one GMI prior per training seed
    # + evaluator, held-out judge (entered even where it does not apply), GMI priors, report
    return targets * per_target + 1 + 1 + gmi + 1


@dataclasses.dataclass(frozen=True)
class Scoring:
    """What attacking and scoring every target of a run shares (`attack_and_score`).

    Attributes:
        public: Unbatched public images.
        public_images: The same as one array.
        gmi: `seed -> GMI prior` (`gmi_prior_per_seed`).
        evaluator: The `AttackEvaluator`.
        evaluation_model: The judge (it also judges the triggers).
    """

    public: object
    public_images: object
    gmi: object
    evaluator: object
    evaluation_model: object


def run_pipeline(run, settings, configs=None, progress=None):
    """Runs every stage (reusing the stored ones) and writes results.json and the report.

    Args:
        run: The `PipelineRun`.
        settings: The run's `PipelineSettings` (`pipeline_settings`).
        configs: `target_configs(run, settings)`, if already computed.
        progress: A `StageProgress` over `stage_count(settings)` stages, or None for one on
            standard error.

    Returns:
        The results dict written to results.json.
    """
    start = time.perf_counter()
    settings = dataclasses.replace(
        settings, public_split=default_public_split(run.dataset, run.public_split)
    )
    configs = configs or target_configs(run, settings)
    progress = progress or StageProgress(stage_count(settings))
    write_json(os.path.join(run.out, "flags.json"), dict(
        settings.as_dict(), dataset=run.dataset, data_dir=run.data_dir, seed=run.seed,
        preset=run.preset,
    ))
    (private_train, private_test), public = tm.data.load(
        run.dataset, run.data_dir, seed=run.seed, public_split=settings.public_split
    )
    targets = train_targets(run, settings, configs, progress)
    with progress.stage("evaluation model"):
        evaluation_model, evaluation = judge(run, private_train, settings)
    references = judge_references(run.dataset, run.data_dir, private_test)
    held_out_model, held_out = held_out_judge(run, references, configs, settings, progress)
    evaluator = make_evaluator(evaluation_model, private_train, run.fid_weights, references,
                               held_out_model)
    scoring = Scoring(public, np.stack(list(public.as_numpy_iterator())),
                      gmi_prior_per_seed(run, settings, public, progress), evaluator,
                      evaluation_model)
    per_seed, reconstructions = {}, {}
    for (defense, seed), (config, target_results) in targets.items():
        directory = target_dir(run, defense, seed)
        model = tm.models.load_classifier(os.path.join(directory, "classifier.keras"))
        trigger_path = os.path.join(directory, "triggers.npz")
        detector = (
            make_detector(model, trigger_path, private_train)
            if os.path.isfile(trigger_path) else None
        )
        target = TrainedTarget(directory, model, config, seed, target_results, detector,
                               target_triggers(run, defense, seed))
        scores, shown = attack_and_score(run, settings, scoring, target, progress)
        per_seed.setdefault(defense, {})[seed] = scores
        attacked = attacked_classes(model)  # the same for every target: one dataset
        if seed == settings.seeds[0]:
            reconstructions[defense] = shown
    results = run_results(run, settings, evaluation, evaluator, attacked, per_seed, start,
                          progress, references, held_out)
    write_report(run, results, private_train, reconstructions, stored_triggers(run, settings),
                 progress)
    return results


def attack_and_score(run, settings, scoring, target, progress):
    """Trains (or reuses) one target's priors, runs (or reuses) its attacks and scores them.

    Args:
        run: The `PipelineRun`.
        settings: The pipeline settings.
        scoring: The run's `Scoring`.
        target: The `TrainedTarget`.
        progress: The run's `StageProgress`.

    Returns:
        `(scores, shown)`: `attack_seed`'s scores and `{attack: stored arrays}` of the
        attacks that applied (for the report's grids).
    """
    priors, prior_settings, signatures = target_priors(
        run, target, scoring.public, scoring.gmi(target.seed), settings, progress,
        scoring.public_images,
    )
    stored = attack_target(run, target, priors, prior_settings, settings, progress, signatures,
                           scoring.public_images)
    steps = prior_steps(target.directory, gmi_directory(run, target.seed), prior_settings)
    with progress.stage(f"scores, {stage_target(target.directory)}"):
        scores = attack_seed(scoring.evaluator, target, stored, steps, scoring.evaluation_model,
                             penalised_prior_records(prior_settings, steps))
    return scores, {name: arrays for name, arrays in stored.items() if arrays is not None}


def run_results(run, settings, evaluation, evaluator, attacked, per_seed, start, progress,
                references=None, held_out=None):
    """The results dict of a run (results.json) from its scores.

    Args:
        run: The `PipelineRun`.
        settings: The pipeline settings.
        evaluation: The judge's description (`judge`).
        evaluator: The run's `AttackEvaluator`.
        attacked: The number of attacked classes.
        per_seed: `{defense: {seed: attack_seed scores}}`.
        start: `time.perf_counter()` at the run's start.
        progress: The run's `StageProgress` (the seconds of each stage so far).
        references: The judges' `evaluation.JudgeReferences`, or None without them.
        held_out: The held-out judge's description (`held_out_judge`), or None without one.
    """
    return dict(
        dataset=run.dataset, public_split=settings.public_split, preset=run.preset,
        settings=settings.as_dict(), evaluation_model=evaluation, attacked_classes=attacked,
        fid_features=evaluator.fid_features,
        pixel_judge=references.description() if "pixel" in evaluator.judges else None,
        held_out_judge=held_out,
        defenses={d: summarize_seeds(seeds) for d, seeds in per_seed.items()},
        seconds=round(time.perf_counter() - start, 1), stage_seconds=dict(progress.seconds),
        convergence_gap=measured_gap(settings, run.preset, run.dataset),
    )


def write_report(run, results, private_train, reconstructions, triggers, progress):
    """Writes results.json, then, as the run's last stage, report.md, its grids and their
    TensorBoard images, and closes the progress line.

    Args:
        run: The `PipelineRun`.
        results: The run's results dict.
        private_train: The private training split (the grids' private samples).
        reconstructions: `{defense: {attack: stored arrays}}` shown in the grids.
        triggers: `{defense: triggers}` of the targets with triggers.
        progress: The run's `StageProgress`.
    """
    write_json(os.path.join(run.out, "results.json"), results)
    private_images, private_labels = private_arrays(private_train)
    with progress.stage("report"):
        grids = report.write(run.out, results, private_images, private_labels,
                             reconstructions, triggers)
        log_grids(os.path.join(run.out, "logs"), grids)
    progress.close("done")


def log_grids(log_dir, grids):
    """Writes the report's grids as TensorBoard images, in an owner-only folder (triggers)."""
    with tf.summary.create_file_writer(secret_folder(log_dir)).as_default():
        for name, picture in grids.items():
            tf.summary.image(name, picture[None], step=0)
