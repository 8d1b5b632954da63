"""One defense's pipeline results over its training seeds: means with intervals over seeds.

The pipeline scores every target (one defense, one training seed) separately; this module
pools the seeds with `trapmid_tf.metrics.intervals.seed_mean`: the mean of the per-seed means
with a Student t interval over the seeds. Per-reconstruction outcomes (top-1 and top-5
success, KNN distance, and the pixel and held-out judges' top-1 where they ran) keep one
group per seed; the top-1s and top-5 are 0/1 outcomes, so their interval is exact
(Clopper-Pearson) where every outcome is 0 or every one is 1, and with one seed it is over
that seed's reconstructions. Metrics with one value per target (accuracies,
FID, PRDC, chance levels) have an interval over seeds only; with one seed, none (its low and
high are the value).
"""

from trapmid_tf.metrics.evaluator import JUDGE_NAMES, NOT_APPLICABLE, PER_IMAGE_METRICS
from trapmid_tf.metrics.intervals import seed_mean

# The per-reconstruction outcomes (`PER_IMAGE_METRICS`) that are 0/1: every judge's top-1.
BINARY_METRICS = ("top1", "top5", *(f"{name}_top1" for name in JUDGE_NAMES))
# Metrics with one value per target and attack (None where a target has too few samples).
PER_TARGET_METRICS = (
    "fid", "fid_all", "precision", "recall", "density", "coverage", "precision_all",
    "recall_all", "density_all", "coverage_all", "chance_aa1", "trapdoor_similarity",
    "trapdoor_detection",
)
# Counts reported as they are (the same for every seed of a run).
COUNTS = ("feature_dims", "inversion_steps")
# Trigger recovery against a target with triggers: its patterns against the true triggers
# (`trapmid_tf.attacks.trigger_recovery.compare_with_triggers`), one value per target.
TRIGGER_METRICS = ("trigger_cosine", "other_trigger_cosine", "trigger_match")
# Trigger leakage of a Trap-MID target (`trapmid_tf.metrics.leakage.trigger_leakage`).
LEAKAGE_METRICS = ("trigger_top1", "class_part_top1")


def _over_seeds(values):
    """`seed_mean` of one value per seed as a dict; None if any seed has no value."""
    if not values or any(value is None for value in values):
        return None
    return seed_mean([[value] for value in values]).as_dict()


def summarize_attack(runs):
    """One attack against one defense, pooled over its training seeds.

    Args:
        runs: One scores dict per seed, as `AttackEvaluator.evaluate` (plus the pipeline's
            `chance_aa1`, trapdoor and `inversion_steps` entries) returns them.

    Returns:
        Dict: `aa1`, `aa5`, `knn`, `pixel_aa1` and `held_out_aa1` (None where that judge
        did not run) and every metric of `PER_TARGET_METRICS` as `Estimate.as_dict()` (or
        None), `groups` (the per-seed per-image outcomes the intervals came from),
        `fid_samples` and `fid_samples_all` (per seed), `COUNTS`, and where the runs hold them
        `TRIGGER_METRICS` (estimates) and `trigger_classes`, `classes_without_start`
        (BREP-MI: per seed, the classes left out of its scores), and `prior` (a PLG-MI++
        attack's own prior: name, steps, signature weight; the same for every seed, as the
        budgets are). An attack that did not apply (every run `{NOT_APPLICABLE: reason}`)
        stays that dict.

    Raises:
        ValueError: If the attack applied to some seeds and not to others.
    """
    skipped = [run for run in runs if NOT_APPLICABLE in run]
    if skipped:
        if len(skipped) < len(runs):
            raise ValueError(
                f"an attack must apply to every seed of a defense or to none; it did not apply "
                f"to {len(skipped)} of {len(runs)} seeds ({skipped[0][NOT_APPLICABLE]})."
            )
        return dict(skipped[0])
    groups = {key: [run["per_image"][key] for run in runs]
              for key in PER_IMAGE_METRICS if key in runs[0]["per_image"]}
    summary = {name: seed_mean(groups[key], binary=key in BINARY_METRICS).as_dict()
               if key in groups else None for key, name in PER_IMAGE_METRICS.items()}
    summary.update({key: _over_seeds([run.get(key) for run in runs])
                    for key in PER_TARGET_METRICS})
    summary["fid_samples"] = [run["fid_samples"] for run in runs]
    summary["fid_samples_all"] = [run["fid_samples_all"] for run in runs]
    summary.update({key: runs[0][key] for key in COUNTS})
    if "trigger_classes" in runs[0]:
        summary.update({key: _over_seeds([run[key] for run in runs]) for key in TRIGGER_METRICS})
        summary["trigger_classes"] = runs[0]["trigger_classes"]
    if "classes_without_start" in runs[0]:
        summary["classes_without_start"] = [run["classes_without_start"] for run in runs]
    if "prior" in runs[0]:
        summary["prior"] = runs[0]["prior"]
    summary["groups"] = groups
    return summary


def summarize_leakage(per_seed):
    """Trigger leakage pooled over seeds, or None for targets without triggers.

    Args:
        per_seed: One `trigger_leakage` dict (with `triggers`, the triggers per seed) or None
            per seed.

    Returns:
        Dict: `LEAKAGE_METRICS` as `Estimate.as_dict()` over seeds, `chance` and `triggers`;
        None when no seed has triggers.
    """
    if all(leakage is None for leakage in per_seed):
        return None
    summary = {key: _over_seeds([leakage[key] for leakage in per_seed])
               for key in LEAKAGE_METRICS}
    summary.update(chance=per_seed[0]["chance"], triggers=per_seed[0]["triggers"])
    return summary


def summarize_seeds(per_seed):
    """One defense's results pooled over its training seeds.

    Args:
        per_seed: `{seed: target results}`, each with `accuracy`, `trapdoor_accuracy`
            (None without a trapdoor), `trapdoor_formed` (None when not recorded),
            `prior_steps`, `attacks` (`{attack: scores}`) and optionally `trigger_leakage`
            (None without triggers).

    Returns:
        Dict: `accuracy` and `trapdoor_accuracy` as `Estimate.as_dict()` (the latter None
        without a trapdoor), `trapdoor_formed` (False when any seed's trapdoor did not form,
        None when none recorded it), `trigger_leakage` (`summarize_leakage`), `seeds` (the
        seeds in order), `prior_steps` (`{seed: ...}`), and `attacks`
        (`{attack: summarize_attack(...)}`).
    """
    seeds = sorted(per_seed)
    targets = [per_seed[seed] for seed in seeds]
    formed = [t.get("trapdoor_formed") for t in targets if t.get("trapdoor_formed") is not None]
    return {
        "accuracy": _over_seeds([t["accuracy"] for t in targets]),
        "trapdoor_accuracy": _over_seeds([t["trapdoor_accuracy"] for t in targets]),
        "trapdoor_formed": all(formed) if formed else None,
        "trigger_leakage": summarize_leakage([t.get("trigger_leakage") for t in targets]),
        "seeds": seeds,
        "prior_steps": {str(seed): per_seed[seed]["prior_steps"] for seed in seeds},
        "attacks": {
            attack: summarize_attack([t["attacks"][attack] for t in targets])
            for attack in targets[0]["attacks"]
        },
    }
