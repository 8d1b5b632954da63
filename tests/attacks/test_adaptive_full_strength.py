"""PLG-MI++ at full strength (penalised prior and top-n, estimated signatures) and BREP-MI's
classes without a starting point, against hand computations."""

import keras
import numpy as np
import pytest

from tests.attacks.test_brep_mi import identity_generator
from tests.attacks.test_inversion import (
    IMAGE_SHAPE,
    NUM_CLASSES,
    tiny_classifier,
    tiny_conditional_generator,
)
from tests.test_report import _adaptive_results, _target
from tests.tolerances import float32_atol
from trapmid_tf.attacks.brep_mi import MAX_INITIAL_BATCHES, BREPMIAttack
from trapmid_tf.attacks.plgmi_adaptive import estimate_signatures
from trapmid_tf.attacks.plgmi_prior import (
    PLGMIPrior,
    _augment,
    _augment_parameters,
    most_confident,
    select_top_n,
)
from trapmid_tf.attacks.suite import PriorNetworks
from trapmid_tf.experiments import summarize_seeds
from trapmid_tf.experiments.attacks import run_attack
from trapmid_tf.models.features import feature_extractor
from trapmid_tf.report import markdown

# Hand-built example: 1x2x1 images whose target feature is the image itself and whose logits
# are the feature (identity layers), two classes with signatures e_0 and e_1.
A, B, C = (1.0, 0.0), (0.6, 0.4), (0.5, 0.5)
UNIT_SIGNATURES = np.eye(2)


def identity_target(num_classes=2):
    """1x2x1 images -> Flatten -> feature Dense(2) = x -> "logits" Dense = the first logits of x."""
    images = keras.Input((1, 2, 1))
    flat = keras.layers.Flatten()(images)
    features = keras.layers.Dense(2, use_bias=False, name="feature")(flat)
    logits = keras.layers.Dense(num_classes, use_bias=False, name="logits")(features)
    model = keras.Model(images, logits)
    model.get_layer("feature").set_weights([np.eye(2, dtype=np.float32)])
    model.get_layer("logits").set_weights([np.eye(2, num_classes, dtype=np.float32)])
    return model


def pixels(*rows):
    return np.array(rows, np.float32).reshape(len(rows), 1, 2, 1)


def numpy_cosine(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# === The penalised top-n selection ===


def test_top_n_ranks_by_confidence_minus_the_signature_penalty():
    target, images = identity_target(), pixels(A, B, C)
    # Softmax of logits (x0, x1): p0 = sigmoid(x0 - x1) = 0.731, 0.550, 0.500 for A, B, C.
    # Plain: class 0 takes A, B; class 1 (p1 = 0.269, 0.450, 0.500) takes C, B.
    np.testing.assert_array_equal(most_confident(target, images, 2), [[0, 1], [2, 1]])
    # Cosines with e_0: 1, 0.6/sqrt(0.52) = 0.832, 0.707; with e_1: 0, 0.555, 0.707. Minus the
    # penalty at weight 1, class 0 scores -0.269, -0.282, -0.207 (C, A first) and class 1
    # 0.269, -0.105, -0.207 (A, B first).
    penalised = most_confident(target, images, 2, signatures=UNIT_SIGNATURES, signature_weight=1.0)
    np.testing.assert_array_equal(penalised, [[2, 0], [0, 1]])
    # Weight 0 is the plain ranking; select_top_n passes the penalty through.
    np.testing.assert_array_equal(
        most_confident(target, images, 2, signatures=UNIT_SIGNATURES), [[0, 1], [2, 1]]
    )
    selected, labels = select_top_n(target, images, 2, n=2, signatures=UNIT_SIGNATURES,
                                    signature_weight=1.0)
    np.testing.assert_array_equal(selected, images[[2, 0, 0, 1]])
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])


def test_the_penalised_top_n_rejects_bad_signatures():
    target, images = identity_target(), pixels(A, B, C)
    with pytest.raises(ValueError, match=r"`signatures` must have shape \(2, 2\).*\(3, 2\)"):
        most_confident(target, images, 2, signatures=np.ones((3, 2)), signature_weight=1.0)
    with pytest.raises(ValueError, match="signature_weight"):
        most_confident(target, images, 2, signatures=UNIT_SIGNATURES, signature_weight=-1.0)


