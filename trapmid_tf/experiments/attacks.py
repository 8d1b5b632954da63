"""Runs model-inversion attacks against a classifier as reusable stages, and scores them.

`run_attack` writes reconstructions.npz and stage.json into its folder and reuses a finished
folder made with the same settings; `run_attacks` runs several into one folder and judges
them, the workflow of `trapmid-attack`, its command line.
"""

import os

import numpy as np
from absl import logging

from trapmid_tf.attacks import suite
from trapmid_tf.files import atomic_path, build_or_reuse, write_json
from trapmid_tf.metrics.accuracy import top_k_accuracy
from trapmid_tf.metrics.features import batched_predict

RECONSTRUCTIONS_FILE = "reconstructions.npz"
ATTACK_ACCURACY_FILE = "attack_accuracy.json"
MAX_ATTACKED_CLASSES = 300  # the reference attacks identities 0-299
# The option holding the step budget of the option attacks that do not take theirs from
# `suite.InversionSettings` (PLG-MI++ does); 0 gives the un-optimised starting samples.
BUDGET_OPTIONS = {
    "trigger_recovery": "iterations", "brep_mi": "max_iterations", "transfer_null": "iterations",
}
# The scale of PLG-MI's loss (`PLGMIAttack`: each image weighted as in the reference's batches
# of 60 identities), part of the identity of every stage that searches PLG-MI's generator
# (PLG-MI, PLG-MI++): those made with the mean over all identities and restarts (before;
# Adam's epsilon makes the steps differ) have no such entry, so they are made again rather
# than reused.
PLGMI_LOSS_SCALE = "reference_batches"


def attacked_classes(target):
    """The number of classes attacked in a target: its classes, at most `MAX_ATTACKED_CLASSES`.

    Args:
        target: The attacked classifier (logits).

    Returns:
        N, the attacks' classes being 0, ..., N - 1.
    """
    return min(int(target.output_shape[-1]), MAX_ATTACKED_CLASSES)


def run_attack(name, target, priors, settings, out, overwrite=False, options=None,
               verbose=0):
    """Runs (or reuses) one attack and returns its stored arrays.

    Args:
        name: Attack name (`trapmid_tf.attacks.suite.ATTACKS`).
        target: The attacked classifier.
        priors: Dict of the priors it needs (see `suite.build_attack`).
        settings: Dict with num_classes, per_class, seed, iterations, plgmi_iterations,
            mi_face_iterations, kedmi_batch_size (and anything else identifying the target,
            the priors and the options; all of it goes into stage.json, with
            `PLGMI_LOSS_SCALE` for the PLG-MI attacks).
        out: The attack's folder.
        overwrite: Rerun even if `out` holds a finished run with the same settings.
        options: Keyword options of an attack of `suite.OPTION_ATTACKS` (`suite.build_attack`);
            arrays among them are not stored, so `settings` must describe them.
        verbose: 1 shows a progress bar of the inversion, 0 nothing.

    Returns:
        Dict of numpy arrays: images, labels, latents, initial_images (the same attack at a
        budget of 0 steps), iterations (the steps it ran); for `brep_mi` also
        `classes_without_start`, the classes it found no starting point for, whose rows (random
        draws, not reconstructions) are left out of the other arrays.

    Raises:
        RuntimeError: If `brep_mi` found a starting point for no class at all.
    """
    options = options or {}
    if "plgmi" in suite.PRIORS_OF_ATTACK.get(name, ()):
        settings = dict(settings, plgmi_loss_scale=PLGMI_LOSS_SCALE)
    starting_options = dict(options)
    if name in BUDGET_OPTIONS:
        starting_options[BUDGET_OPTIONS[name]] = 0
    path = os.path.join(out, RECONSTRUCTIONS_FILE)
    budget = dict(kedmi_batch_size=settings["kedmi_batch_size"])
    steps = suite.InversionSettings(
        settings["iterations"], settings["plgmi_iterations"], settings["mi_face_iterations"],
        **budget,
    )
    classes = range(settings["num_classes"])

    def invert(attack, verbose):
        return attack.invert(
            target, classes, per_class=settings["per_class"], seed=settings["seed"],
            verbose=verbose,
        )

    def build():
        logging.info("attack %s: %d classes x %d", name, len(classes), settings["per_class"])
        start = suite.InversionSettings(0, 0, 0, **budget)
        initial = invert(suite.build_attack(name, priors, start, **starting_options), 0)
        attack = suite.build_attack(name, priors, steps, **options)
        result = invert(attack, verbose)
        arrays = dict(images=result.images, labels=result.labels, latents=result.latents,
                      initial_images=initial.images)
        if name == "brep_mi":
            arrays = _without_unstarted(arrays, attack.classes_without_start)
        with atomic_path(path) as temporary:
            np.savez(temporary, iterations=attack.iterations, **arrays)
        return load()

    def load():
        with np.load(path) as stored:
            return {key: stored[key] for key in stored.files}

    return build_or_reuse(out, settings, build, load, overwrite, logging.info)


