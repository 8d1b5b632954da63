"""What every judge beside the evaluation model shares: top-1 from a class per image."""

import abc

from trapmid_tf.validation import as_labels


class Judge(abc.ABC):
    """A judge of reconstructions: subclasses give `predict(images)`, a class per image."""

    @abc.abstractmethod
    def predict(self, images):
        """The judged class of each image.

        Args:
            images: Float32 NHWC images in [0, 1].

        Returns:
            An int array `(images,)`.
        """

    def top1(self, images, labels):
        """Per image, 1 where the judged class is its label, else 0.

        Args:
            images: Float32 NHWC images in [0, 1].
            labels: The int attacked class of each image.

        Returns:
            An int array `(images,)` of 0/1.
        """
        labels = as_labels(labels, "labels", len(images))
        return (self.predict(images) == labels).astype(int)
