"""PLG-MI's conditional GAN: a ResNet generator with conditional BatchNorm and a spectrally
normalised projection discriminator (Miyato & Koyama, "cGANs with Projection Discriminator").

Both networks take the image shape and size themselves from it: the side must be `4 * 2**k`
with k >= 1. As for the GMI/KED-MI networks (`trapmid_tf.models.gan`), the stage next to the
image has `base_channels` channels and the width doubles at each stage away from it, capped
at 16x: the generator's 4x4 map has `min(2**k, 16)` times `base_channels` and its up-blocks
halve it down to 1x; the discriminator's blocks go 1x, 2x, 4x, ... (capped at 16x) down to a
2x2 map. At 64x64 (k = 4) both are exactly the reference networks (16x, 8x, 4x, 2x, 1x).
"""

import math

import keras
from keras import ops

from trapmid_tf.models import torch_layers
from trapmid_tf.models.gan import sampling_stages
from trapmid_tf.validation import check_positive_int

BOTTOM_SIDE = 4  # generator starting map and smallest step of the image side
FINAL_SIDE = 2  # side of the discriminator's last feature map
MAX_WIDTH_MULTIPLIER = 16
_NORMALIZE_EPSILON = 1e-12  # PyTorch's F.normalize default


# === Layers ===


@keras.saving.register_keras_serializable(package="trapmid_tf")
class ConditionalBatchNorm(keras.layers.Layer):
    """BatchNorm without affine terms, followed by a per-class scale and offset.

    Computes `gamma[y] * BN(x) + beta[y]`, where BN normalises each channel with the batch
    statistics in training and the moving ones in inference (momentum 0.9, epsilon 1e-5,
    PyTorch's defaults), and `gamma`, `beta` are `(num_classes, channels)` tables, one row per
    class (PyTorch embeddings in the reference), initialised to ones and zeros.

    Args:
        num_classes: Number of classes (rows of `gamma` and `beta`).
        **kwargs: Standard layer arguments.

    Call arguments:
        inputs: `[x, labels]`: NHWC features and integer class indices of shape `(batch,)`.
        training: Whether BN uses (and updates) the batch statistics.
    """

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("num_classes", num_classes)
        self.num_classes = int(num_classes)
        self.batch_norm = keras.layers.BatchNormalization(
            center=False,
            scale=False,
            momentum=torch_layers.BN_MOMENTUM,
            epsilon=torch_layers.BN_EPSILON,
            name="batch_norm",
        )

    def build(self, input_shape):
        features_shape = input_shape[0]
        channels = features_shape[-1]
        self.batch_norm.build(features_shape)
        self.gamma = self.add_weight(
            shape=(self.num_classes, channels), initializer="ones", name="gamma"
        )
        self.beta = self.add_weight(
            shape=(self.num_classes, channels), initializer="zeros", name="beta"
        )

    def call(self, inputs, training=None):
        """Normalises the features and applies each sample's class scale and offset.

        Args:
            inputs: `[x, labels]`: NHWC features and int class indices `(batch,)`.
            training: Whether BN uses (and updates) the batch statistics.

        Returns:
            `gamma[labels] * BN(x) + beta[labels]`, the shape of `x`.
        """
        features, labels = inputs
        labels = ops.cast(labels, "int32")
        normalized = self.batch_norm(features, training=training)
        gamma = ops.take(self.gamma, labels, axis=0)[:, None, None, :]
        beta = ops.take(self.beta, labels, axis=0)[:, None, None, :]
        return normalized * ops.cast(gamma, normalized.dtype) + ops.cast(beta, normalized.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes)
        return config


def _normalize(vector):
    return vector / ops.maximum(ops.norm(vector), _NORMALIZE_EPSILON)