def run_attacks(names, target, prior_dirs, settings, out, overwrite=False, judge=None,
                judge_path=None, verbose=0):
    """Runs (or reuses) each attack into `out`/<attack>/ and, with a judge, scores it at once.

    Writes `out`/flags.json (`settings` and `names`), each attack's `run_attack` folder and,
    with `judge`, its attack_accuracy.json (`attack_accuracy` and `judge_path`).

    Args:
        names: Attack names (`suite.ATTACKS`, none of `suite.OPTION_ATTACKS`).
        target: The attacked classifier.
        prior_dirs: `{prior: folder}` of every prior the attacks need (`suite.priors_needed`),
            as `suite.save_prior` wrote them.
        settings: Dict of `run_attack`'s settings (with what identifies the target); each
            attack's adds the absolute folders of its priors, as `priors`.
        out: The output folder.
        overwrite: Rerun attacks whose folders hold a finished run with the same settings.
        judge: Classifier images -> logits that judges the reconstructions, or None.
        judge_path: The judge's file, recorded (absolute) with its scores, or None.
        verbose: 1 shows a progress bar of each inversion, 0 nothing.

    Returns:
        `{attack: {"reconstructions": run_attack's arrays, "attack_accuracy": the scores
        written (with `evaluation_model`), or None without a judge}}`.
    """
    priors = {prior: suite.load_prior(prior, folder) for prior, folder in prior_dirs.items()}
    write_json(os.path.join(out, "flags.json"), dict(settings, attacks=list(names)))
    written = {}
    for name in names:
        attack_settings = dict(settings, priors={
            prior: os.path.abspath(prior_dirs[prior]) for prior in suite.PRIORS_OF_ATTACK[name]
        })
        stored = run_attack(name, target, priors, attack_settings, os.path.join(out, name),
                            overwrite, verbose=verbose)
        scores = None
        if judge is not None:
            scores = dict(attack_accuracy(judge, stored),
                          evaluation_model=judge_path and os.path.abspath(judge_path))
            write_json(os.path.join(out, name, ATTACK_ACCURACY_FILE), scores)
            logging.info("attack %s: aa1 %.3f, aa5 %.3f", name, scores["aa1"], scores["aa5"])
        written[name] = {"reconstructions": stored, "attack_accuracy": scores}
    return written


def _without_unstarted(arrays, missing):
    """BREP-MI's arrays without the rows of the classes it found no start for, and that list.

    Args:
        arrays: Dict of per-image arrays (first axis one row per image, with `labels`).
        missing: The classes without a starting point (`BREPMIAttack.classes_without_start`).

    Returns:
        The kept rows of every array, plus `classes_without_start` (int64).

    Raises:
        RuntimeError: If no class has a starting point.
    """
    kept = ~np.isin(arrays["labels"], missing)
    if not kept.any():
        raise RuntimeError(
            f"BREP-MI found no starting point for any attacked class (classes {missing}); "
            "there is nothing to score."
        )
    return dict({key: value[kept] for key, value in arrays.items()},
                classes_without_start=np.asarray(missing, dtype=np.int64))


def attack_accuracy(judge, stored, batch_size=100):
    """Top-1 and top-5 attack accuracy of stored reconstructions by an evaluation classifier.

    Args:
        judge: Classifier images -> logits over the attacked classes (and more).
        stored: Dict with `images` and `labels` (as `run_attack` returns).
        batch_size: Images per forward pass.

    Returns:
        Dict with `aa1` and `aa5` (top-k with k = min(5, classes)), floats in [0, 1].
    """
    logits = batched_predict(judge, stored["images"], batch_size)
    top = min(5, int(logits.shape[-1]))
    return {
        "aa1": top_k_accuracy(logits, stored["labels"], 1),
        "aa5": top_k_accuracy(logits, stored["labels"], top),
    }
