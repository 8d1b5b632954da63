"""AttackEvaluator, TrapdoorDetector and train_evaluation_model against hand-computed values."""

import keras
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from trapmid_tf.metrics.evaluator import (
    EVALUATION_FEATURES,
    AttackEvaluator,
    TrapdoorDetector,
    train_evaluation_model,
)
from tests.tolerances import assert_float32_close

# A linear "evaluation model" on 1x1x2 images: the feature is the pixel pair itself and
# logits = feature @ W, with W chosen so that class 0 wins when x0 > x1, class 1 otherwise,
# and class 2 never wins.
LOGIT_WEIGHTS = np.array([[1.0, 0.0, -5.0], [0.0, 1.0, -5.0]], dtype=np.float32)


def linear_model(weights=LOGIT_WEIGHTS):
    inputs = keras.Input((1, 1, 2))
    features = keras.layers.Flatten()(inputs)
    logits = keras.layers.Dense(weights.shape[1], use_bias=False, name="logits")(features)
    model = keras.Model(inputs, logits)
    model.get_layer("logits").set_weights([weights])
    return model


def images(pairs):
    return np.asarray(pairs, dtype=np.float32).reshape(-1, 1, 1, 2)


PRIVATE = np.array([[0.9, 0.1], [0.8, 0.0], [0.7, 0.2], [0.1, 0.9], [0.0, 0.6], [0.3, 0.8]])
PRIVATE_LABELS = np.array([0, 0, 0, 1, 1, 1])
RECONSTRUCTIONS = np.array([[1.0, 0.0], [0.6, 0.4], [0.2, 0.5], [0.4, 0.3], [0.45, 0.55]])
RECONSTRUCTION_LABELS = np.array([0, 0, 0, 1, 1])


def test_evaluate_matches_hand_computation():
    evaluator = AttackEvaluator(linear_model(), images(PRIVATE), PRIVATE_LABELS, batch_size=4)
    scores = evaluator.evaluate(images(RECONSTRUCTIONS), RECONSTRUCTION_LABELS)
    predicted = np.array([0, 0, 1, 0, 1])  # the larger pixel wins
    correct = predicted == RECONSTRUCTION_LABELS
    assert scores["aa1"] == pytest.approx(correct.mean())
    assert scores["successes"] == int(correct.sum())
    # Top-3 of 3 classes always contains the label.
    assert scores["aa5"] == pytest.approx(1.0)
    # KNN: the minimum squared distance to the same class's private features, averaged.
    expected_knn = np.mean([
        min(np.sum((r - p) ** 2) for p in PRIVATE[PRIVATE_LABELS == y])
        for r, y in zip(RECONSTRUCTIONS, RECONSTRUCTION_LABELS)
    ])
    assert scores["knn"] == pytest.approx(expected_knn)
    # FID of the successful reconstructions (in the features, i.e. the pixels) against all
    # private images, by the closed form with scipy.
    success = RECONSTRUCTIONS[correct]
    mean_a, mean_b = success.mean(0), PRIVATE.mean(0)
    cov_a, cov_b = np.cov(success, rowvar=False), np.cov(PRIVATE, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    expected_fid = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * root)
    assert scores["fid"] == pytest.approx(expected_fid, rel=1e-5, abs=1e-8)
    assert evaluator.fid_features == EVALUATION_FEATURES


def _fid(fake, real):
    mean_a, mean_b = fake.mean(0), real.mean(0)
    cov_a, cov_b = np.cov(fake, rowvar=False), np.cov(real, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * root)


def test_evaluate_gives_per_image_outcomes_and_all_reconstruction_scores():
    evaluator = AttackEvaluator(linear_model(), images(PRIVATE), PRIVATE_LABELS, batch_size=4)
    scores = evaluator.evaluate(images(RECONSTRUCTIONS), RECONSTRUCTION_LABELS)
    # By hand: the larger pixel wins (class 2 never does, so top-3 always holds the label).
    assert scores["per_image"]["top1"] == [1, 1, 0, 0, 1]  # predicted 0 0 1 0 1
    assert scores["per_image"]["top5"] == [1] * 5
    expected_knn = [
        min(np.sum((r - p) ** 2) for p in PRIVATE[PRIVATE_LABELS == y])
        for r, y in zip(RECONSTRUCTIONS, RECONSTRUCTION_LABELS)
    ]
    # float32 pixels (one rounding each) and a distance that may expand |r|^2 + |p|^2 - 2 r.p:
    # a few roundings of the squared norms, whatever the cancellation.
    norms = max(np.sum(np.square(a)) for a in (*RECONSTRUCTIONS, *PRIVATE))
    assert_float32_close(scores["per_image"]["knn"], expected_knn, 4 * norms, roundings=8)
    assert scores["feature_dims"] == 2
    assert (scores["fid_samples"], scores["fid_samples_all"]) == (3, 5)
    # FID of all five reconstructions by the closed form with scipy.
    assert scores["fid_all"] == pytest.approx(_fid(RECONSTRUCTIONS, PRIVATE), rel=1e-5)
    # PRDC of all reconstructions: 5 fakes and 6 attacked-class reals, k = 3.
    assert scores["precision_all"] is not None and 0.0 <= scores["coverage_all"] <= 1.0
    # Only 3 successes: too few for k = 3 neighbours.
    assert scores["precision"] is None