@keras.saving.register_keras_serializable(package="trapmid_tf")
class SNEmbedding(keras.layers.Layer):
    """Class embedding divided by the spectral norm of its table: `W[y] / sigma(W)`.

    `keras.layers.SpectralNormalization` cannot wrap an `Embedding` (it returns zeros), hence
    this layer. As PyTorch's `spectral_norm` with one power iteration, each call estimates
    sigma from a persistent vector `u` (one entry per class): `v = normalize(W^T u)`,
    `u' = normalize(W v)`, `sigma = u'^T W v`, with `u'` and `v` held constant for the
    gradient. `u` is replaced by `u'` only when training, so inference is deterministic.

    Args:
        num_classes: Number of classes (rows of `W`).
        output_dim: Embedding size (columns of `W`).
        embeddings_initializer: Initializer of `W`; Xavier-uniform (gain 1) as the reference.
        **kwargs: Standard layer arguments.

    Call arguments:
        labels: Integer class indices of shape `(batch,)`.
        training: Whether to store the power iteration's new `u`.

    Returns:
        `(batch, output_dim)` rows of the normalised table.
    """

    def __init__(self, num_classes, output_dim, embeddings_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        check_positive_int("num_classes", num_classes)
        check_positive_int("output_dim", output_dim)
        self.num_classes = int(num_classes)
        self.output_dim = int(output_dim)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            shape=(self.num_classes, self.output_dim),
            initializer=self.embeddings_initializer,
            name="embeddings",
        )
        self.vector_u = self.add_weight(
            shape=(self.num_classes,),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            trainable=False,
            name="vector_u",
        )

    def call(self, labels, training=False):
        """Looks up the labels' rows of the spectrally normalised table.

        Args:
            labels: Int class indices, `(batch,)`.
            training: Whether to store the power iteration's new `u`.

        Returns:
            `(batch, output_dim)` rows of `W / sigma(W)`.
        """
        weights = ops.convert_to_tensor(self.embeddings)
        vector_v = ops.stop_gradient(_normalize(ops.matmul(self.vector_u, weights)))
        new_u = ops.stop_gradient(_normalize(ops.matmul(weights, vector_v)))
        sigma = ops.sum(new_u * ops.matmul(weights, vector_v))
        if training:
            self.vector_u.assign(new_u)
        rows = ops.take(weights, ops.cast(labels, "int32"), axis=0)
        return ops.cast(rows / sigma, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            output_dim=self.output_dim,
            embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer),
        )
        return config


# === Shared helpers ===


def _width(stages_from_image, base_channels):
    """Channels of a stage whose side is `stages_from_image` halvings below the image's."""
    return base_channels * min(2**stages_from_image, MAX_WIDTH_MULTIPLIER)


def _conv(filters, kernel_size, in_channels, kernel_initializer, name):
    """Stride-1 'same' conv with PyTorch's default bias initialisation."""
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        padding="same",
        kernel_initializer=kernel_initializer,
        bias_initializer=torch_layers.torch_default_bias(in_channels * kernel_size**2),
        name=name,
    )


# === Generator ===




def _torch_default_conv(x, filters, kernel_size, name):
    """PyTorch-initialised conv (U(±1/√fan_in) weights and bias), as the reference generator."""
    return _conv(filters, kernel_size, x.shape[-1], torch_layers.torch_default_kernel(), name)(x)


def _upsample(x, name):
    return keras.layers.UpSampling2D(2, interpolation="bilinear", name=name)(x)


def _up_block(x, labels, filters, num_classes, name):
    """Residual up-block: conv1x1(up(x)) + conv3x3(relu(CBN(conv3x3(up(relu(CBN(x)))))))."""
    shortcut = _upsample(x, f"{name}_shortcut_up")
    shortcut = _torch_default_conv(shortcut, filters, 1, f"{name}_shortcut_conv")
    h = ConditionalBatchNorm(num_classes, name=f"{name}_cbn1")([x, labels])
    h = keras.layers.ReLU(name=f"{name}_relu1")(h)
    h = _upsample(h, f"{name}_up")
    h = _torch_default_conv(h, filters, 3, f"{name}_conv1")
    h = ConditionalBatchNorm(num_classes, name=f"{name}_cbn2")([h, labels])
    h = keras.layers.ReLU(name=f"{name}_relu2")(h)
    h = _torch_default_conv(h, filters, 3, f"{name}_conv2")
    return keras.layers.Add(name=f"{name}_add")([shortcut, h])


def _generator_images(latents, labels, stages, channels, num_classes, base_channels):
    width = _width(stages, base_channels)
    linear = torch_layers.torch_default_dense(
        BOTTOM_SIDE**2 * width, latents.shape[-1], "linear"
    )
    x = linear(latents)
    x = keras.layers.Reshape((BOTTOM_SIDE, BOTTOM_SIDE, width), name="reshape")(x)
    for block in range(1, stages + 1):
        filters = _width(stages - block, base_channels)
        x = _up_block(x, labels, filters, num_classes, f"block{block}")
    x = torch_layers.batch_norm("final_bn")(x)
    x = keras.layers.ReLU(name="final_relu")(x)
    x = _torch_default_conv(x, channels, 1, "to_image")
    # Images are float32 under any dtype policy (bfloat16 mixed precision included).
    x = keras.layers.Activation("tanh", name="tanh", dtype="float32")(x)
    return keras.layers.Rescaling(0.5, offset=0.5, name="to_unit_range", dtype="float32")(x)


