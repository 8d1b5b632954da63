"""Scores every stored attack of a folder with an evaluation model: `evaluate_attacks`.

`trapmid-evaluate` is its command line; the stages it rests on are `evaluation`'s.
"""

import dataclasses
import os

import keras
import numpy as np

from trapmid_tf.experiments.attacks import RECONSTRUCTIONS_FILE
from trapmid_tf.experiments.evaluation import (
    classifier_accuracy, evaluation_model, judge_references, make_detector, make_evaluator,
    score_attack,
)
from trapmid_tf.files import write_json


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluationSettings:
    """What `evaluate_attacks` scores and with what; recorded in its results as "flags".

    Attributes:
        dataset: The dataset of the private data (`trapmid_tf.data.load`).
        data_dir: Its folder, or None for digits.
        public_split: The digit datasets' public split the data was loaded with, or None.
        evaluation_model: The evaluation model's `.keras` file, or the folder where one is
            trained (and reused).
        evaluation_architecture: Architecture of a newly trained evaluation model
            (`evaluation.evaluation_architecture`).
        evaluation_epochs: Epochs of a newly trained evaluation model.
        fid_weights: Local InceptionV3 no-top weights for FID/PRDC, or None (the evaluation
            model's features).
        target: The attacked classifier's `.keras` file.
        triggers: The target's triggers.npz (trapdoor similarity and detection), or None.
        attacks_dir: The folder of attack folders (`run_attacks`' output).
        seed: Seed of the data split and of a newly trained evaluation model.
    """

    dataset: str
    data_dir: str | None = None
    public_split: str | None = None
    evaluation_model: str
    evaluation_architecture: str = "small_cnn_wide"
    evaluation_epochs: int = 10
    fid_weights: str | None = None
    target: str
    triggers: str | None = None
    attacks_dir: str
    seed: int = 0


def evaluate_attacks(settings, private, out, judge=None, overwrite=False, verbose=0):
    """Scores the reconstructions of every attack folder of `settings.attacks_dir`.

    Args:
        settings: `EvaluationSettings`.
        private: `(train, test)`: unbatched `(image, label)` datasets of the private split
            the target was trained and tested on.
        out: The JSON file to write.
        judge: The classifier loaded from `settings.evaluation_model` when that is a file
            (`evaluation.load_evaluation_classifier`); None: train (or reuse) one in that
            folder (`evaluation.evaluation_model`).
        overwrite: Retrain the evaluation model even if its folder holds it.
        verbose: `keras.Model.fit`'s verbosity of a newly trained evaluation model.

    Returns:
        The results written to `out`: evaluation_accuracy (on the private test split),
        fid_features, flags (`settings` as a dict) and, per attack folder holding
        reconstructions.npz, its `evaluation.score_attack` scores.
    """
    private_train, private_test = private
    if judge is None:
        training = dict(architecture=settings.evaluation_architecture,
                        epochs=settings.evaluation_epochs, seed=settings.seed)
        judge, accuracy = evaluation_model(
            settings.dataset, settings.data_dir, training, settings.evaluation_model,
            overwrite, verbose,
        )
    else:
        accuracy = classifier_accuracy(judge, private_test)
    references = judge_references(settings.dataset, settings.data_dir, private_test)
    evaluator = make_evaluator(judge, private_train, settings.fid_weights, references)
    target = keras.models.load_model(settings.target)
    detector = (make_detector(target, settings.triggers, private_train) if settings.triggers
                else None)
    results = {
        "evaluation_accuracy": accuracy, "fid_features": evaluator.fid_features,
        "flags": dataclasses.asdict(settings),
    }
    for name in sorted(os.listdir(settings.attacks_dir)):
        path = os.path.join(settings.attacks_dir, name, RECONSTRUCTIONS_FILE)
        if os.path.isfile(path):
            with np.load(path) as stored:
                results[name] = score_attack(evaluator, dict(stored), detector)
    write_json(out, results)
    return results
