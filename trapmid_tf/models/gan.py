"""GAN networks of the GMI and KED-MI image priors (reference §2, "GAN architectures").

* `dcgan_generator`: z -> image in [0, 1] (DCGAN generator ending in a sigmoid).
* `wgan_critic`: image -> (N, 1) realness score (GMI's WGAN-GP critic, `DGWGAN`).
* `minibatch_discriminator`: image -> (N, num_classes) logits (KED-MI's semi-supervised
  discriminator with minibatch discrimination; the "fake" logit is implicit).

Every network is resolution-agnostic: square images of side 4·2^k (k >= 1) go through k
up- or down-sampling stages; at 64x64 the networks are exactly the reference ones. Layers
follow PyTorch's arithmetic (symmetric conv padding, batch norm momentum 0.1 and eps 1e-5,
instance norm eps 1e-5) and default initialisation, except that the critic's and the
discriminator's conv biases start at zero (PyTorch: uniform like the weights). Weights are
laid out NHWC: importing PyTorch weights needs the usual permutations (reference §6.1; the
generator's first Dense feeds a (4, 4, C) reshape where PyTorch's feeds (C, 4, 4), and the
discriminator's flattened feature is HWC-ordered).
"""

import keras
from keras import ops

from trapmid_tf.models import common, torch_layers
from trapmid_tf.validation import check_input_shape, check_positive_int

MIN_SIDE = 8  # 4 * 2^1: one sampling stage
LEAKY_SLOPE = 0.2
INSTANCE_NORM_EPSILON = 1e-5
MAX_CHANNEL_MULTIPLIER = 8  # generator and critic width caps at 8 * base_channels
DISCRIMINATOR_CHANNEL_MULTIPLIER = 4  # KED-MI discriminator width caps at 4 * base_channels
FEATURES_LAYER_NAME = "features"  # KED-MI discriminator: the flattened conv feature


def sampling_stages(image_shape, model_name):
    """Checks a square image shape of side 4·2^k and returns k.

    Args:
        image_shape: (height, width, channels).
        model_name: Network name shown in the error message.

    Returns:
        `(k, shape)`: the number of stride-2 stages between 4x4 and the image side, and the
        shape as a tuple of ints.

    Raises:
        ValueError: If the shape is not (side, side, channels) with side = 4·2^k, k >= 1.
    """
    error = ValueError(
        f"`image_shape` must be (side, side, channels) with side = 4 * 2**k for an integer "
        f"k >= 1 (8, 16, 32, 64, ...) and channels >= 1 for {model_name}; received "
        f"{image_shape!r}."
    )
    try:
        shape = check_input_shape(image_shape, MIN_SIDE, model_name)
    except ValueError:
        raise error from None
    side = shape[0]
    stages = side.bit_length() - 3  # side = 4 * 2**k has k + 3 bits
    if shape[1] != side or side != 4 << stages:
        raise error
    return stages, shape


def conv_transpose2d(
    x, filters, kernel_size, *, strides, padding, output_padding, use_bias, kernel_initializer,
    bias_initializer="zeros", name
):
    """Applies a PyTorch `ConvTranspose2d(kernel_size, stride, padding, output_padding)` to `x`.

    Keras 'same' does not reproduce PyTorch's cropping, so this is a 'valid'
    `Conv2DTranspose`, whose output (n−1)·s + k is cropped by `padding` on the top/left and
    `padding − output_padding` on the bottom/right, giving PyTorch's (n−1)·s − 2p + k + op.

    Args:
        x: NHWC input tensor.
        filters: Output channels.
        kernel_size: Square kernel side.
        strides: Square stride.
        padding: PyTorch's `padding`.
        output_padding: PyTorch's `output_padding`, at most `padding`.
        use_bias: Whether the layer has a bias.
        kernel_initializer: A fresh initializer instance for this layer.
        bias_initializer: Bias initializer, when `use_bias`.
        name: Layer name; the cropping layer, if any, is `name + "_crop"`.

    Returns:
        The output tensor.

    Raises:
        ValueError: If `output_padding` > `padding`.
    """
    if not 0 <= output_padding <= padding:
        raise ValueError(
            f"`output_padding` must be in [0, padding={padding}]; received {output_padding!r}."
        )
    x = keras.layers.Conv2DTranspose(
        filters,
        kernel_size,
        strides=strides,
        padding="valid",
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
        bias_initializer=bias_initializer,
        name=name,
    )(x)
    crop = (padding, padding - output_padding)
    if any(crop):
        x = keras.layers.Cropping2D((crop, crop), name=f"{name}_crop")(x)
    return x


def _generator_channels(stages, base_channels):
    """Channels of the 4x4 map and of each upsampling stage but the last, counted from the
    output side: ..., 4·base, 2·base, base (the reference at 64x64: 512, 256, 128, 64)."""
    return [
        base_channels * min(2**power, MAX_CHANNEL_MULTIPLIER)
        for power in range(stages - 1, -1, -1)
    ]


