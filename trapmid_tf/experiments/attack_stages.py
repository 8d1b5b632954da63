"""The pipeline's attack stages against one target, and that target's scores.

`attack_target` runs (or reuses) every selected attack, with its options (`attack_options`),
on the priors it searches (`prior_stages.attack_priors`); `attack_seed` scores what they
stored.
"""

import os

from absl import logging

from trapmid_tf.attacks import suite
from trapmid_tf.attacks.brep_mi import MAX_INITIAL_BATCHES
from trapmid_tf.attacks.transfer_null import TRANSFER_STEP_SIZE, TRANSFER_STEPS
from trapmid_tf.attacks.trigger_recovery import compare_with_triggers
from trapmid_tf.experiments.attacks import attacked_classes, run_attack
from trapmid_tf.experiments.evaluation import score_attack
from trapmid_tf.experiments.prior_stages import (
    ESTIMATED, NO_TRAPDOOR, PENALISED_PRIORS, SIGNATURE_SOURCES, attack_priors,
)
from trapmid_tf.experiments.target_config import identity
from trapmid_tf.experiments.target_stages import stage_target
from trapmid_tf.metrics.evaluator import NOT_APPLICABLE
from trapmid_tf.metrics.leakage import trigger_leakage


def attack_options(name, config, signatures, public_images, settings):
    """The keyword options of one attack against one target, and what identifies them.

    Args:
        name: Attack name.
        config: The target's train_target settings.
        signatures: The signatures of a PLG-MI++ attack's prior (`target_priors`), or None
            where it does not apply (`plgmi_adaptive` against a target without triggers).
        public_images: The attacker's public images, float32 NHWC in [0, 1].
        settings: The pipeline settings.

    Returns:
        `(options, description)`: the `suite.build_attack` keywords and a JSON-able
        description of them for the stage's settings (None for the attacks without options);
        None when the attack does not apply to the target.
    """
    weight = settings.adaptive_weight
    if name == suite.LOOKUP:
        return dict(public_images=public_images), dict(public_split=settings.public_split)
    if name == suite.TRANSFER_NULL:
        options = dict(iterations=TRANSFER_STEPS, step_size=TRANSFER_STEP_SIZE)
        return (dict(options, public_images=public_images),
                dict(options, public_split=settings.public_split))
    if name in PENALISED_PRIORS:
        if signatures is None:
            return None
        description = dict(penalty_weight=weight, signatures=SIGNATURE_SOURCES[name])
        if name == ESTIMATED:
            description.update(top_n=settings.top_n, public_split=settings.public_split)
        return dict(signatures=signatures, penalty_weight=weight), description
    if name == "trigger_recovery":
        alpha = settings.recovery_alpha or config["alpha"]
        options = dict(alpha=alpha, iterations=settings.recovery_iterations)
        return (dict(options, public_images=public_images),
                dict(options, public_split=settings.public_split))
    if name == "brep_mi":
        options = dict(max_iterations=settings.brep_iterations,
                       max_initial_batches=settings.brep_initial_batches or MAX_INITIAL_BATCHES)
        return options, options
    return {}, None


def attack_target(run, target, priors, prior_settings, settings, progress, signatures=None,
                  public_images=None):
    """Runs (or reuses) every selected attack against one target.

    Each attack searches the priors of `attack_priors` (a PLG-MI++ attack its own).

    Args:
        run: The `PipelineRun`.
        target: The `target_stages.TrainedTarget` (its seed is the attacks').
        priors, prior_settings: As `target_priors` returns them.
        settings: The pipeline settings.
        progress: The run's `StageProgress`.
        signatures: `{PLG-MI++ attack: signatures}` as `target_priors` returns them, or None
            when none runs.
        public_images: Public images as an array (the lookup's, the transfer null's and
            trigger recovery's), or None when none of them runs.

    Returns:
        `{attack: stored arrays}`, None for an attack that does not apply to the target.
    """
    results = {}
    for name in settings.attacks:
        applicable = attack_options(name, target.config, (signatures or {}).get(name),
                                    public_images, settings)
        with progress.stage(f"attack {name}, {stage_target(target.directory)}"):
            if applicable is None:
                logging.info("attack %s: not applicable to this target (%s)", name, NO_TRAPDOOR)
                results[name] = None
                continue
            options, description = applicable
            searched = attack_priors(name)
            attack_settings = dict(
                num_classes=attacked_classes(target.model),
                per_class=settings.per_class,
                seed=target.seed, iterations=settings.iterations,
                plgmi_iterations=settings.plgmi_iterations,
                mi_face_iterations=settings.mi_face_iterations,
                kedmi_batch_size=settings.kedmi_batch_size, target=identity(target.config),
                priors={prior: prior_settings[prior] for prior in searched.values()},
            )
            if description is not None:
                attack_settings["options"] = description
            # With its signatures estimated beforehand (`estimated_signatures`), the
            # estimated variant's search is PLG-MI++ with given signatures.
            results[name] = run_attack(
                "plgmi_adaptive" if name == ESTIMATED else name, target.model,
                {key: priors[prior] for key, prior in searched.items()}, attack_settings,
                os.path.join(target.directory, "attacks", name), run.overwrite, options,
                run.progress_verbosity,
            )
    return results


def attack_seed(evaluator, target, stored, steps, evaluation_model=None, searched=None):
    """The scores of one target (one defense and seed).

    Args:
        evaluator: The `AttackEvaluator`.
        target: The `target_stages.TrainedTarget` (its results, detector and triggers).
        stored: `{attack: stored arrays or None}` (`attack_target`).
        steps: `prior_steps` of the target.
        evaluation_model: The evaluation classifier (judges the triggers); needed when the
            target has triggers.
        searched: `{attack: the prior it searched}` (`penalised_prior_records`), or None.

    Returns:
        Dict: accuracies, `trapdoor_formed`, `prior_steps`, `trigger_leakage` (None without
        triggers) and `attacks`: per attack its scores, `{"not_applicable": reason}` for an
        attack that did not apply, for trigger recovery against triggers the comparison
        of its patterns with them and `trigger_classes`, for BREP-MI
        `classes_without_start` (classes left out of its scores: no starting point found),
        and for the attacks in `searched` their `prior`.
    """
    attacks, triggers = {}, target.triggers
    for name, arrays in stored.items():
        if arrays is None:
            attacks[name] = {NOT_APPLICABLE: NO_TRAPDOOR}
            continue
        attacks[name] = dict(
            score_attack(evaluator, arrays, target.detector),
            inversion_steps=int(arrays["iterations"]),
        )
        if "classes_without_start" in arrays:
            attacks[name]["classes_without_start"] = arrays["classes_without_start"].tolist()
        if name in (searched or {}):
            attacks[name]["prior"] = searched[name]
        if name == "trigger_recovery" and triggers is not None:
            attacks[name].update(
                compare_with_triggers(arrays["images"], arrays["labels"], triggers),
                trigger_classes=len(triggers),
            )
    leakage = None
    if triggers is not None:
        leakage = dict(trigger_leakage(evaluation_model, triggers), triggers=len(triggers))
    return dict(
        accuracy=target.results["test_accuracy"],
        trapdoor_accuracy=target.results["trapdoor_accuracy"],
        trapdoor_formed=target.results.get("trapdoor_formed"),
        trigger_leakage=leakage,
        prior_steps=steps,
        attacks=attacks,
    )
