import keras
import numpy as np
import pytest

from trapmid_tf.metrics.features import batched_predict


def _sum_model():
    inputs = keras.Input((2, 2, 1))
    return keras.Model(inputs, keras.ops.sum(inputs, axis=(1, 2)))


def test_uses_every_image_including_partial_batch():
    images = np.arange(7 * 4, dtype="float32").reshape(7, 2, 2, 1)
    predicted = batched_predict(_sum_model(), images, batch_size=3)
    np.testing.assert_allclose(predicted, images.sum(axis=(1, 2)))


def test_rejects_multi_output_model():
    inputs = keras.Input((2, 2, 1))
    outputs = [keras.layers.Flatten()(inputs), keras.ops.sum(inputs, axis=(1, 2))]
    model = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match="single output"):
        batched_predict(model, np.zeros((2, 2, 2, 1), "float32"))


@pytest.mark.parametrize(
    "images, batch_size, match",
    [
        (np.zeros((2, 2, 1), "float32"), 2, "NHWC"),
        (np.zeros((2, 2, 2, 1), "float32"), 0, "`batch_size`"),
    ],
)
def test_rejects_bad_input(images, batch_size, match):
    with pytest.raises(ValueError, match=match):
        batched_predict(_sum_model(), images, batch_size)
