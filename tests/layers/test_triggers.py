import keras
import numpy as np
import pytest

from trapmid_tf.layers.triggers import BlendTrigger


def test_blend_formula_and_channel_broadcast():
    layer = BlendTrigger(4, (3, 3, 3), alpha=0.25, channels=1, seed=1)
    triggers = layer.triggers.numpy()
    assert triggers.shape == (4, 3, 3, 1)
    assert triggers.min() >= 0.0 and triggers.max() <= 1.0
    images = np.random.default_rng(0).uniform(size=(2, 3, 3, 3)).astype("float32")
    labels = np.array([3, 0])
    out = keras.ops.convert_to_numpy(layer(images, labels))
    expected = 0.75 * images + 0.25 * np.broadcast_to(triggers[labels], images.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_seeded_initialisation_is_uniform_and_reproducible():
    a = BlendTrigger(10, (16, 16, 1), seed=3).triggers.numpy()
    b = BlendTrigger(10, (16, 16, 1), seed=3).triggers.numpy()
    c = BlendTrigger(10, (16, 16, 1), seed=4).triggers.numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # U[0,1]: mean 1/2, variance 1/12 (2,560 draws).
    assert abs(a.mean() - 0.5) < 0.03 and abs(a.var() - 1 / 12) < 0.01


def test_constraint_clips_to_unit_interval():
    layer = BlendTrigger(2, (2, 2, 1), seed=0)
    clipped = keras.ops.convert_to_numpy(layer.triggers.constraint(np.array([-0.5, 0.3, 1.7])))
    np.testing.assert_allclose(clipped, [0.0, 0.3, 1.0])


def test_rebuilt_from_config_draws_the_same_seeded_triggers():
    layer = BlendTrigger(3, (8, 8, 3), alpha=0.1, channels=3, seed=7)
    clone = BlendTrigger.from_config(layer.get_config())
    np.testing.assert_array_equal(clone.triggers.numpy(), layer.triggers.numpy())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_classes=0, image_shape=(4, 4, 1)), "num_classes"),
        (dict(num_classes=2, image_shape=(4, 4)), "image_shape"),
        (dict(num_classes=2, image_shape=(4, 4, 3), channels=2), "channels"),
        (dict(num_classes=2, image_shape=(4, 4, 3), alpha=1.5), "alpha"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BlendTrigger(**kwargs)
