"""A learned judge beside the evaluation model: a classifier's top-1 on reconstructions.

The evaluation model is trained on the same private images as the targets, so an adversarial
feature that moves a target may move it too (Ho et al. 2025, "Uncovering the Limitations of
Model Inversion Evaluation"). A classifier of another architecture, trained only on images
no target trains on (the pipeline's held-out judge: part of the judges' references), shares
neither the images nor the architecture: where it also accepts a reconstruction, the
acceptance is less likely to be transfer.
"""

import numpy as np

from trapmid_tf.metrics.features import batched_predict
from trapmid_tf.metrics.judge import Judge
from trapmid_tf.validation import as_image_batch, check_positive_int


class ClassifierJudge(Judge):
    """Judges images by a Keras classifier's most likely class.

    Args:
        model: Classifier images -> logits (or probabilities) over the classes it judges.
        batch_size: Images per forward pass.

    Example:
        judge = ClassifierJudge(held_out_model)
        judge.top1(result.images, result.labels).mean()  # the judge's top-1 attack accuracy
    """

    def __init__(self, model, batch_size=100):
        self.model = model
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.num_classes = int(model.output_shape[-1])

    def predict(self, images):
        """The classifier's most likely class of each image (the first one on a tie).

        Args:
            images: Float32 NHWC images in [0, 1].

        Returns:
            An int64 array `(images,)`.

        Raises:
            ValueError: If `images` is not an NHWC batch in [0, 1].
        """
        images = as_image_batch("images", images)
        return np.argmax(batched_predict(self.model, images, self.batch_size), axis=1)