def dcgan_generator(
    image_shape, z_dim=100, base_channels=64, name="dcgan_generator",
    torch_running_variance=False,
):
    """Builds the GMI/KED-MI generator: z -> images in [0, 1].

    Reference `Generator(z_dim, dim)`: Dense (no bias) -> BN -> ReLU -> reshape to a 4x4 map,
    then k−1 x [ConvTranspose(k5, s2, p2, op1, no bias) -> BN -> ReLU], each halving the
    channels down to `base_channels`, then ConvTranspose(k5, s2, p2, op1) to the image
    channels -> sigmoid. k = log2(side / 4); channels are counted from the output side and
    capped at 8·`base_channels` (64x64: 512, 256, 128, 64 for the default width).

    Args:
        image_shape: (side, side, channels) of the output, side = 4·2^k with k >= 1.
        z_dim: Latent size, >= 1.
        base_channels: Channels of the last hidden stage, >= 1.
        name: Model name.
        torch_running_variance: Whether the batch norms update their moving variance as
            PyTorch does (`FusedBatchNorm`), e.g. to train as the reference; else as Keras.

    Returns:
        A functional `keras.Model` with input shape (None, z_dim) and output (None, *image_shape).

    Raises:
        ValueError: On a bad `image_shape`, `z_dim` or `base_channels`.
    """
    stages, image_shape = sampling_stages(image_shape, "dcgan_generator")
    check_positive_int("z_dim", z_dim)
    check_positive_int("base_channels", base_channels)
    channels = _generator_channels(stages, base_channels)
    z = keras.Input((z_dim,), name="z")
    x = keras.layers.Dense(
        4 * 4 * channels[0], use_bias=False, kernel_initializer=torch_layers.torch_default_kernel(),
        name="project",
    )(z)
    x = torch_layers.batch_norm("project_bn", torch_running_variance=torch_running_variance)(x)
    x = keras.layers.ReLU(name="project_relu")(x)
    x = keras.layers.Reshape((4, 4, channels[0]), name="reshape")(x)
    for stage, filters in enumerate(channels[1:], start=1):
        x = _upsample(x, filters, use_bias=False, name=f"up{stage}")
        x = torch_layers.batch_norm(
            f"up{stage}_bn", torch_running_variance=torch_running_variance
        )(x)
        x = keras.layers.ReLU(name=f"up{stage}_relu")(x)
    x = _upsample(x, image_shape[-1], use_bias=True, name=f"up{stages}")
    # Images are float32 under any dtype policy (bfloat16 mixed precision included).
    images = keras.layers.Activation("sigmoid", name="images", dtype="float32")(x)
    return keras.Model(z, images, name=name)


def _upsample(x, filters, use_bias, name):
    """ConvTranspose2d(k5, s2, p2, output_padding 1): doubles the side."""
    return conv_transpose2d(
        x,
        filters,
        5,
        strides=2,
        padding=2,
        output_padding=1,
        use_bias=use_bias,
        kernel_initializer=torch_layers.torch_default_kernel(),
        bias_initializer=torch_layers.torch_default_bias(filters * 25),
        name=name,
    )


def _instance_norm(name):
    """`InstanceNorm2d(affine=True)`: per-sample, per-channel normalisation."""
    return keras.layers.GroupNormalization(groups=-1, epsilon=INSTANCE_NORM_EPSILON, name=name)


def _down_block(x, filters, kernel_size, padding, instance_norm, name):
    """Conv(k, s2, p) [-> InstanceNorm] -> LeakyReLU(0.2): halves the side."""
    x = torch_layers.conv2d(
        x,
        filters,
        kernel_size,
        strides=2,
        padding=padding,
        use_bias=True,
        kernel_initializer=torch_layers.torch_default_kernel(),
        name=f"{name}_conv",
    )
    if instance_norm:
        x = _instance_norm(f"{name}_in")(x)
    return keras.layers.LeakyReLU(LEAKY_SLOPE, name=f"{name}_lrelu")(x)


def wgan_critic(image_shape, base_channels=64, name="wgan_critic"):
    """Builds GMI's WGAN-GP critic (reference `DGWGAN`): images -> (N, 1) realness scores.

    conv5x5 s2 p2 -> LeakyReLU(0.2), then k−1 x [conv5x5 s2 p2 -> InstanceNorm (affine) ->
    LeakyReLU(0.2)] doubling the channels (capped at 8·`base_channels`) down to a 4x4 map,
    then conv4x4 'valid' to one score. k = log2(side / 4). No batch norm, so each score depends
    on its own image only (as the gradient penalty assumes).

    Args:
        image_shape: (side, side, channels) of the input, side = 4·2^k with k >= 1.
        base_channels: Channels of the first conv, >= 1.
        name: Model name.

    Returns:
        A functional `keras.Model` mapping images to scores of shape (N, 1).

    Raises:
        ValueError: On a bad `image_shape` or `base_channels`.
    """
    stages, image_shape = sampling_stages(image_shape, "wgan_critic")
    check_positive_int("base_channels", base_channels)
    images = keras.Input(image_shape, name="image")
    x = images
    for stage in range(stages):
        filters = base_channels * min(2**stage, MAX_CHANNEL_MULTIPLIER)
        x = _down_block(x, filters, 5, 2, instance_norm=stage > 0, name=f"down{stage + 1}")
    x = torch_layers.conv2d(
        x,
        1,
        4,
        use_bias=True,
        kernel_initializer=torch_layers.torch_default_kernel(),
        name="score_conv",
    )
    scores = keras.layers.Flatten(name="score")(x)
    return keras.Model(images, scores, name=name)


