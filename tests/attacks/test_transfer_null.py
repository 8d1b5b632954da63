"""The transfer null against a hand-built linear target whose gradient signs are known."""

import keras
import numpy as np
import pytest

from trapmid_tf.attacks import suite
from trapmid_tf.attacks.transfer_null import TransferNullAttack

# Logits of a 2x2 image x (pixels x_0..x_3): z_k = sum_i x_i W[i, k]. The gradient of
# log softmax(z)_0 is (1 - p_0) (W[:, 0] - W[:, 1]), of log softmax(z)_1 its negative, so
# class 0's signed step moves the pixels by +, -, +, - and class 1's by -, +, -, +.
WEIGHTS = np.array([[1.0, 0.0], [-1.0, 1.0], [2.0, -1.0], [0.5, 1.0]], np.float32)
SIGN_TOWARD_0 = np.array([1.0, -1.0, 1.0, -1.0], np.float32)
# Public images with every pixel in [0.3, 0.7]: a few steps of 2/255 never reach 0 or 1.
PUBLIC = np.random.default_rng(0).uniform(0.3, 0.7, size=(6, 2, 2, 1)).astype(np.float32)


def linear_target():
    target = keras.Sequential([
        keras.Input((2, 2, 1)), keras.layers.Flatten(), keras.layers.Dense(2, use_bias=False)
    ])
    target.layers[-1].set_weights([WEIGHTS])
    return target


def class_probabilities(target, images, labels):
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(target(images)))
    return probabilities[np.arange(len(labels)), labels]


def test_no_step_returns_public_images_drawn_with_the_seed():
    attack = suite.build_attack("transfer_null", {}, public_images=PUBLIC, iterations=0)
    result = attack.invert(linear_target(), [0, 1], per_class=3, seed=4, verbose=0)
    assert result.latents.shape == (6,) and np.issubdtype(result.latents.dtype, np.integer)
    np.testing.assert_array_equal(result.images, PUBLIC[result.latents])
    np.testing.assert_array_equal(result.labels, [0, 0, 0, 1, 1, 1])
    again = attack.invert(linear_target(), [0, 1], per_class=3, seed=4, verbose=0)
    np.testing.assert_array_equal(again.latents, result.latents)


def test_one_step_moves_every_pixel_by_the_step_toward_the_class():
    attack = TransferNullAttack(PUBLIC, iterations=1)
    result = attack.invert(linear_target(), [0, 1], per_class=3, seed=1, verbose=0)
    start = PUBLIC[result.latents].reshape(6, 4)
    signs = np.where(result.labels[:, None] == 0, SIGN_TOWARD_0, -SIGN_TOWARD_0)
    expected = start + np.float32(2 / 255) * signs
    # One float32 addition to values below 1: at most half an ulp of 1, 6e-8, apart.
    np.testing.assert_allclose(result.images.reshape(6, 4), expected, rtol=0, atol=1.2e-7)


def test_ten_steps_raise_the_targets_confidence_in_the_class():
    target = linear_target()
    result = TransferNullAttack(PUBLIC).invert(target, [0, 1], per_class=3, seed=2, verbose=0)
    before = class_probabilities(target, PUBLIC[result.latents], result.labels)
    after = class_probabilities(target, result.images, result.labels)
    assert np.all(after > before)
    # Ten steps of 2/255 move a pixel by at most 20/255 (and here, away from 0 and 1, by it).
    moved = np.abs(result.images - PUBLIC[result.latents])
    np.testing.assert_allclose(moved, 20 / 255, rtol=0, atol=1e-6)  # ten float32 roundings


def test_the_images_stay_in_the_unit_box():
    # Twelve steps of 0.1 carry every pixel past a bound: + pixels end at 1, - pixels at 0.
    attack = TransferNullAttack(PUBLIC, iterations=12, step_size=0.1)
    result = attack.invert(linear_target(), [0, 1], per_class=3, seed=3, verbose=0)
    toward_1 = np.where(result.labels[:, None] == 0, SIGN_TOWARD_0, -SIGN_TOWARD_0) > 0
    np.testing.assert_array_equal(result.images.reshape(6, 4), toward_1.astype(np.float32))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="`step_size` must be a finite number > 0"):
        TransferNullAttack(PUBLIC, step_size=0.0)
    with pytest.raises(ValueError, match="needs the option `public_images`"):
        suite.build_attack("transfer_null", {})
    other = keras.Sequential([keras.Input((3, 3, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"attack's images of shape \(2, 2, 1\)"):
        TransferNullAttack(PUBLIC).invert(other, [0], per_class=1, verbose=0)
    assert suite.TRANSFER_NULL in suite.OPTION_ATTACKS
    assert suite.priors_needed([suite.TRANSFER_NULL]) == []