def test_prdc_radii_of_the_private_images_are_computed_once_per_attacked_classes(monkeypatch):
    from trapmid_tf.metrics import evaluator as evaluator_module
    from trapmid_tf.metrics.prdc import prdc, squared_knn_radii

    computed = []

    def counting(features, nearest_k=5):
        computed.append(len(features))
        return squared_knn_radii(features, nearest_k)

    monkeypatch.setattr(evaluator_module, "PRDC_NEIGHBOURS", 2)
    monkeypatch.setattr(evaluator_module, "squared_knn_radii", counting)
    evaluator = AttackEvaluator(linear_model(), images(PRIVATE), PRIVATE_LABELS, batch_size=4)
    first = evaluator.evaluate(images(RECONSTRUCTIONS), RECONSTRUCTION_LABELS)
    again = evaluator.evaluate(images(RECONSTRUCTIONS[::-1]), RECONSTRUCTION_LABELS[::-1])
    assert computed == [len(PRIVATE)]  # classes {0, 1}: once, for both calls and both sets
    # The same scores as PRDC computed from scratch (the features are the pixels).
    expected = prdc(PRIVATE, RECONSTRUCTIONS, 2)
    assert {key: first[key + "_all"] for key in expected} == expected
    assert {key: again[key + "_all"] for key in expected} == expected
    evaluator.evaluate(images(RECONSTRUCTIONS[:3]), np.zeros(3, dtype=int))
    assert computed == [len(PRIVATE), 3]  # class {0} alone: its own radii


def test_evaluate_without_two_successes_has_no_fid_and_small_sets_no_prdc():
    evaluator = AttackEvaluator(linear_model(), images(PRIVATE), PRIVATE_LABELS)
    scores = evaluator.evaluate(images([[0.1, 0.9]]), np.array([0]))
    assert scores["aa1"] == 0.0
    assert scores["fid"] is None
    assert scores["precision"] is None and scores["coverage"] is None


def test_fid_uses_the_given_feature_model():
    doubled = keras.Sequential([keras.Input((1, 1, 2)), keras.layers.Flatten(),
                                keras.layers.Rescaling(2.0)], name="doubled")
    plain = AttackEvaluator(linear_model(), images(PRIVATE), PRIVATE_LABELS)
    scaled = AttackEvaluator(linear_model(), images(PRIVATE), PRIVATE_LABELS,
                             fid_feature_model=doubled)
    assert scaled.fid_features == "doubled"
    fid_plain = plain.evaluate(images(RECONSTRUCTIONS), RECONSTRUCTION_LABELS)["fid"]
    fid_scaled = scaled.evaluate(images(RECONSTRUCTIONS), RECONSTRUCTION_LABELS)["fid"]
    # Every term of the Frechet distance is quadratic in the features.
    assert fid_scaled == pytest.approx(4.0 * fid_plain, rel=1e-5)


def test_private_labels_must_match_images():
    with pytest.raises(ValueError, match=r"private_labels` must have shape \(6,\)"):
        AttackEvaluator(linear_model(), images(PRIVATE), PRIVATE_LABELS[:5])


def test_trapdoor_detector_by_hand():
    target = linear_model(np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32))
    triggers = np.array([[[[1.0, 0.0]]], [[[0.0, 1.0]]]], dtype=np.float32)  # (2, 1, 1, 2)
    alpha = 0.5
    clean = images([[0.2, 0.4], [0.6, 0.2], [0.3, 0.3]])
    detector = TrapdoorDetector(target, triggers, alpha, clean)
    flat_clean = clean.reshape(-1, 2)
    expected_signatures = np.stack([
        ((1 - alpha) * flat_clean + alpha * t.reshape(2)).mean(0) for t in triggers
    ])
    # A blend (3 roundings) and a mean of 3 (3 more) of values <= 1.
    assert_float32_close(detector.signatures, expected_signatures, 1.0, roundings=6)

    def cosine(feature):
        signature = expected_signatures[np.argmax(feature)]
        return feature @ signature / np.linalg.norm(feature) / np.linalg.norm(signature)

    # A cosine of 2-vectors from float32 inputs: the signatures' error (above, relative to
    # their norm >= 0.35) and about 8 roundings of its own, all relative to 1.
    assert_float32_close(detector.clean_scores, [cosine(f) for f in flat_clean], 1.0,
                         roundings=6 / 0.35 + 8)
    queries = np.array([[1.0, 0.1], [0.1, 1.0]])
    result = detector.evaluate(images(queries))
    scores = np.array([cosine(q) for q in queries])
    assert result["trapdoor_similarity"] == pytest.approx(scores.mean(), rel=1e-6)
    threshold = np.percentile([cosine(f) for f in flat_clean], 95)
    assert result["trapdoor_detection"] == pytest.approx(np.mean(scores > threshold))


def test_trapdoor_detector_rejects_wrong_trigger_shape(tmp_path):
    target = linear_model(np.eye(2, dtype=np.float32))
    with pytest.raises(ValueError, match="`triggers` must have shape"):
        TrapdoorDetector(target, np.zeros((3, 1, 1, 2)), 0.1, images([[0.1, 0.2]]))
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        TrapdoorDetector.from_file(target, str(tmp_path / "missing.npz"), images([[0.1, 0.2]]))


def test_train_evaluation_model_learns_a_separable_task():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 64).astype(np.int32)
    pixels = np.where(labels[:, None] == 0, [0.9, 0.1], [0.1, 0.9]) + rng.normal(0, 0.05, (64, 2))
    data = tf.data.Dataset.from_tensor_slices((images(np.clip(pixels, 0, 1)), labels))

    def build(input_shape, num_classes):
        inputs = keras.Input(input_shape)
        features = keras.layers.Flatten()(inputs)
        return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(features))

    model, accuracy = train_evaluation_model(
        data, data, 2, build=build, epochs=30, batch_size=16, learning_rate=0.05, verbose=0
    )
    assert accuracy == 1.0
    assert model.output_shape == (None, 2)