@keras.saving.register_keras_serializable(package="trapmid_tf")
class MinibatchDiscrimination(keras.layers.Layer):
    """Minibatch discrimination (Salimans et al., 2016) with the L1 kernel, as KED-MI.

    With features f (N, A) and a tensor T (A, B·C) drawn from N(0, 1), `M = f·T` is reshaped
    to (N, B, C) and the output is `o[i, b] = Σ_j exp(−‖M[i, b] − M[j, b]‖₁) − 1` (the −1
    removes j = i), shape (N, B). Each output mixes the whole batch.

    Args:
        kernels: B, the number of outputs per sample (reference: 64).
        kernel_dim: C, the size of each kernel's projection (reference: 50).
        **kwargs: Standard layer arguments.
    """

    def __init__(self, kernels=64, kernel_dim=50, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("kernels", kernels)
        check_positive_int("kernel_dim", kernel_dim)
        self.kernels = int(kernels)
        self.kernel_dim = int(kernel_dim)

    def build(self, input_shape):
        self.projection = self.add_weight(
            name="projection",
            shape=(input_shape[-1], self.kernels * self.kernel_dim),
            initializer=keras.initializers.RandomNormal(0.0, 1.0),
        )

    def call(self, features):
        """Compares every sample's projected features with the rest of the batch.

        Args:
            features: Float features, `(batch, A)`.

        Returns:
            `(batch, kernels)`: for each sample and kernel, the summed closeness
            `exp(-L1 distance)` to the other samples.
        """
        projected = ops.reshape(
            ops.matmul(features, self.projection), (-1, self.kernels, self.kernel_dim)
        )
        distances = ops.sum(
            ops.abs(projected[:, None, :, :] - projected[None, :, :, :]), axis=-1
        )  # (N, N, B)
        return ops.sum(ops.exp(-distances), axis=1) - 1.0

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.kernels)

    def get_config(self):
        return {**super().get_config(), "kernels": self.kernels, "kernel_dim": self.kernel_dim}


def minibatch_discriminator(
    image_shape, num_classes, base_channels=64, kernels=64, kernel_dim=50,
    name="minibatch_discriminator"
):
    """Builds KED-MI's discriminator (reference `MinibatchDiscriminator`): images -> logits.

    k−1 x [conv5x5 s2 p2 -> InstanceNorm (affine) -> LeakyReLU(0.2)] with channels
    `base_channels`·(1, 2, 4, 4, ...), then conv3x3 s2 p1 (same channels) -> InstanceNorm ->
    LeakyReLU down to a 4x4 map; Flatten (the layer named "features", the feature KED-MI
    matches) -> [features ; MinibatchDiscrimination(features)] -> Dense "logits". At 64x64
    with the defaults the feature has 4096 values and the Dense input 4160, as the reference.

    The logits are over the target's `num_classes` classes; the semi-supervised GAN's extra
    "fake" class has an implicit logit fixed at 0, so `p(real | x) = sigmoid(logsumexp(logits))`.
    The outputs of a sample depend on the rest of its batch (minibatch discrimination).

    Args:
        image_shape: (side, side, channels) of the input, side = 4·2^k with k >= 1.
        num_classes: Number of logits (the target's classes), >= 1.
        base_channels: Channels of the first conv, >= 1.
        kernels: Minibatch-discrimination outputs per sample, >= 1.
        kernel_dim: Size of each minibatch-discrimination kernel, >= 1.
        name: Model name.

    Returns:
        A functional `keras.Model` mapping images to logits of shape (N, num_classes).

    Raises:
        ValueError: On a bad `image_shape` or a non-positive size argument.
    """
    stages, image_shape = sampling_stages(image_shape, "minibatch_discriminator")
    check_positive_int("num_classes", num_classes)
    check_positive_int("base_channels", base_channels)
    images = keras.Input(image_shape, name="image")
    x = images
    filters = base_channels
    for stage in range(stages - 1):
        filters = base_channels * min(2**stage, DISCRIMINATOR_CHANNEL_MULTIPLIER)
        x = _down_block(x, filters, 5, 2, instance_norm=True, name=f"down{stage + 1}")
    x = _down_block(x, filters, 3, 1, instance_norm=True, name=f"down{stages}")
    features = keras.layers.Flatten(name=FEATURES_LAYER_NAME)(x)
    similarity = MinibatchDiscrimination(kernels, kernel_dim, name="minibatch")(features)
    x = keras.layers.Concatenate(name="features_and_minibatch")([features, similarity])
    logits = torch_layers.torch_default_dense(num_classes, x.shape[-1], common.LOGITS_LAYER_NAME)(x)
    return keras.Model(images, logits, name=name)
