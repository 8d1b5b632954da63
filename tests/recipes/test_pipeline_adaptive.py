"""PLG-MI++ at full strength in the pipeline: each PLG-MI++ attack searches its own prior,
trained with its signatures and the run's weight; its stages, records and report row."""

import dataclasses
import io
import os
import types

import numpy as np
import pytest
import tensorflow as tf

from tests.attacks.test_inversion import IMAGE_SHAPE, NUM_CLASSES, tiny_classifier
from tests.attacks.test_inversion import tiny_conditional_generator
from tests.test_report import _target
from tests.tolerances import float32_atol
from trapmid_tf.attacks.plgmi_adaptive import PLGMIAdaptiveAttack
from trapmid_tf.attacks.suite import PriorNetworks
from trapmid_tf.experiments import (
    attack_stages, pipeline, prior_stages, summarize_seeds, target_stages,
)
from trapmid_tf.experiments.progress import StageProgress
from trapmid_tf.report import markdown

WEIGHT = 2.5  # --adaptive_weight, unlike the default 1 so that it is seen to be passed on
ESTIMATED = "plgmi_adaptive_estimated"
PENALTY_KEYS = ("signature_weight", "signatures", "estimated_from")


def test_stage_count_adds_each_plgmi_plus_plus_prior_only_when_its_attack_runs():
    # tiny: 2 targets (none, trapmid) x 1 seed; the lookup and the transfer null always run.
    def count(attacks):
        return pipeline.stage_count(pipeline.pipeline_settings("tiny", attacks=attacks))

    # Default attacks: per target training, 3 target priors, 8 attacks, scores; evaluator,
    # held-out judge, the GMI prior of seed 0, report (as before PLG-MI++ had its own priors).
    assert count(None) == 2 * (1 + 3 + 8 + 1) + 1 + 1 + 1 + 1
    # plgmi alone: its prior, 3 attacks; no GMI prior.
    assert count(["plgmi"]) == 2 * (1 + 1 + 3 + 1) + 1 + 1 + 1
    # plgmi_adaptive alone: its own penalised prior only (it never searches the plain one).
    assert count(["plgmi_adaptive"]) == 2 * (1 + 1 + 3 + 1) + 1 + 1 + 1
    # The estimated variant: the plain prior (its first round), its signatures, its prior.
    assert count([ESTIMATED]) == 2 * (1 + 3 + 3 + 1) + 1 + 1 + 1
    # All three: the plain prior, two penalised priors, the signatures, 5 attacks.
    assert count(["plgmi", "plgmi_adaptive", ESTIMATED]) == 2 * (1 + 4 + 5 + 1) + 1 + 1 + 1


def stage_names(stream):
    return [line.split(": ", 1)[1] for line in stream.getvalue().splitlines()]


@pytest.fixture
def recorded(monkeypatch):
    """`train_prior` and `run_attack` of the pipeline's stages, recording their arguments.

    The fake training returns, per prior folder, a tiny conditional generator: the plain
    prior's and the estimated variant's hold the same weights (seed 30), the defender's
    variant another (seed 40). `run_attack` runs for real.
    """
    generators = {"plgmi": tiny_conditional_generator(30),
                  ESTIMATED: tiny_conditional_generator(30),
                  "plgmi_adaptive": tiny_conditional_generator(40)}
    calls = dict(priors={}, attacks={})

    def train_prior(name, public, target, settings, out, overwrite, verbose, signatures=None):
        calls["priors"][os.path.basename(out)] = (name, settings, signatures)
        return PriorNetworks(generators[os.path.basename(out)], None)

    real_run_attack = attack_stages.run_attack

    def run_attack(name, target, priors, settings, out, overwrite, options, verbose):
        calls["attacks"][os.path.basename(out)] = (name, priors, settings, options)
        return real_run_attack(name, target, priors, settings, out, overwrite, options, verbose)

    monkeypatch.setattr(prior_stages, "train_prior", train_prior)
    monkeypatch.setattr(attack_stages, "run_attack", run_attack)
    return generators, calls


def attack_one_target(tmp_path, defense, attacks, detector):
    """`target_priors` then `attack_target` of the tiny classifier as `defense`, seed 0."""
    settings = dataclasses.replace(  # public_split as run_pipeline sets it for the digits
        pipeline.pipeline_settings("tiny", attacks=attacks, adaptive_weight=WEIGHT),
        public_split="samples",
    )
    run = pipeline.PipelineRun(out=str(tmp_path))
    target = tiny_classifier()
    public_images = np.random.default_rng(0).random((12, *IMAGE_SHAPE)).astype(np.float32)
    public = tf.data.Dataset.from_tensor_slices(public_images)
    directory = target_stages.target_dir(run, defense, 0)
    trained = target_stages.TrainedTarget(directory, target, {"defense": defense, "seed": 0}, 0,
                                          {}, detector)
    stream = io.StringIO()
    progress = StageProgress(pipeline.stage_count(settings), stream)
    priors, prior_settings, signatures = prior_stages.target_priors(
        run, trained, public, None, settings, progress, public_images,
    )
    stored = attack_stages.attack_target(run, trained, priors, prior_settings, settings,
                                         progress, signatures, public_images)
    return dict(settings=settings, target=target, public_images=public_images,
                directory=directory, prior_settings=prior_settings, stored=stored,
                stages=stage_names(stream))


