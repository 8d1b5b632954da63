"""Tests for BREP-MI, the label-only boundary-repulsion attack."""

import keras
import numpy as np
import pytest

from tests.attacks.test_inversion import (
    IMAGE_SHAPE,
    Z_DIM,
    check_result,
    tiny_classifier,
    tiny_generator,
    to_numpy,
)
from trapmid_tf.attacks.brep_mi import BREPMIAttack, BREPMIWalk, HardLabelOracle


def numpy_generator(generator, latents):
    """The tiny generator from its weights: sigmoid(z K + b) as 4x4x1 images."""
    kernel, bias = generator.get_layer("project").get_weights()
    flat = 1.0 / (1.0 + np.exp(-(np.asarray(latents, np.float64) @ kernel + bias)))
    return flat.reshape(len(flat), *IMAGE_SHAPE)


def brightest_half(images):
    """Hand-made 2-class label oracle: 1 if the left half is brighter than the right, else 0."""
    images = np.asarray(images)
    return (images[:, :, :2].sum(axis=(1, 2, 3)) > images[:, :, 2:].sum(axis=(1, 2, 3))).astype(
        np.int32
    )


def identity_generator():
    """`(batch, 4)` latents -> 2x2x1 images `z` (reshaped); z_0 is the top-left pixel."""
    z = keras.Input((Z_DIM,))
    return keras.Model(z, keras.layers.Reshape((2, 2, 1))(z))


def sign_of_first_pixel(images):
    """Oracle of the identity generator: class 1 where z_0 > 0, the boundary is z_0 = 0."""
    return (np.asarray(images)[:, 0, 0, 0] > 0).astype(np.int32)


def reference_iteration(generator, attack, latents, labels, radii, draws):
    """One BREP-MI iteration per walk, row by row, written from the authors' description."""
    out = []
    for z, label, radius, normals in zip(latents, labels, radii, draws):
        sphere = []
        for normal in normals:
            unit = normal / np.sqrt(np.sum(normal**2))
            point = z + radius * unit
            inside = brightest_half(numpy_generator(generator, point[None]))[0] == label
            sphere.append((inside, unit))
        repulsion = sum((0.0 if inside else -1.0) * unit for inside, unit in sphere) / len(sphere)
        step = min(radius / 3.0, attack.max_step)
        candidate = np.clip(z + step * repulsion, -1.5, 1.5)
        inside_count = sum(inside for inside, _ in sphere)
        grow = 2 * inside_count - len(sphere) > 0.75 * len(sphere)  # authors: sum of +-1
        accepted = brightest_half(numpy_generator(generator, candidate[None]))[0] == label
        out.append(
            dict(
                latent=candidate if accepted else z,
                radius=radius * 1.3 if grow else radius,
                moved=accepted and not grow,
                grown=accepted and grow,
            )
        )
    return out


def test_one_iteration_matches_a_row_by_row_reimplementation():
    generator = tiny_generator()
    attack = BREPMIAttack(generator, sphere_points=8)
    rng = np.random.default_rng(16)  # a state whose walks grow, move, and get rejected
    latents = rng.normal(size=(5, Z_DIM))
    labels = brightest_half(numpy_generator(generator, latents))
    radii = np.array([0.05, 0.3, 1.0, 2.0, 4.0])
    walk = BREPMIWalk(latents, labels, 1.0, active=[True, True, True, False, True])
    walk.radii[:] = radii
    attack.step(walk, brightest_half, np.random.default_rng(11))
    active = [0, 1, 2, 4]
    draws = np.random.default_rng(11).standard_normal((4, 8, Z_DIM))
    expected = reference_iteration(
        generator, attack, latents[active], labels[active], radii[active], draws
    )
    np.testing.assert_allclose(walk.latents[active], [e["latent"] for e in expected], atol=1e-5)
    np.testing.assert_allclose(walk.radii[active], [e["radius"] for e in expected])
    np.testing.assert_array_equal(walk.moves[active], [e["moved"] for e in expected])
    np.testing.assert_array_equal(walk.grown[active], [e["grown"] for e in expected])
    grown = walk.grown[active]
    np.testing.assert_allclose(walk.best[active][grown], walk.latents[active][grown])
    # The inactive walk is untouched; the iteration covers growth, a plain move and a rejection.
    np.testing.assert_array_equal(walk.latents[3], latents[3])
    assert walk.radii[3] == 2.0 and walk.queries[3] == 0
    assert walk.queries[0] == 9
    outcomes = {"grown" if e["grown"] else "moved" if e["moved"] else "rejected" for e in expected}
    assert outcomes == {"grown", "moved", "rejected"}


