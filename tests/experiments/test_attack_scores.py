"""`evaluate_attacks`: every stored attack of a folder scored by a given evaluation model."""

import dataclasses
import json

import keras
import numpy as np
import tensorflow as tf

from trapmid_tf.experiments.attack_scores import EvaluationSettings, evaluate_attacks
from trapmid_tf.models import small_cnn

SHAPE = (8, 8, 1)
CLASSES = 2


def split(rng, count):
    """An unbatched `(image, label)` dataset of `count` random images per class."""
    images = rng.random((CLASSES * count, *SHAPE), dtype=np.float32)
    labels = np.repeat(np.arange(CLASSES, dtype=np.int32), count)
    return tf.data.Dataset.from_tensor_slices((images, labels)), images, labels


def test_every_stored_attack_is_scored_by_the_given_judge(tmp_path):
    rng = np.random.default_rng(0)
    (train, _, _), (test, test_images, test_labels) = split(rng, 6), split(rng, 4)
    keras.utils.set_random_seed(3)
    judge = small_cnn(SHAPE, CLASSES, width=2, feature_dim=4, batch_norm=False)
    target = small_cnn(SHAPE, CLASSES, width=2, feature_dim=4)
    target.save(tmp_path / "target.keras")
    attacks_dir = tmp_path / "attacks"
    images = rng.random((4, *SHAPE), dtype=np.float32)
    initial = rng.random((4, *SHAPE), dtype=np.float32)
    labels = np.array([0, 0, 1, 1], np.int32)
    (attacks_dir / "mi_face").mkdir(parents=True)
    np.savez(attacks_dir / "mi_face" / "reconstructions.npz", images=images, labels=labels,
             latents=images, initial_images=initial)
    (attacks_dir / "unfinished").mkdir()  # no reconstructions.npz: not scored
    settings = EvaluationSettings(dataset="digits", evaluation_model="judge.keras",
                                  target=str(tmp_path / "target.keras"),
                                  attacks_dir=str(attacks_dir))
    out = tmp_path / "evaluation.json"

    results = evaluate_attacks(settings, (train, test), str(out), judge=judge)

    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert sorted(results) == ["evaluation_accuracy", "fid_features", "flags", "mi_face"]
    assert results["flags"] == dataclasses.asdict(settings)
    # Accuracies by hand from the judge's top-1 classes, as counts over 8 and 4 images: exact.
    def predict(x):
        return judge.predict(x, verbose=0).argmax(1)

    assert results["evaluation_accuracy"] == np.mean(predict(test_images) == test_labels)
    scores = results["mi_face"]
    assert scores["aa1"] == np.mean(predict(images) == labels)
    assert scores["chance_aa1"] == np.mean(predict(initial) == labels)
    assert scores["trapdoor_similarity"] is None and scores["trapdoor_detection"] is None