def test_each_plgmi_plus_plus_attack_searches_its_own_penalised_prior(recorded, tmp_path):
    generators, calls = recorded
    defender = np.random.default_rng(1).normal(size=(NUM_CLASSES, 6))  # tiny_classifier: 6 dims
    done = attack_one_target(tmp_path, "trapmid", ["plgmi", "plgmi_adaptive", ESTIMATED],
                             types.SimpleNamespace(signatures=defender))
    priors = calls["priors"]
    # One plain and two penalised PLG-MI priors, each in its own folder.
    assert sorted(priors) == sorted(["plgmi", "plgmi_adaptive", ESTIMATED])
    assert {name for name, _, _ in priors.values()} == {"plgmi"}
    _, plain, plain_signatures = priors["plgmi"]
    assert plain_signatures is None and not set(PENALTY_KEYS) & set(plain)
    for name in ("plgmi_adaptive", ESTIMATED):
        _, penalised, _ = priors[name]
        # The plain prior's budget, seed, top-n and target, plus the penalty.
        assert {key: value for key, value in penalised.items() if key not in PENALTY_KEYS} == plain
        assert penalised["signature_weight"] == WEIGHT
    assert priors["plgmi_adaptive"][2] is defender
    assert "defender" in priors["plgmi_adaptive"][1]["signatures"]
    # The estimated signatures: one row per target class, stored in their own stage, made
    # from a first round on the plain prior.
    _, estimated_settings, estimated = priors[ESTIMATED]
    assert estimated.shape == (NUM_CLASSES, 6) and np.abs(estimated).max() > 0
    np.testing.assert_array_equal(
        np.load(os.path.join(done["directory"], "signatures", ESTIMATED, "signatures.npy")),
        estimated,
    )
    assert estimated_settings["estimated_from"]["first_round"]["prior"] == plain
    assert "estimated" in estimated_settings["signatures"]

    attacks = calls["attacks"]
    # Plain PLG-MI searches the plain prior; each PLG-MI++ attack its own, with the
    # signatures its prior was trained with and the run's weight.
    name, searched, settings, _ = attacks["plgmi"]
    assert name == "plgmi" and searched["plgmi"].generator is generators["plgmi"]
    assert settings["priors"] == {"plgmi": plain}
    for attack, signatures in (("plgmi_adaptive", defender), (ESTIMATED, estimated)):
        name, searched, settings, options = attacks[attack]
        assert name == "plgmi_adaptive"  # signatures given: the estimated ones beforehand
        assert list(searched) == ["plgmi"] and searched["plgmi"].generator is generators[attack]
        assert settings["priors"] == {attack: priors[attack][1]}
        assert options["signatures"] is signatures and options["penalty_weight"] == WEIGHT

    # The estimated variant is the library's model-only PLG-MI++ (a plain round, the
    # estimate, the penalised search) with its search moved to its own prior: here that prior
    # holds the plain one's weights, so both give the same reconstructions.
    settings = done["settings"]
    library = PLGMIAdaptiveAttack(
        generators["plgmi"], penalty_weight=WEIGHT, iterations=settings.plgmi_iterations,
        public_images=done["public_images"], top_n=settings.top_n,
    ).invert(done["target"], range(NUM_CLASSES), per_class=settings.per_class, seed=0,
             verbose=0)
    # The same float32 operations in the same order on the same inputs: at most a few
    # roundings of pixels in [0, 1] apart.
    atol = float32_atol(1.0, 4)
    np.testing.assert_allclose(done["stored"][ESTIMATED]["images"], library.images, rtol=0,
                               atol=atol)
    # Not vacuous: the penalised search moved away from plain PLG-MI's reconstructions.
    moved = np.abs(done["stored"][ESTIMATED]["images"] - done["stored"]["plgmi"]["images"])
    assert moved.max() > 100 * atol
    assert done["stages"] == [
        f"{stage}, trapmid, seed 0" for stage in (
            "plgmi prior", "plgmi_adaptive prior", f"{ESTIMATED} signatures",
            f"{ESTIMATED} prior", "attack lookup", "attack transfer_null", "attack plgmi",
            "attack plgmi_adaptive", f"attack {ESTIMATED}",
        )
    ]