def test_repulsion_walks_away_from_the_boundary():
    attack = BREPMIAttack(
        identity_generator(), initial_radius=0.3, patience=20, max_iterations=60, initial_batch=8
    )
    result = attack.run(sign_of_first_pixel, [1], num_classes=2, per_class=3, seed=0)
    assert result.found.all() and result.iterations > 0
    # Points outside the class lie at z_0 < 0, so repulsion drives z_0 up to the clip bound.
    assert np.all(result.latents[:, 0] > 1.0)
    assert np.all(sign_of_first_pixel(result.images) == 1)


def test_refuses_a_model_and_scores():
    attack = BREPMIAttack(tiny_generator(), max_iterations=1)
    target = tiny_classifier()
    with pytest.raises(ValueError, match="`label_oracle` must be a callable.*gives scores"):
        attack.run(target, [0], num_classes=3)
    with pytest.raises(ValueError, match="scores are not allowed"):
        attack.run(lambda images: target.predict(images, verbose=0), [0], num_classes=3)
    with pytest.raises(ValueError, match="`label_oracle` must be callable"):
        attack.run("target", [0], num_classes=3)


def test_hard_label_oracle_gives_argmax_labels_and_counts_queries():
    target = tiny_classifier()
    images = np.random.default_rng(0).random((5, *IMAGE_SHAPE)).astype(np.float32)
    oracle = HardLabelOracle(target, batch_size=2)
    labels = oracle(images)
    np.testing.assert_array_equal(labels, np.argmax(to_numpy(target(images)), axis=1))
    assert labels.dtype == np.int32 and oracle.queries == 5 and oracle.num_classes == 3


def test_invert_end_to_end_keeps_every_walk_in_its_class():
    generator, target = tiny_generator(), tiny_classifier()
    attack = BREPMIAttack(generator, sphere_points=8, patience=3, max_iterations=10)
    draws = np.random.default_rng(1).normal(size=(256, Z_DIM)).astype(np.float32)
    reachable = sorted(set(np.argmax(to_numpy(target(generator(draws))), axis=1).tolist()))
    result = attack.invert(target, reachable, per_class=2, seed=1, verbose=0)
    check_result(result, reachable, 2, (Z_DIM,))
    np.testing.assert_array_equal(np.argmax(to_numpy(target(result.images)), 1), result.labels)


def test_missing_initial_points_warn_and_keep_a_random_draw():
    attack = BREPMIAttack(identity_generator(), initial_batch=4, max_initial_batches=2)
    with pytest.warns(UserWarning, match=r"no initial point for classes \[1\] in 8 queries"):
        result = attack.run(lambda x: np.zeros(len(x), np.int64), [1], num_classes=2)
    assert not result.found.any() and result.iterations == 0 and result.queries[0] == 0


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="`growth` must be > 1"):
        BREPMIAttack(tiny_generator(), growth=1.0)
    with pytest.raises(ValueError, match=r"`growth_fraction` must be in \[0, 1\)"):
        BREPMIAttack(tiny_generator(), growth_fraction=1.0)
    with pytest.raises(ValueError, match="`target` must take the generator's images"):
        BREPMIAttack(identity_generator()).invert(tiny_classifier(), [0])


def test_iterations_record_the_last_run_and_zero_returns_the_initial_points():
    attack = BREPMIAttack(identity_generator(), initial_radius=0.3, patience=2,
                          max_iterations=50, initial_batch=8)
    assert attack.iterations is None
    result = attack.run(sign_of_first_pixel, [1], num_classes=2, per_class=2, seed=0)
    assert attack.iterations == result.iterations and 0 < result.iterations <= 50
    start = BREPMIAttack(identity_generator(), max_iterations=0, initial_batch=8)
    initial = start.run(sign_of_first_pixel, [1], num_classes=2, per_class=2, seed=0)
    # No step runs: the images are the initial points, already labelled as the class.
    assert start.iterations == 0 and initial.found.all()
    np.testing.assert_array_equal(initial.images.reshape(2, Z_DIM), initial.latents)
    assert np.all(sign_of_first_pixel(initial.images) == 1)
    with pytest.raises(ValueError, match="`max_iterations` must be an integer >= 0"):
        BREPMIAttack(identity_generator(), max_iterations=-1)
