"""PLG-MI prior: top-n selection, margin loss, augmentation and the cGAN trainer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trapmid_tf.attacks.plgmi_prior import (
    PLGMIPrior,
    color_jitter,
    hinge_discriminator_loss,
    margin_loss,
    plgmi_augment,
    select_top_n,
)
from trapmid_tf.models.cgan import resnet_generator, sn_projection_discriminator
from trapmid_tf.models.small_cnn import small_cnn
from tests.tolerances import float32_atol

SHAPE, CLASSES, Z_DIM = (16, 16, 1), 3, 8


# === Top-n selection ===


def linear_target(seed=0):
    """A fixed linear classifier: logits = flatten(x) @ W + b."""
    rng = np.random.default_rng(seed)
    model = keras.Sequential(
        [keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(CLASSES, name="logits")]
    )
    weights = rng.normal(size=(np.prod(SHAPE), CLASSES)).astype("float32")
    bias = rng.normal(size=CLASSES).astype("float32")
    model.get_layer("logits").set_weights([weights, bias])
    return model, weights, bias


def brute_force_top_n(images, weights, bias, n):
    logits = images.reshape(len(images), -1).astype("float64") @ weights + bias
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    indices = []
    for c in range(CLASSES):
        ranked = sorted(range(len(images)), key=lambda i: (-probabilities[i, c], i))
        indices.extend(ranked[:n])
    return np.array(indices)


def public_set(seed=0, size=20):
    images = np.random.default_rng(seed).uniform(size=(size, *SHAPE)).astype("float32")
    images[size // 2] = images[1]  # ties: equal probabilities, the lower index comes first
    images[-1] = images[1]
    return images


def test_select_top_n_matches_brute_force_with_ties():
    target, weights, bias = linear_target()
    public = public_set()
    images, labels = select_top_n(target, public, CLASSES, n=4, batch_size=6)
    expected = brute_force_top_n(public, weights, bias, 4)
    np.testing.assert_array_equal(images, public[expected])
    np.testing.assert_array_equal(labels, np.repeat(np.arange(CLASSES), 4))
    assert images.dtype == np.float32 and labels.dtype == np.int32


def test_select_top_n_keeps_an_image_for_several_classes():
    target, weights, bias = linear_target(seed=1)
    public = public_set(seed=1, size=5)
    images, _ = select_top_n(target, public, CLASSES, n=5)
    # With n equal to the public set, every class keeps every image, each in its own order.
    assert len(images) == 15
    np.testing.assert_array_equal(images, public[brute_force_top_n(public, weights, bias, 5)])


def test_select_top_n_takes_a_dataset_of_images():
    target, _, _ = linear_target()
    public = public_set()
    from_array = select_top_n(target, public, CLASSES, n=3)
    from_dataset = select_top_n(target, tf.data.Dataset.from_tensor_slices(public), CLASSES, n=3)
    for a, b in zip(from_array, from_dataset):
        np.testing.assert_array_equal(a, b)


def test_select_top_n_rejects_bad_arguments():
    target, _, _ = linear_target()
    public = public_set(size=5)
    with pytest.raises(ValueError, match="num_classes"):
        select_top_n(target, public, CLASSES + 1, n=2)
    with pytest.raises(ValueError, match="`n`"):
        select_top_n(target, public, CLASSES, n=6)
    with pytest.raises(ValueError, match="`n`"):
        select_top_n(target, public, CLASSES, n=0)


# === Losses ===


def test_margin_loss_by_hand():
    logits = np.array([[1.0, 3.0, 2.0], [0.0, -1.0, 5.0]], dtype="float32")
    labels = np.array([0, 2], dtype="int32")
    # Row 1: -1 + max(3, 2) = 2. Row 2: -5 + max(0, -1) = -5. Mean: -1.5.
    assert float(margin_loss(logits, labels)) == pytest.approx(-1.5)


def test_hinge_discriminator_loss_by_hand():
    real = np.array([2.0, 0.5], dtype="float32")  # relu(1 - D): 0, 0.5
    fake = np.array([-2.0, 0.0], dtype="float32")  # relu(1 + D): 0, 1
    assert float(hinge_discriminator_loss(real, fake)) == pytest.approx(0.25 + 0.5)


# === Augmentation ===


def test_brightness_multiplies_and_clips():
    images = np.random.default_rng(0).uniform(size=(2, 4, 4, 3)).astype("float32")
    factor = np.array([0.8, 1.2], dtype="float32")
    out = color_jitter(images, factor, np.ones(2, "float32"), np.array([True, False]))
    expected = np.clip(images * factor[:, None, None, None], 0.0, 1.0)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_contrast_blends_with_the_grey_mean():
    images = np.random.default_rng(1).uniform(0.3, 0.7, size=(2, 4, 4, 3)).astype("float32")
    factor = np.array([0.8, 1.2], dtype="float32")
    out = color_jitter(images, np.ones(2, "float32"), factor, np.array([True, False]))
    grey = 0.299 * images[..., 0] + 0.587 * images[..., 1] + 0.114 * images[..., 2]
    mean = grey.mean(axis=(1, 2))[:, None, None, None]
    expected = np.clip((images - mean) * factor[:, None, None, None] + mean, 0.0, 1.0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_jitter_order_is_per_image():
    # Bright images, so that brightness 1.2 clips: without clipping the two orders agree.
    images = np.random.default_rng(2).uniform(0.6, 1.0, size=(2, 3, 3, 1)).astype("float32")
    brightness, contrast = np.full(2, 1.2, "float32"), np.full(2, 0.8, "float32")

    def numpy_brightness(x):
        return np.clip(x * 1.2, 0.0, 1.0)

    def numpy_contrast(x):
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        return np.clip((x - mean) * 0.8 + mean, 0.0, 1.0)

    out = color_jitter(images, brightness, contrast, np.array([True, False])).numpy()
    np.testing.assert_allclose(out[0], numpy_contrast(numpy_brightness(images))[0], atol=1e-6)
    np.testing.assert_allclose(out[1], numpy_brightness(numpy_contrast(images))[1], atol=1e-6)
    assert np.abs(out[0] - numpy_brightness(numpy_contrast(images))[0]).max() > 1e-3


def test_jitter_gradient_by_hand():
    # One channel, no clipping: d/dx_i sum_j w_j ((x_j - m) c + m) = c w_i + (1 - c) mean(w).
    rng = np.random.default_rng(3)
    images = tf.constant(rng.uniform(0.4, 0.6, size=(1, 4, 4, 1)).astype("float32"))
    weights = rng.normal(size=(1, 4, 4, 1)).astype("float32")
    with tf.GradientTape() as tape:
        tape.watch(images)
        out = color_jitter(images, np.ones(1, "float32"), np.full(1, 0.9, "float32"), [True])
        loss = tf.reduce_sum(out * weights)
    expected = 0.9 * weights + 0.1 * weights.mean()
    np.testing.assert_allclose(tape.gradient(loss, images), expected, rtol=1e-5, atol=1e-6)


def test_plgmi_augment_jitter_probability_and_gradient():
    images = tf.fill((64, *SHAPE), 0.5)
    centre = (slice(None), SHAPE[0] // 2, SHAPE[1] // 2, 0)
    # Crop, flip and small rotations keep a constant image constant at the centre; contrast
    # leaves it unchanged, so only the brightness factor (U[0.8, 1.2]) can move it.
    plain = plgmi_augment(images, keras.random.SeedGenerator(0), jitter_probability=0.0)
    np.testing.assert_allclose(plain.numpy()[centre], 0.5, atol=1e-6)
    jittered = plgmi_augment(images, keras.random.SeedGenerator(0), jitter_probability=1.0)
    factors = jittered.numpy()[centre] / 0.5
    assert factors.min() >= 0.8 - 1e-5 and factors.max() <= 1.2 + 1e-5
    assert np.all(np.abs(factors - 1.0) > 1e-6) and factors.std() > 0.05

    x = tf.constant(np.random.default_rng(4).uniform(size=(4, *SHAPE)).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = plgmi_augment(x, keras.random.SeedGenerator(1))
        loss = tf.reduce_sum(out * tf.reshape(tf.range(256.0), (1, *SHAPE)))
    gradient = tape.gradient(loss, x).numpy()
    assert out.shape == x.shape and out.numpy().min() >= 0.0 and out.numpy().max() <= 1.0
    assert np.all(np.isfinite(gradient)) and np.all(np.abs(gradient).sum(axis=(1, 2, 3)) > 0)


def test_plgmi_augment_rejects_a_bad_probability():
    with pytest.raises(ValueError, match="jitter_probability"):
        plgmi_augment(tf.zeros((1, *SHAPE)), keras.random.SeedGenerator(0), 1.5)


# === The conditional GAN ===


def make_prior(n_dis=3, seed=0, frozen_generator=False):
    keras.utils.set_random_seed(seed)
    generator = resnet_generator(SHAPE, CLASSES, z_dim=Z_DIM, base_channels=4)
    generator.trainable = not frozen_generator
    discriminator = sn_projection_discriminator(SHAPE, CLASSES, base_channels=4)
    target = small_cnn(SHAPE, CLASSES, width=4)
    return PLGMIPrior(generator, discriminator, target, n_dis=n_dis, seed=seed)


def real_batch(size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(size, *SHAPE)).astype("float32")
    return images, (np.arange(size) % CLASSES).astype("int32")


@pytest.fixture(scope="module")
def trained():
    """A prior (n_dis=3) fitted for one epoch of seven batches, with its history and the
    generator weights it started from."""
    prior = make_prior(n_dis=3, seed=3)
    prior.compile()
    images, labels = real_batch(size=14)
    generator_before = [w.numpy() for w in prior.generator.trainable_weights]
    history = prior.fit(images, labels, batch_size=2, epochs=1, verbose=0).history
    return prior, history, generator_before


def test_generator_steps_every_n_dis_discriminator_steps(trained):
    prior, history, generator_before = trained
    # Seven D steps; G steps before D steps 0, 3 and 6.
    assert int(prior.optimizer.iterations) == 7
    assert int(prior.generator_optimizer.iterations) == 3
    assert any(
        not np.array_equal(a, b.numpy())
        for a, b in zip(generator_before, prior.generator.trainable_weights)
    )
    assert set(history) == {"discriminator_loss", "generator_loss", "margin_loss"}
    assert all(np.isfinite(v[-1]) for v in history.values())


def test_discriminator_hinge_loss_falls_with_the_generator_frozen():
    prior = make_prior(n_dis=2, frozen_generator=True)
    # A tiny spectrally normalised D learns slowly at the reference's 2e-4.
    prior.compile(discriminator_optimizer=keras.optimizers.Adam(3e-3))
    images, labels = real_batch()
    latents, fake_labels = prior.sample_conditions(16)
    fakes = prior.generator([latents, fake_labels], training=True)  # frozen: moving statistics
    real = [tf.constant(images), tf.constant(labels)]
    for _ in range(5):  # let the spectral-norm estimates settle before measuring
        prior.discriminator(real, training=True)

    def loss():
        return float(
            hinge_discriminator_loss(
                prior.discriminator(real, training=False),
                prior.discriminator([fakes, fake_labels], training=False),
            )
        )

    generator_before = [w.numpy() for w in prior.generator.weights]
    before = loss()
    prior.fit(images, labels, batch_size=16, epochs=30, verbose=0)
    after = loss()
    assert before > 1.5  # D starts near 0, where both hinge terms are about 1
    assert after < 0.5 * before
    assert int(prior.generator_optimizer.iterations) == 0
    for a, b in zip(generator_before, prior.generator.weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_keras_round_trip_resumes(tmp_path, trained):
    prior = trained[0]
    path = tmp_path / "prior.keras"
    prior.save(path)
    loaded = keras.models.load_model(path)

    assert isinstance(loaded, PLGMIPrior)
    assert (loaded.n_dis, loaded.inversion_weight, loaded.seed) == (3, 0.2, 3)
    for a, b in zip(prior.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for optimizer in ("optimizer", "generator_optimizer"):
        original, reloaded = getattr(prior, optimizer), getattr(loaded, optimizer)
        assert reloaded.get_config() == original.get_config()
        assert reloaded.beta_1 == 0.0 and reloaded.epsilon == 1e-8
        for a, b in zip(original.variables, reloaded.variables):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The random streams continue where they stopped.
    for a, b in zip(prior.sample_conditions(4), loaded.sample_conditions(4)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    z, y = prior.sample_conditions(4)
    np.testing.assert_allclose(loaded([z, y]), prior([z, y]), rtol=1e-6)


def test_bad_arguments_raise():
    prior = make_prior()
    with pytest.raises(ValueError, match="metrics"):
        prior.compile(metrics=["accuracy"])
    adam = keras.optimizers.Adam()
    with pytest.raises(ValueError, match="different"):
        prior.compile(generator_optimizer=adam, discriminator_optimizer=adam)
    wrong_size = small_cnn((32, 32, 1), CLASSES, width=4)
    with pytest.raises(ValueError, match="image shape"):
        PLGMIPrior(prior.generator, prior.discriminator, wrong_size)
    with pytest.raises(ValueError, match="classes"):
        PLGMIPrior(prior.generator, prior.discriminator, small_cnn(SHAPE, CLASSES + 1, width=4))
    with pytest.raises(ValueError, match="n_dis"):
        PLGMIPrior(prior.generator, prior.discriminator, prior.target, n_dis=0)
    prior.compile()
    images, labels = real_batch(size=4)
    with pytest.raises(ValueError, match="pseudo_labels"):
        prior.fit(images, labels.astype("float32"), batch_size=4, verbose=0)


@pytest.mark.parametrize("optimizer", ["default", "keras_adam"])
def test_prior_update_sums_a_repeated_class_before_the_second_moment(optimizer):
    """A class drawn twice in a batch enters Adam's second moment as `(g1 + g2)^2`, as with
    PyTorch's dense `nn.Embedding` gradient, not as `g1^2 + g2^2` (Keras's Adam on the sparse
    slices), for the default optimiser and for a Keras Adam given to `compile`."""
    prior = make_prior()
    embedding = keras.Sequential([
        keras.Input((), dtype="int32"),
        keras.layers.Embedding(3, 2, embeddings_initializer="zeros"),
    ])
    labels = tf.constant([1, 1, 0])
    coefficients = tf.constant([[1.0, -2.0], [3.0, 0.5], [-1.0, 1.0]])

    def losses():
        return {"generator_loss": tf.reduce_sum(embedding(labels) * coefficients)}

    with tf.GradientTape() as tape:
        loss = losses()["generator_loss"]
    assert isinstance(tape.gradient(loss, embedding.trainable_variables[0]), tf.IndexedSlices)
    # Dense gradient: row 1 = (1, -2) + (3, 0.5), row 0 = (-1, 1), row 2 = 0. At the first
    # step both Adams move a row by lr * g / (|g| + epsilon'), with PyTorch's epsilon' =
    # epsilon and Keras's epsilon' = epsilon / sqrt(1 - beta_2) (its epsilon is added before
    # the bias correction). Slice by slice, row 1's first entry would move by
    # lr * 4 / sqrt(1 + 9) = 1.26 lr instead.
    gradient = np.array([[-1.0, 1.0], [4.0, -1.5], [0.0, 0.0]])
    if optimizer == "default":
        adam = prior._default_optimizer()
        learning_rate, effective_epsilon = 2e-4, 1e-8
    else:
        # beta_2 = 1 - 2^-10 is exact in float32, through which Keras casts it: 0.999 would
        # lose 1e-5 of 1 - beta_2 to the cast.
        beta_2 = 1 - 2.0**-10
        adam = keras.optimizers.Adam(0.1, beta_1=0.5, beta_2=beta_2, epsilon=1e-8)
        learning_rate, effective_epsilon = 0.1, 1e-8 / np.sqrt(1 - beta_2)
    prior._update(adam, embedding, "generator_loss", losses)
    expected = -learning_rate * gradient / (np.abs(gradient) + effective_epsilon)
    # About 10 float32 roundings (moments, square root, corrections, division) of values up
    # to the step, lr.
    np.testing.assert_allclose(embedding.get_weights()[0], expected, rtol=0,
                               atol=float32_atol(learning_rate, 10))
