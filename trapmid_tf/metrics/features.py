"""Running a Keras model over an image array in batches."""

import numpy as np

from trapmid_tf.validation import check_positive_int


def batched_predict(model, images, batch_size=100):
    """Runs `model` in inference mode over `images`, `batch_size` images at a time.

    The last batch may be smaller; every image is used (the reference FID code drops the
    leftover partial batch, a quirk not copied here).

    Args:
        model: A Keras model with a single output, e.g. a feature extractor or classifier.
        images: Float32 NHWC images in [0, 1], shape `(samples, height, width, channels)`.
        batch_size: Images per forward pass.

    Returns:
        The model output for all images as one numpy array, first axis `samples`.

    Raises:
        ValueError: If `images` is not a non-empty 4-D array, `batch_size` is not a positive
            integer, or the model has more than one output.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(
            f"`images` must be a non-empty NHWC array (samples, height, width, channels); "
            f"received shape {images.shape}."
        )
    outputs = model.predict(images, batch_size=batch_size, verbose=0)
    if not isinstance(outputs, np.ndarray):
        raise ValueError(
            f"`model` must have a single output; received {type(outputs).__name__} of outputs. "
            "Wrap it in a model that returns only the wanted tensor."
        )
    return outputs
