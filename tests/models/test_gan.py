"""GAN networks of the GMI / KED-MI priors: shapes, PyTorch arithmetic, parameter counts."""

import itertools

import keras
import numpy as np
import pytest

from trapmid_tf.models import gan
from tests.tolerances import assert_float32_close, largest_activation, sum_of_fan_ins


def torch_conv_transpose(x, weight, bias, stride, padding, output_padding):
    """PyTorch's ConvTranspose2d by its definition, on NHWC input.

    Input pixel (i, j) adds `x[i, j] @ weight[:, :, a, b]` to output pixel
    (i·stride − padding + a, j·stride − padding + b); the output side is
    (n − 1)·stride − 2·padding + k + output_padding. `weight` is PyTorch's (in, out, k, k).
    """
    n, height, width, _ = x.shape
    k = weight.shape[2]
    out_h = (height - 1) * stride - 2 * padding + k + output_padding
    out_w = (width - 1) * stride - 2 * padding + k + output_padding
    y = np.zeros((n, out_h, out_w, weight.shape[1])) + bias
    for i, j, a, b in itertools.product(range(height), range(width), range(k), range(k)):
        row, col = i * stride - padding + a, j * stride - padding + b
        if 0 <= row < out_h and 0 <= col < out_w:
            y[:, row, col, :] += x[:, i, j, :] @ weight[:, :, a, b]
    return y


@pytest.mark.parametrize(
    "kernel, stride, padding, output_padding",
    [(5, 2, 2, 1), (4, 2, 1, 0), (3, 1, 1, 0)],
)
def test_conv_transpose2d_matches_pytorch(kernel, stride, padding, output_padding):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 4, 2)).astype("float32")
    weight = rng.normal(size=(2, 3, kernel, kernel)).astype("float32")  # PyTorch (in, out, k, k)
    bias = rng.normal(size=3).astype("float32")
    inputs = keras.Input(x.shape[1:])
    outputs = gan.conv_transpose2d(
        inputs, 3, kernel, strides=stride, padding=padding, output_padding=output_padding,
        use_bias=True, kernel_initializer="zeros", name="up",
    )
    model = keras.Model(inputs, outputs)
    # Porting note 6.1: ConvTranspose (in, out, kh, kw) -> Keras (kh, kw, out, in).
    model.get_layer("up").set_weights([weight.transpose(2, 3, 1, 0), bias])
    expected = torch_conv_transpose(x, weight, bias, stride, padding, output_padding)
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_conv_transpose2d_rejects_output_padding_above_padding():
    with pytest.raises(ValueError, match="output_padding"):
        gan.conv_transpose2d(
            keras.Input((4, 4, 1)), 1, 3, strides=2, padding=0, output_padding=1,
            use_bias=False, kernel_initializer="zeros", name="up",
        )


