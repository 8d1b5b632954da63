"""PLG-MI conditional GAN: conditional BN, SN-Embedding, generator and projection discriminator."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trapmid_tf.models.cgan import (
    ConditionalBatchNorm,
    ResNetGenerator,
    SNEmbedding,
    resnet_generator,
    sn_projection_discriminator,
)
from tests.tolerances import assert_float32_close

SHAPE, CLASSES, Z_DIM = (16, 16, 1), 3, 8


def conditions(batch=8, seed=0):
    rng = np.random.default_rng(seed)
    z = tf.constant(rng.normal(size=(batch, Z_DIM)).astype("float32"))
    y = tf.constant(np.arange(batch) % CLASSES, dtype=tf.int32)
    return z, y


def randomize_condition_tables(generator, seed=0):
    rng = np.random.default_rng(seed)
    for layer in generator.layers:
        if isinstance(layer, ConditionalBatchNorm):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype("float32"))
            layer.beta.assign(rng.normal(size=layer.beta.shape).astype("float32"))


# === ConditionalBatchNorm ===


def test_conditional_batch_norm_matches_numpy_and_starts_as_plain_bn():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(6, 3, 3, 2)).astype("float32")
    y = np.array([0, 1, 2, 3, 1, 0], dtype="int32")
    layer = ConditionalBatchNorm(4)
    layer([tf.constant(x), tf.constant(y)])  # builds
    np.testing.assert_array_equal(layer.gamma.numpy(), np.ones((4, 2)))
    np.testing.assert_array_equal(layer.beta.numpy(), np.zeros((4, 2)))
    gamma = rng.uniform(0.5, 2.0, (4, 2)).astype("float32")
    beta = rng.normal(size=(4, 2)).astype("float32")
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)

    out = layer([tf.constant(x), tf.constant(y)], training=True).numpy()

    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))  # biased batch variance
    expected = (x - mean) / np.sqrt(var + 1e-5) * gamma[y][:, None, None] + beta[y][:, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    # Moving statistics follow PyTorch's momentum 0.1 (Keras momentum 0.9).
    # The batch mean sums 54 values per channel (then a division and the momentum update).
    assert_float32_close(layer.batch_norm.moving_mean.numpy(), 0.1 * mean,
                         magnitude=0.1 * np.abs(x).max(), roundings=54 + 3)
    out = layer([tf.constant(x), tf.constant(y)], training=False).numpy()
    moving_mean = layer.batch_norm.moving_mean.numpy()
    moving_var = layer.batch_norm.moving_variance.numpy()
    normalized = (x - moving_mean) / np.sqrt(moving_var + 1e-5)
    expected = normalized * gamma[y][:, None, None] + beta[y][:, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


# === SNEmbedding ===


def build_sn_embedding(seed=0, classes=5, dim=7):
    layer = SNEmbedding(classes, dim)
    layer.build((None,))
    rng = np.random.default_rng(seed)
    layer.embeddings.assign(rng.normal(size=(classes, dim)).astype("float32"))
    return layer


def numpy_power_iteration(weights, u):
    v = weights.T @ u
    v /= np.linalg.norm(v)
    new_u = weights @ v
    new_u /= np.linalg.norm(new_u)
    return new_u, v, new_u @ weights @ v


def test_sn_embedding_is_one_power_iteration_and_updates_u_only_in_training():
    layer = build_sn_embedding()
    weights = layer.embeddings.numpy().astype("float64")
    u = layer.vector_u.numpy().astype("float64")
    labels = tf.constant([3, 0, 3])
    new_u, _, sigma = numpy_power_iteration(weights, u)

    out = layer(labels, training=False).numpy()

    # sigma = u.W v from float32 sums of 7 and 5 terms after two normalisations (about 30
    # roundings), then one division: relative error of the rows' largest entry.
    expected = weights[[3, 0, 3]] / sigma
    assert_float32_close(out, expected, np.abs(expected).max(), roundings=30)
    np.testing.assert_array_equal(layer.vector_u.numpy(), u.astype("float32"))
    layer(labels, training=True)
    np.testing.assert_allclose(layer.vector_u.numpy(), new_u, rtol=1e-5, atol=1e-6)


def test_sn_embedding_table_reaches_spectral_norm_one():
    layer = build_sn_embedding(seed=1)
    all_classes = tf.range(5)
    for _ in range(50):
        layer(all_classes, training=True)
    table = layer(all_classes, training=False).numpy()
    assert np.linalg.svd(table, compute_uv=False)[0] == pytest.approx(1.0, abs=1e-4)
    assert np.linalg.svd(layer.embeddings.numpy(), compute_uv=False)[0] > 1.5  # W itself is not


def test_sn_embedding_gradient_flows_through_sigma():
    # L = sum(W[y] / sigma), sigma = u'^T W v with u', v constant:
    # dL/dW = e_y 1^T / sigma - sum(W[y]) / sigma^2 * u' v^T.
    layer = build_sn_embedding(seed=2)
    weights = layer.embeddings.numpy().astype("float64")
    new_u, v, sigma = numpy_power_iteration(weights, layer.vector_u.numpy().astype("float64"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(tf.constant([2]), training=False))
    gradient = tf.convert_to_tensor(tape.gradient(loss, layer.embeddings)).numpy()
    expected = -weights[2].sum() / sigma**2 * np.outer(new_u, v)
    expected[2] += 1.0 / sigma
    np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-6)


# === Generator ===


@pytest.fixture(scope="module")
def generator():
    return resnet_generator(SHAPE, CLASSES, z_dim=Z_DIM, base_channels=4)


def test_generator_shapes_range_and_attributes(generator):
    z, y = conditions()
    images = generator([z, y], training=True).numpy()
    assert images.shape == (8, *SHAPE)
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.std() > 0.0
    attributes = (generator.z_dim, generator.num_classes, generator.image_shape)
    assert attributes == (Z_DIM, CLASSES, SHAPE)
    # 16 = 4 * 2**2: two up-blocks; widths 4c at 4x4, 2c at 8x8, c at 16x16.
    assert generator.get_layer("reshape").output.shape[1:] == (4, 4, 16)
    assert generator.get_layer("block1_add").output.shape[1:] == (8, 8, 8)
    assert generator.get_layer("block2_add").output.shape[1:] == (16, 16, 4)
    with pytest.raises(ValueError):
        generator.get_layer("block3_add")


def block_widths(model, blocks):
    return [model.get_layer(f"block{i}_add").output.shape[-1] for i in range(1, blocks + 1)]


def test_widths_at_64_are_the_reference_and_cap_at_16_above():
    generator = resnet_generator((64, 64, 3), 2, z_dim=4, base_channels=1)
    assert generator.get_layer("reshape").output.shape[-1] == 16
    assert block_widths(generator, 4) == [8, 4, 2, 1]
    assert generator.output_shape == (None, 64, 64, 3)
    discriminator = sn_projection_discriminator((64, 64, 3), 2, base_channels=1)
    assert block_widths(discriminator, 5) == [1, 2, 4, 8, 16]
    assert discriminator.get_layer("block5_add").output.shape[1:3] == (2, 2)
    generator = resnet_generator((128, 128, 1), 2, z_dim=4, base_channels=1)
    assert generator.get_layer("reshape").output.shape[-1] == 16
    assert block_widths(generator, 5) == [16, 8, 4, 2, 1]
    discriminator = sn_projection_discriminator((128, 128, 1), 2, base_channels=1)
    assert block_widths(discriminator, 6) == [1, 2, 4, 8, 16, 16]


def test_labels_only_matter_once_the_class_tables_differ():
    generator = resnet_generator(SHAPE, CLASSES, z_dim=Z_DIM, base_channels=4)
    z, _ = conditions(batch=8)
    same_z = tf.repeat(z[:1], 8, axis=0)
    zeros, ones = tf.zeros(8, tf.int32), tf.ones(8, tf.int32)
    # Gamma = 1 and beta = 0 for every class at initialisation.
    np.testing.assert_allclose(
        generator([same_z, zeros], training=False), generator([same_z, ones], training=False)
    )
    randomize_condition_tables(generator)
    difference = generator([same_z, zeros], training=False) - generator(
        [same_z, ones], training=False
    )
    assert np.abs(difference.numpy()).max() > 1e-3


@pytest.mark.parametrize("shape", [(12, 12, 1), (16, 32, 1), (4, 4, 1), (24, 24, 3)])
def test_bad_image_shapes_raise(shape):
    with pytest.raises(ValueError, match="image_shape"):
        resnet_generator(shape, CLASSES)
    with pytest.raises(ValueError, match="image_shape"):
        sn_projection_discriminator(shape, CLASSES)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="z_dim"):
        resnet_generator(SHAPE, CLASSES, z_dim=0)
    with pytest.raises(ValueError, match="num_classes"):
        sn_projection_discriminator(SHAPE, 0)


# === Discriminator ===


@pytest.fixture(scope="module")
def discriminator():
    return sn_projection_discriminator(SHAPE, CLASSES, base_channels=2)


def test_discriminator_shapes_and_widths(discriminator):
    images = tf.random.uniform((8, *SHAPE), seed=1)
    _, y = conditions()
    assert discriminator([images, y], training=True).shape == (8, 1)
    # 16 -> 8 (optimised block) -> 4 -> 2, widths c, 2c, 4c.
    assert discriminator.get_layer("block1_add").output.shape[1:] == (8, 8, 2)
    assert discriminator.get_layer("block2_add").output.shape[1:] == (4, 4, 4)
    assert discriminator.get_layer("block3_add").output.shape[1:] == (2, 2, 8)
    assert discriminator.get_layer("features").output.shape[1:] == (8,)


def test_discriminator_is_linear_plus_projection(discriminator):
    rng = np.random.default_rng(3)
    embedding = discriminator.get_layer("projection_embedding")
    embedding.embeddings.assign(rng.normal(size=embedding.embeddings.shape).astype("float32"))
    embedding.vector_u.assign(rng.normal(size=embedding.vector_u.shape).astype("float32"))
    images = tf.constant(rng.uniform(size=(8, *SHAPE)).astype("float32"))
    y = tf.constant([2, 0, 1, 1, 2, 0, 0, 2], dtype=tf.int32)
    features_model = keras.Model(discriminator.inputs, discriminator.get_layer("features").output)
    features = features_model([images, y], training=False).numpy().astype("float64")
    block_output = keras.Model(discriminator.inputs, discriminator.get_layer("block3_add").output)
    # The feature is the sum over the final 2x2 positions after ReLU.
    np.testing.assert_allclose(
        features,
        np.maximum(block_output([images, y]).numpy(), 0.0).sum(axis=(1, 2)),
        rtol=1e-5,
        atol=1e-6,
    )
    dense = discriminator.get_layer("linear").layer
    weights = embedding.embeddings.numpy().astype("float64")
    _, _, sigma = numpy_power_iteration(weights, embedding.vector_u.numpy().astype("float64"))

    scores = discriminator([images, y], training=False).numpy()

    linear = features @ dense.kernel.numpy() + dense.bias.numpy()
    projection = np.sum(weights[y.numpy()] / sigma * features, axis=1, keepdims=True)
    np.testing.assert_allclose(scores, linear + projection, rtol=1e-4, atol=1e-5)


def test_discriminator_layers_are_spectrally_normalised(discriminator):
    wrapped = [
        layer
        for layer in discriminator.layers
        if isinstance(layer, keras.layers.SpectralNormalization)
    ]
    convs_and_dense = [
        layer
        for layer in discriminator._flatten_layers(include_self=False)
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
    ]
    assert len(wrapped) == len(convs_and_dense) == 3 * 3 + 1  # 3 blocks x 3 convs + linear
    assert all(layer.power_iterations == 1 for layer in wrapped)


# === Saving ===


def test_generator_and_discriminator_keras_round_trip(tmp_path, generator, discriminator):
    z, y = conditions()
    images = generator([z, y], training=False)
    generator_path, discriminator_path = tmp_path / "g.keras", tmp_path / "d.keras"
    generator.save(generator_path)
    discriminator.save(discriminator_path)
    loaded_generator = keras.models.load_model(generator_path)
    loaded_discriminator = keras.models.load_model(discriminator_path)
    assert isinstance(loaded_generator, ResNetGenerator)
    assert loaded_generator.get_config() == generator.get_config()
    np.testing.assert_allclose(loaded_generator([z, y], training=False), images, rtol=1e-6)
    np.testing.assert_allclose(
        loaded_discriminator([images, y], training=False),
        discriminator([images, y], training=False),
        rtol=1e-6,
    )
