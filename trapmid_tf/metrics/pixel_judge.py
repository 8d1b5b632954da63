"""A pixel-space judge: a reconstruction's class is that of its nearest reference image.

The evaluation model is a CNN trained on the same private images as the targets, so an
adversarial feature that moves the target may move it too (Ho et al. 2025, "Uncovering the
Limitations of Model Inversion Evaluation"). A nearest neighbour in pixel space shares no
such feature: it accepts a reconstruction only where it looks, pixel by pixel, most like
an image of the attacked class. Its references are images no target trains on (the
pipeline gives the private test split and, for MNIST and Fashion-MNIST, the test images of
the other classes: `trapmid_tf.experiments.evaluation.judge_references`). Meaningful only
for small images, where pixel distance still tracks what an image shows:
`PIXEL_JUDGE_MAX_SIDE`.
"""

import numpy as np

from trapmid_tf.metrics.distance import squared_distance_blocks
from trapmid_tf.metrics.judge import Judge
from trapmid_tf.validation import as_image_batch, as_labels

# The largest image side (pixels) the pixel judge takes.
PIXEL_JUDGE_MAX_SIDE = 32


def pixel_judge_applies(image_shape):
    """Whether images of `image_shape` `(height, width, channels)` are small enough."""
    return max(int(side) for side in image_shape[:2]) <= PIXEL_JUDGE_MAX_SIDE


class PixelJudge(Judge):
    """Classifies images by their nearest reference image in pixel space (squared L2).

    Args:
        reference_images: Float32 NHWC images in [0, 1], at most `PIXEL_JUDGE_MAX_SIDE`
            pixels a side; images no target trained on.
        reference_labels: Their int classes.

    Raises:
        ValueError: If the images are not an NHWC batch in [0, 1], are larger than
            `PIXEL_JUDGE_MAX_SIDE` a side, or the labels do not match them.

    Example:
        >>> references = np.stack([np.zeros((2, 2, 1)), np.ones((2, 2, 1))])  # black, white
        >>> judge = PixelJudge(references, [0, 1])
        >>> judge.predict(np.full((1, 2, 2, 1), 0.8)).tolist()  # nearer white
        [1]
        >>> judge.top1(np.full((2, 2, 2, 1), 0.3), [0, 1]).tolist()  # nearer black
        [1, 0]
    """

    def __init__(self, reference_images, reference_labels):
        images = as_image_batch("reference_images", reference_images)
        if not pixel_judge_applies(images.shape[1:]):
            raise ValueError(
                f"`reference_images` must be at most {PIXEL_JUDGE_MAX_SIDE} pixels a side for "
                f"a pixel-space judge; received images of shape {images.shape[1:]}."
            )
        self.labels = as_labels(reference_labels, "reference_labels", len(images))
        self.image_shape = images.shape[1:]
        self._references = images.reshape(len(images), -1)

    def predict(self, images):
        """The class of each image's nearest reference (the first one on a tie).

        Args:
            images: Float32 NHWC images in [0, 1] of the references' shape.

        Returns:
            An int64 array `(images,)`.

        Raises:
            ValueError: If `images` is not an NHWC batch in [0, 1] of the references' shape.
        """
        images = as_image_batch("images", images)
        if images.shape[1:] != self.image_shape:
            raise ValueError(
                f"`images` must have the reference images' shape {self.image_shape}; "
                f"received {images.shape[1:]}."
            )
        nearest = np.empty(len(images), dtype=np.int64)
        for rows, block in squared_distance_blocks(images.reshape(len(images), -1),
                                                   self._references):
            nearest[rows] = np.argmin(block, axis=1)
        return self.labels[nearest]