def test_without_triggers_the_defenders_prior_is_neither_trained_nor_searched(recorded,
                                                                              tmp_path):
    _, calls = recorded
    done = attack_one_target(tmp_path, "none", ["plgmi_adaptive"], None)
    # No prior at all: plgmi_adaptive never needs the plain one, and its own does not apply.
    assert calls["priors"] == {} and done["prior_settings"] == {}
    assert done["stored"]["plgmi_adaptive"] is None and "plgmi_adaptive" not in calls["attacks"]
    # Its stages still pass (the stage count cannot know which targets have triggers).
    assert done["stages"] == [
        f"{stage}, none, seed 0" for stage in (
            "plgmi_adaptive prior", "attack lookup", "attack transfer_null",
            "attack plgmi_adaptive",
        )
    ]


def test_train_prior_passes_the_signatures_and_weight_to_the_plgmi_prior(monkeypatch, tmp_path):
    from trapmid_tf.attacks import suite
    from trapmid_tf.experiments.priors import train_prior

    received = {}

    def train_plgmi_prior(images, target, steps, **options):
        received.update(options)
        return "trained"

    monkeypatch.setattr(suite, "train_plgmi_prior", train_plgmi_prior)
    monkeypatch.setattr(suite, "save_prior", lambda name, prior, out: None)
    monkeypatch.setattr(suite, "load_prior", lambda name, out: (name, out))
    settings = dict(steps=2, batch_size=4, base_channels=8, top_n=2, n_critic=5, seed=3,
                    signature_weight=WEIGHT, signatures="described")
    signatures = np.ones((NUM_CLASSES, 6))
    public = tf.data.Dataset.from_tensor_slices(np.zeros((4, *IMAGE_SHAPE), np.float32))
    train_prior("plgmi", public, tiny_classifier(), settings, str(tmp_path / "p"),
                signatures=signatures)
    assert received["signatures"] is signatures and received["signature_weight"] == WEIGHT
    assert (received["top_n"], received["n_dis"], received["seed"]) == (2, 5, 3)
    received.clear()
    train_prior("plgmi", public, tiny_classifier(), dict(settings, seed=4),
                str(tmp_path / "plain"))
    assert "signatures" not in received and "signature_weight" not in received
    with pytest.raises(ValueError, match="penalise only the 'plgmi' prior; received them for "
                                         "'kedmi'"):
        train_prior("kedmi", public, tiny_classifier(), settings, str(tmp_path / "k"),
                    signatures=signatures)


def test_results_and_the_steps_table_name_the_prior_each_plgmi_plus_plus_attack_searched(
        monkeypatch):
    steps = {"plgmi": {"generator_steps": 2, "opponent_steps": 10},
             "plgmi_adaptive": {"generator_steps": 2, "opponent_steps": 10}}
    prior_settings = {"plgmi": {"steps": 2},
                      "plgmi_adaptive": {"steps": 2, "signature_weight": WEIGHT}}
    records = prior_stages.penalised_prior_records(prior_settings, steps)
    assert records == {"plgmi_adaptive": {"name": "plgmi_adaptive", "signature_weight": WEIGHT,
                                          "steps": steps["plgmi_adaptive"]}}
    # attack_seed files the record under the attack that searched the prior (scores faked).
    monkeypatch.setattr(attack_stages, "score_attack", lambda evaluator, arrays, detector: {})
    stored = {name: {"iterations": np.array(4)} for name in ("plgmi", "plgmi_adaptive")}
    target = target_stages.TrainedTarget("targets/trapmid/seed_0", None, {}, 0,
                                         {"test_accuracy": 1.0, "trapdoor_accuracy": 1.0})
    scores = attack_stages.attack_seed(None, target, stored, steps, searched=records)
    assert scores["attacks"]["plgmi_adaptive"]["prior"] == records["plgmi_adaptive"]
    assert "prior" not in scores["attacks"]["plgmi"]

    def seed_scores(seed):
        target = _target(0.5, 0.1, 1.0, 1.0, seed)
        target["prior_steps"] = steps
        target["attacks"]["plgmi_adaptive"] = dict(target["attacks"].pop("gmi"),
                                                   prior=records["plgmi_adaptive"])
        return target

    summary = summarize_seeds({0: seed_scores(0), 1: seed_scores(1)})
    assert summary["attacks"]["plgmi_adaptive"]["prior"] == records["plgmi_adaptive"]
    table = markdown.steps_table({"defenses": {"trapmid": summary}})
    assert "| trapmid | prior plgmi_adaptive | generator_steps 2, opponent_steps 10 |" in table
    assert ("| trapmid | attack plgmi_adaptive | 3 iterations; PLG-MI++ on prior plgmi_adaptive "
            "(generator_steps 2, opponent_steps 10, signature weight 2.5) |") in table
