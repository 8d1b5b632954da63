"""The trigger bank: one secret trigger image per class, blended into inputs."""

import keras
from keras import ops

from trapmid_tf.validation import check_open_unit_interval


@keras.saving.register_keras_serializable(package="trapmid_tf")
class BlendTrigger(keras.layers.Layer):
    """Holds one trigger per class and blends it into images.

    `call(images, target_labels)` returns `(1 - alpha) * images + alpha * triggers[labels]`.
    Triggers are initialised from U[0, 1] and kept in [0, 1] by a constraint, which an
    optimiser applies after each update. A trigger with one channel is broadcast over the
    image channels (the reference's MNIST setting). It computes in float32 unless given
    another `dtype`, also under a mixed-precision policy: triggered images are float32 images.

    Args:
        num_classes: Number of classes, one trigger each.
        image_shape: `(height, width, channels)` of the images to blend into.
        alpha: Blend weight of the trigger, in (0, 1).
        channels: Trigger channels: `image_shape[-1]` (default) or 1.
        seed: Seed of the uniform initialisation.
        **kwargs: Standard layer arguments.

    Example:
        >>> blend = BlendTrigger(5, (32, 32, 1), alpha=0.1, seed=0)
        >>> blend(ops.zeros((2, 32, 32, 1)), ops.array([0, 3])).shape
        TensorShape([2, 32, 32, 1])
    """

    def __init__(self, num_classes, image_shape, alpha=0.02, channels=None, seed=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"`num_classes` must be >= 1; received {num_classes!r}.")
        image_shape = tuple(int(d) for d in image_shape)
        if len(image_shape) != 3:
            raise ValueError(
                f"`image_shape` must be (height, width, channels); received {image_shape!r}."
            )
        channels = image_shape[-1] if channels is None else int(channels)
        if channels not in (1, image_shape[-1]):
            raise ValueError(
                f"`channels` must be 1 or the image channels ({image_shape[-1]}); "
                f"received {channels!r}."
            )
        check_open_unit_interval("alpha", alpha)
        self.num_classes = int(num_classes)
        self.image_shape = image_shape
        self.alpha = float(alpha)
        self.channels = channels
        self.seed = seed
        self.triggers = self.add_weight(
            name="triggers",
            shape=(self.num_classes, *image_shape[:2], channels),
            initializer=keras.initializers.RandomUniform(0.0, 1.0, seed=seed),
            constraint=lambda t: ops.clip(t, 0.0, 1.0),
            trainable=True,
        )
        self.built = True

    def call(self, images, target_labels):
        """Blends each image with the trigger of its target label.

        Args:
            images: Float images `(batch, *image_shape)` in [0, 1].
            target_labels: Int class indices `(batch,)`, one trigger per image.

        Returns:
            `(1 - alpha) * images + alpha * triggers[target_labels]`, the images' shape.
        """
        selected = ops.take(self.triggers, ops.cast(target_labels, "int32"), axis=0)
        return (1.0 - self.alpha) * images + self.alpha * selected

    def compute_output_shape(self, images_shape, target_labels_shape):
        return images_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            image_shape=self.image_shape,
            alpha=self.alpha,
            channels=self.channels,
            seed=self.seed,
        )
        return config