@keras.saving.register_keras_serializable(package="trapmid_tf")
class ResNetGenerator(keras.Model):
    """PLG-MI's conditional ResNet generator, a functional model `[z, y] -> images in [0, 1]`.

    Dense(z -> 4*4*w) -> reshape -> k up-blocks to the image side `4 * 2**k`, halving the
    width from `w = min(2**k, 16) * base_channels` to `base_channels` (each block: shortcut
    upsample + conv1x1; residual CBN -> ReLU -> upsample -> conv3x3 -> CBN -> ReLU -> conv3x3)
    -> BN -> ReLU -> conv1x1 to the image channels -> `(tanh + 1) / 2`. Upsampling is bilinear
    (PyTorch `align_corners=False`); weights use PyTorch's default initialisation, as the
    reference.

    Deviation: the reference ends in tanh and feeds [-1, 1] images to the target; this one
    maps the tanh output to [0, 1], the data contract of every model here.

    Build it with `resnet_generator`. Call it as `generator([z, y], training=...)` with `z` of
    shape `(batch, z_dim)` and integer `y` of shape `(batch,)`; `training=True` normalises
    with batch statistics (the reference trains in train mode), `training=False` with the
    moving ones (the reference's reconstruction).

    Args:
        image_shape: `(side, side, channels)`, side `4 * 2**k` with k >= 1.
        num_classes: Number of classes of the condition.
        z_dim: Size of the latent vector.
        base_channels: Width of the last up-block (64 in the reference).
        name: Model name.
        **kwargs: Standard `keras.Model` arguments.

    Attributes:
        image_shape, num_classes, z_dim, base_channels: The arguments.

    Raises:
        ValueError: On a bad argument.
    """

    def __init__(
        self,
        image_shape,
        num_classes,
        z_dim=128,
        base_channels=64,
        name="resnet_generator",
        **kwargs,
    ):
        stages, image_shape = sampling_stages(image_shape, "resnet_generator")
        for argument, value in (
            ("num_classes", num_classes),
            ("z_dim", z_dim),
            ("base_channels", base_channels),
        ):
            check_positive_int(argument, value)
        latents = keras.Input((z_dim,), name="latent")
        labels = keras.Input((), dtype="int32", name="label")
        images = _generator_images(
            latents, labels, stages, image_shape[-1], num_classes, base_channels
        )
        super().__init__(inputs=[latents, labels], outputs=images, name=name, **kwargs)
        self.image_shape = image_shape
        self.num_classes = int(num_classes)
        self.z_dim = int(z_dim)
        self.base_channels = int(base_channels)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "image_shape": self.image_shape,
            "num_classes": self.num_classes,
            "z_dim": self.z_dim,
            "base_channels": self.base_channels,
        }


def resnet_generator(image_shape, num_classes, z_dim=128, base_channels=64):
    """Builds PLG-MI's conditional ResNet generator; see `ResNetGenerator`.

    Args:
        image_shape: `(side, side, channels)`, side `4 * 2**k` with k >= 1.
        num_classes: Number of classes of the condition.
        z_dim: Size of the latent vector.
        base_channels: Width of the last up-block (64 in the reference).

    Returns:
        A `ResNetGenerator`: inputs `[z (batch, z_dim), y (batch,) int32]`, output float32
        images `(batch, *image_shape)` in [0, 1].

    Raises:
        ValueError: On a bad argument.
    """
    return ResNetGenerator(image_shape, num_classes, z_dim=z_dim, base_channels=base_channels)


# === Discriminator ===


def _sn_conv(x, filters, kernel_size, gain, name):
    """Spectrally normalised conv, Xavier-uniform weights of the given gain."""
    initializer = torch_layers.xavier_uniform(gain)
    conv = _conv(filters, kernel_size, x.shape[-1], initializer, f"{name}_conv")
    return keras.layers.SpectralNormalization(conv, power_iterations=1, name=name)(x)