# === The penalised generator loss ===


def conditional_critic():
    """`[images, y]` -> Dense(1) of the flat image plus a learned per-class shift (no SN)."""
    images = keras.Input(IMAGE_SHAPE)
    labels = keras.Input((), dtype="int32")
    score = keras.layers.Dense(1)(keras.layers.Flatten()(images))
    return keras.Model([images, labels], score + keras.layers.Embedding(NUM_CLASSES, 1)(labels))


def test_the_signature_penalty_enters_the_generator_loss():
    generator, critic = tiny_conditional_generator(), conditional_critic()
    target = tiny_classifier()
    signatures = np.random.default_rng(0).normal(size=(NUM_CLASSES, 6))
    weight, batch = 2.5, 8
    images = np.random.default_rng(1).random((batch, *IMAGE_SHAPE)).astype(np.float32)
    labels = np.arange(batch, dtype=np.int32) % NUM_CLASSES

    def losses(**options):
        prior = PLGMIPrior(generator, critic, target, seed=7, **options)
        return {key: float(value) for key, value in prior._generator_losses(images, labels).items()}

    plain = losses()
    penalised = losses(signatures=signatures, signature_weight=weight)
    # The same seed draws the same latents, labels and augmentation in the same order.
    replay = PLGMIPrior(generator, critic, target, seed=7)
    latents, drawn = replay.sample_conditions(batch)
    uniform = _augment_parameters(batch, replay.seed_generator)
    views = _augment(generator([latents, drawn], training=True), uniform, 0.5)
    features = feature_extractor(target).predict(views, verbose=0).astype(np.float64)
    penalty = weight * numpy_cosine(features, signatures[np.asarray(drawn)]).mean()
    # Loss terms are O(10) (margin of tanh features, critic scores); a few float32 roundings.
    atol = float32_atol(10.0, 8)
    assert penalised["margin_loss"] == pytest.approx(plain["margin_loss"], abs=atol)
    assert penalised["generator_loss"] - plain["generator_loss"] == pytest.approx(
        penalty, abs=atol
    )
    assert abs(penalty) > 100 * atol  # the check is not vacuous


def test_the_penalised_prior_round_trips_its_config():
    generator, critic = tiny_conditional_generator(), conditional_critic()
    target = tiny_classifier()
    signatures = np.random.default_rng(0).normal(size=(NUM_CLASSES, 6))
    prior = PLGMIPrior(generator, critic, target, signatures=signatures, signature_weight=0.5)
    config = prior.get_config()
    np.testing.assert_allclose(config["signatures"], signatures.astype(np.float32))
    assert config["signature_weight"] == 0.5
    assert PLGMIPrior(generator, critic, target).get_config()["signatures"] is None
    with pytest.raises(ValueError, match=r"`signatures` must have shape \(3, 6\)"):
        PLGMIPrior(generator, critic, target, signatures=np.ones((3, 5)))


# === The estimated signatures ===


def test_estimated_signature_is_the_reconstructions_mean_minus_the_top_n_public_mean():
    target, public = identity_target(), pixels(A, B, C)
    reconstructions = pixels((0.2, 0.0), (0.4, 0.2), (0.9, 0.3))
    labels = np.array([0, 0, 1])
    # Plain top-2 (first test): class 0 A, B, mean (0.8, 0.2); class 1 C, B, mean (0.55, 0.45).
    # Reconstruction means: class 0 (0.3, 0.1), class 1 (0.9, 0.3).
    signatures = estimate_signatures(target, reconstructions, labels, public, top_n=2)
    # Features are the float32 pixels; a few roundings of values <= 1.
    np.testing.assert_allclose(signatures, [[-0.5, -0.1], [0.35, -0.15]],
                               atol=float32_atol(1.0, 4))
    # A class without reconstructions gets a zero row (no penalty).
    only_one = estimate_signatures(target, reconstructions[2:], labels[2:], public, top_n=2)
    np.testing.assert_array_equal(only_one[0], [0.0, 0.0])
    with pytest.raises(ValueError, match="`top_n` must be at most the number of public"):
        estimate_signatures(target, reconstructions, labels, public, top_n=4)


