"""Tests for the prior-free MI-Face inversion."""

import keras
import numpy as np
import pytest

from tests.attacks.test_inversion import (
    IMAGE_SHAPE,
    check_result,
    softmax_cross_entropy,
    tiny_classifier,
    to_numpy,
)
from trapmid_tf.attacks.mi_face import MIFaceAttack

HALVES = (slice(0, 2), slice(2, 4))
QUADRANTS = [(rows, columns) for rows in HALVES for columns in HALVES]


def quadrant_masks():
    masks = np.zeros((4, *IMAGE_SHAPE), np.float32)
    for index, (rows, columns) in enumerate(QUADRANTS):
        masks[index, rows, columns] = 1.0
    return masks


def quadrant_target():
    """Linear 4-class target, `logit_c = sum of quadrant c`.

    `p_c` grows with quadrant c's pixels and falls with every other pixel, so its maximum
    over [0, 1]^16 is the image that is 1 on quadrant c and 0 elsewhere. The softmax does not
    saturate there (`p_c = e^4 / (e^4 + 3)`), so the gradient keeps pushing to the corners.
    """
    images = keras.Input(IMAGE_SHAPE)
    dense = keras.layers.Dense(4, use_bias=False, name="logits")
    target = keras.Model(images, dense(keras.layers.Flatten()(images)))
    dense.set_weights([quadrant_masks().reshape(4, -1).T])
    return target


def test_recovers_the_optimal_image_of_a_linear_target():
    classes = [3, 0, 2, 1]
    attack = MIFaceAttack(iterations=200, learning_rate=1.0)
    result = attack.invert(quadrant_target(), classes, per_class=2, verbose=0)
    check_result(result, classes, 2, IMAGE_SHAPE)
    expected = np.repeat(quadrant_masks()[classes], 2, axis=0)
    np.testing.assert_allclose(result.images, expected, atol=1e-6)
    np.testing.assert_array_equal(result.latents, result.images)


def test_cross_entropy_with_total_variation_lowers_its_objective():
    target = tiny_classifier()

    def run(iterations):
        attack = MIFaceAttack(
            iterations=iterations, loss="cross_entropy", tv_weight=0.5, chunk_size=20
        )
        return attack.invert(target, [0, 2], per_class=2, seed=1, verbose=0)

    def objective(images, labels):
        cross_entropy = softmax_cross_entropy(to_numpy(target(images)), labels)
        vertical = np.abs(np.diff(images, axis=1)).mean(axis=(1, 2, 3))
        horizontal = np.abs(np.diff(images, axis=2)).mean(axis=(1, 2, 3))
        return np.sum(cross_entropy + 0.5 * (vertical + horizontal))

    before, after = run(0), run(30)
    assert np.abs(before.images - 0.5).max() <= 0.1  # grey start with small noise
    assert objective(after.images, after.labels) < objective(before.images, after.labels) - 0.1


def test_same_seed_repeats_and_other_seeds_differ():
    target, attack = tiny_classifier(), MIFaceAttack(iterations=5)
    first = attack.invert(target, [1], per_class=2, seed=0, verbose=0)
    np.testing.assert_array_equal(
        first.images, attack.invert(target, [1], per_class=2, seed=0, verbose=0).images
    )
    other = attack.invert(target, [1], per_class=2, seed=1, verbose=0)
    assert not np.allclose(first.images, other.images)
    assert not np.allclose(first.images[0], first.images[1])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"loss": "hinge"}, "loss"),
        ({"initial_value": 1.5}, "initial_value"),
        ({"initial_noise": -0.1}, "initial_noise"),
        ({"tv_weight": float("nan")}, "tv_weight"),
    ],
)
def test_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MIFaceAttack(**kwargs)


def test_rejects_a_target_without_a_fixed_image_shape():
    inputs = keras.Input((None, None, 1))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    target = keras.Model(inputs, keras.layers.Dense(2)(pooled))
    with pytest.raises(ValueError, match="target"):
        MIFaceAttack(iterations=1).invert(target, [0], verbose=0)