def _average_pool(x, name):
    return keras.layers.AveragePooling2D(2, name=name)(x)


def _optimized_block(x, filters, name):
    """First block: avgpool(conv3x3(relu(conv3x3(x)))) + conv1x1(avgpool(x))."""
    h = _sn_conv(x, filters, 3, math.sqrt(2.0), f"{name}_conv1")
    h = keras.layers.ReLU(name=f"{name}_relu")(h)
    h = _sn_conv(h, filters, 3, math.sqrt(2.0), f"{name}_conv2")
    h = _average_pool(h, f"{name}_pool")
    shortcut = _average_pool(x, f"{name}_shortcut_pool")
    shortcut = _sn_conv(shortcut, filters, 1, 1.0, f"{name}_shortcut_conv")
    return keras.layers.Add(name=f"{name}_add")([shortcut, h])


def _down_block(x, filters, name):
    """Block: avgpool(conv3x3(relu(conv3x3(relu(x))))) + avgpool(conv1x1(x))."""
    h = keras.layers.ReLU(name=f"{name}_relu1")(x)
    h = _sn_conv(h, x.shape[-1], 3, math.sqrt(2.0), f"{name}_conv1")
    h = keras.layers.ReLU(name=f"{name}_relu2")(h)
    h = _sn_conv(h, filters, 3, math.sqrt(2.0), f"{name}_conv2")
    h = _average_pool(h, f"{name}_pool")
    shortcut = _sn_conv(x, filters, 1, 1.0, f"{name}_shortcut_conv")
    shortcut = _average_pool(shortcut, f"{name}_shortcut_pool")
    return keras.layers.Add(name=f"{name}_add")([shortcut, h])


def sn_projection_discriminator(
    image_shape, num_classes, base_channels=64, name="sn_projection_discriminator"
):
    """Builds PLG-MI's spectrally normalised ResNet projection discriminator.

    An optimised first block, then down-blocks (each halves the side) to a 2x2 map, with
    widths doubling from `base_channels`, capped at 16x (see the module docstring); then
    ReLU, a sum over the 2x2 positions giving the feature `h` (layer "features"), and
    `D(x, y) = linear(h) + <SNEmbedding(y), h>`. Every conv and the linear layer are wrapped
    in `keras.layers.SpectralNormalization(power_iterations=1)`, which updates its estimate
    and renormalises the kernel in place on each `training=True` call; the class embedding is
    an `SNEmbedding`. Initialisation as the reference: Xavier-uniform, gain √2 for the
    residual convs and 1 for the shortcuts, the linear layer and the embedding.

    Args:
        image_shape: `(side, side, channels)`, side `4 * 2**k` with k >= 1.
        num_classes: Number of classes of the projection.
        base_channels: Width of the first block (64 in the reference).
        name: Model name.

    Returns:
        A functional `keras.Model` with inputs `[images, labels (batch,) int32]` and output
        realness scores of shape `(batch, 1)`.

    Raises:
        ValueError: On a bad argument.
    """
    stages, image_shape = sampling_stages(image_shape, "sn_projection_discriminator")
    check_positive_int("num_classes", num_classes)
    check_positive_int("base_channels", base_channels)
    images = keras.Input(image_shape, name="image")
    labels = keras.Input((), dtype="int32", name="label")
    x = _optimized_block(images, _width(0, base_channels), "block1")
    for block in range(2, stages + 2):  # each block halves the side, down to FINAL_SIDE
        x = _down_block(x, _width(block - 1, base_channels), f"block{block}")
    x = keras.layers.ReLU(name="final_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="spatial_mean")(x)
    features = keras.layers.Rescaling(float(FINAL_SIDE**2), name="features")(x)  # the sum
    width = features.shape[-1]
    linear = keras.layers.Dense(
        1,
        kernel_initializer=torch_layers.xavier_uniform(1.0),
        bias_initializer=torch_layers.torch_default_bias(width),
        name="linear_dense",
    )
    unconditional = keras.layers.SpectralNormalization(linear, power_iterations=1, name="linear")(
        features
    )
    embedded = SNEmbedding(num_classes, width, name="projection_embedding")(labels)
    projection = keras.layers.Dot(axes=1, name="projection")([embedded, features])
    realness = keras.layers.Add(name="realness")([unconditional, projection])
    return keras.Model([images, labels], realness, name=name)