# === BREP-MI's starting points ===


def test_brep_mi_searches_past_the_old_cap_until_every_class_has_a_start():
    calls = []

    def late_oracle(images):
        """Labels everything 0 for the first 150 queries, then 1: only batch 151 has a start."""
        calls.append(len(images))
        return np.full(len(images), int(len(calls) > 150), np.int64)

    attack = BREPMIAttack(identity_generator(), initial_batch=4, max_iterations=0)
    assert attack.max_initial_batches == MAX_INITIAL_BATCHES > 150
    result = attack.run(late_oracle, [1], num_classes=2, per_class=2)
    assert result.found.all() and result.initial_queries == 151 * 4
    assert attack.classes_without_start == []


def test_brep_mi_lists_the_classes_it_found_no_start_for():
    attack = BREPMIAttack(identity_generator(), initial_batch=4, max_initial_batches=3,
                          max_iterations=2)
    assert attack.classes_without_start is None
    with pytest.warns(UserWarning, match=r"no initial point for classes \[0\] in 12 queries"):
        attack.run(lambda x: np.ones(len(x), np.int64), [0, 1], num_classes=2)
    assert attack.classes_without_start == [0]


def first_pixel_target():
    """2x2x1 images -> logits (-z0, z0, -1000): classes 0 and 1 by the sign, 2 never."""
    images = keras.Input((2, 2, 1))
    logits = keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(images))
    model = keras.Model(images, logits)
    kernel = np.zeros((4, 3), np.float32)
    kernel[0, :2] = -1.0, 1.0
    model.get_layer("logits").set_weights([kernel, np.array([0, 0, -1000], np.float32)])
    return model


@pytest.mark.filterwarnings("ignore:BREP-MI found no initial point")
def test_run_attack_leaves_classes_without_a_start_out_of_the_scored_arrays(tmp_path):
    settings = dict(num_classes=3, per_class=2, seed=0, iterations=None, plgmi_iterations=None,
                    mi_face_iterations=None, kedmi_batch_size=32)
    stored = run_attack(
        "brep_mi", first_pixel_target(), {"gmi": PriorNetworks(identity_generator(), None)},
        settings, str(tmp_path), options=dict(max_iterations=2, initial_batch=8,
                                              max_initial_batches=3),
    )
    np.testing.assert_array_equal(stored["labels"], [0, 0, 1, 1])
    np.testing.assert_array_equal(stored["classes_without_start"], [2])
    for key in ("images", "latents", "initial_images"):
        assert len(stored[key]) == 4, key


def test_classes_without_a_start_are_listed_per_seed_and_in_the_report():
    def seed_scores(seed, missing):
        target = _target(0.5, 0.1, 1.0, None, seed)
        target["attacks"]["brep_mi"] = dict(target["attacks"].pop("gmi"),
                                            classes_without_start=missing)
        return target

    results = _adaptive_results()
    results["defenses"] = {
        "none": summarize_seeds({0: seed_scores(0, []), 1: seed_scores(1, [])}),
        "trapmid": summarize_seeds({0: seed_scores(0, [0, 1]), 1: seed_scores(1, [])}),
    }
    results["settings"]["seeds"] = [0, 1]
    assert results["defenses"]["trapmid"]["attacks"]["brep_mi"]["classes_without_start"] == [
        [0, 1], []]
    rows = markdown.without_start_table(results).splitlines()[2:]
    assert rows == ["| none | 0 | seed 0: none; seed 1: none |",
                    "| trapmid | 2 | seed 0: [0, 1]; seed 1: none |"]
    text = markdown.report_markdown(results, ["none", "trapmid"], ["lookup", "brep_mi"], {})
    section = text.split("## brep_mi\n")[1]
    assert "Classes without a starting point" in section and rows[1] in section