@pytest.mark.parametrize("shape", [(32, 32, 1), (64, 64, 3)])
def test_generator_maps_latents_to_images_in_unit_range(shape):
    generator = gan.dcgan_generator(shape, z_dim=10, base_channels=4)
    assert generator.input_shape == (None, 10)
    assert generator.output_shape == (None, *shape)
    # Large latents push the pre-activation far from 0: the output still stays in [0, 1].
    z = 50.0 * np.random.default_rng(0).normal(size=(6, 10)).astype("float32")
    images = generator(z, training=False).numpy()
    assert images.shape == (6, *shape)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert images.std() > 0.0
    # Every stage is PyTorch's ConvTranspose2d(k5, s2, p2, output_padding=1).
    stages = int(np.log2(shape[0] // 4))
    for stage in range(1, stages + 1):
        assert generator.get_layer(f"up{stage}").kernel_size == (5, 5)
        assert generator.get_layer(f"up{stage}_crop").cropping == ((2, 1), (2, 1))


def test_generator_channels_count_from_the_output_side():
    generator = gan.dcgan_generator((32, 32, 1), base_channels=4)
    assert generator.get_layer("reshape").output.shape[1:] == (4, 4, 16)
    assert generator.get_layer("up1").filters == 8
    assert generator.get_layer("up2").filters == 4
    assert generator.get_layer("up3").filters == 1


def bn(channels):
    """Trainable parameters of a PyTorch BatchNorm / affine InstanceNorm: weight and bias."""
    return 2 * channels


def conv(c_in, c_out, k, bias=True):
    return c_in * c_out * k * k + (c_out if bias else 0)


def test_parameter_counts_at_64x64x3_match_the_reference_layers():
    # Generator(z_dim=100, dim=64): Linear(100, 8192, no bias) + BN1d(8192), three
    # ConvT(k5, no bias) + BN, ConvT(64 -> 3, k5, with bias).
    generator_count = (
        100 * 8192 + bn(8192)
        + conv(512, 256, 5, bias=False) + bn(256)
        + conv(256, 128, 5, bias=False) + bn(128)
        + conv(128, 64, 5, bias=False) + bn(64)
        + conv(64, 3, 5)
    )
    # DGWGAN(3, dim=64): conv5 3->64, 3 x [conv5 + IN(affine)], conv4 512->1.
    critic_count = (
        conv(3, 64, 5)
        + conv(64, 128, 5) + bn(128)
        + conv(128, 256, 5) + bn(256)
        + conv(256, 512, 5) + bn(512)
        + conv(512, 1, 4)
    )
    # MinibatchDiscriminator(n_classes=1000, dim=64): 3 x [conv5 + IN], conv3 256->256 + IN,
    # T of 4096 x 64 x 50, Linear(4096 + 64, 1000).
    discriminator_count = (
        conv(3, 64, 5) + bn(64)
        + conv(64, 128, 5) + bn(128)
        + conv(128, 256, 5) + bn(256)
        + conv(256, 256, 3) + bn(256)
        + 4096 * 64 * 50
        + 4160 * 1000 + 1000
    )

    def trainable(model):
        return sum(int(np.prod(w.shape)) for w in model.trainable_weights)

    assert trainable(gan.dcgan_generator((64, 64, 3))) == generator_count == 5_142_083
    assert trainable(gan.wgan_critic((64, 64, 3))) == critic_count
    discriminator = gan.minibatch_discriminator((64, 64, 3), 1000)
    assert trainable(discriminator) == discriminator_count
    assert discriminator.get_layer("features").output.shape == (None, 4096)


@pytest.mark.parametrize("shape", [(8, 8, 1), (32, 32, 1), (64, 64, 3)])
def test_critic_and_discriminator_output_shapes(shape):
    x = np.random.default_rng(0).uniform(size=(3, *shape)).astype("float32")
    critic = gan.wgan_critic(shape, base_channels=4)
    assert critic(x).shape == (3, 1)
    discriminator = gan.minibatch_discriminator(shape, 7, base_channels=4, kernels=5, kernel_dim=3)
    assert discriminator(x).shape == (3, 7)
    channels = 4 * min(2 ** max(int(np.log2(shape[0] // 4)) - 2, 0), 4)
    assert discriminator.get_layer("features").output.shape == (None, 16 * channels)


def test_critic_scores_each_image_alone_and_discriminator_mixes_the_batch():
    x = np.random.default_rng(0).uniform(size=(4, 16, 16, 1)).astype("float32")
    copies = np.repeat(x[:1], 4, axis=0)  # sample 0 among identical copies of itself
    critic = gan.wgan_critic((16, 16, 1), base_channels=4)
    # Another batch may take other kernels' summation orders: rounding of the network's sums.
    assert_float32_close(critic(copies)[0], critic(x)[0], largest_activation(critic, x),
                         sum_of_fan_ins(critic))
    discriminator = gan.minibatch_discriminator((16, 16, 1), 3, base_channels=4, kernels=5)
    # Among copies each minibatch feature is 3 (= N - 1); among distinct images it is ~0.
    assert not np.allclose(discriminator(copies)[0], discriminator(x)[0], atol=1e-3)


def test_minibatch_discrimination_matches_the_formula():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, 6)).astype("float32")
    projection = (0.3 * rng.normal(size=(6, 3 * 2))).astype("float32")
    layer = gan.MinibatchDiscrimination(kernels=3, kernel_dim=2)
    layer.build(features.shape)
    layer.set_weights([projection])
    m = (features @ projection).reshape(4, 3, 2)
    expected = np.zeros((4, 3))
    for i, b in itertools.product(range(4), range(3)):
        expected[i, b] = sum(np.exp(-np.abs(m[i, b] - m[j, b]).sum()) for j in range(4) if j != i)
    np.testing.assert_allclose(layer(features).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_minibatch_discrimination_init():
    layer = gan.MinibatchDiscrimination(kernels=4, kernel_dim=3, name="mbd")
    layer.build((None, 500))
    weights = layer.projection.numpy()
    assert weights.shape == (500, 12)
    assert abs(weights.mean()) < 0.05 and abs(weights.std() - 1.0) < 0.05  # N(0, 1)


BUILDERS = [
    lambda shape: gan.dcgan_generator(shape, base_channels=2),
    lambda shape: gan.wgan_critic(shape, base_channels=2),
    lambda shape: gan.minibatch_discriminator(shape, 3, base_channels=2),
]


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize(
    "shape", [(12, 12, 1), (16, 32, 1), (4, 4, 1), (16, 16), (16, 16, 0), (16.0, 16, 1), None]
)
def test_bad_image_shapes_are_rejected(build, shape):
    with pytest.raises(ValueError, match=r"`image_shape` must be \(side, side, channels\)"):
        build(shape)


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: gan.dcgan_generator((16, 16, 1), z_dim=0), "z_dim"),
        (lambda: gan.wgan_critic((16, 16, 1), base_channels=0), "base_channels"),
        (lambda: gan.minibatch_discriminator((16, 16, 1), 0), "num_classes"),
        (lambda: gan.minibatch_discriminator((16, 16, 1), 3, kernels=0), "kernels"),
    ],
)
def test_bad_sizes_are_rejected(build, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        build()
