"""GMI and KED-MI priors: losses, n_critic schedule, learning direction, saving, bad input."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trapmid_tf import data
from trapmid_tf.attacks import priors
from trapmid_tf.attacks.priors import GMIPrior, KEDMIPrior
from trapmid_tf.models import gan
from trapmid_tf.models.small_cnn import small_cnn
from tests.numpy_reference import log_softmax
from tests.tolerances import assert_float32_close, float32_atol, largest_activation, sum_of_fan_ins

SHAPE, Z_DIM, CLASSES = (16, 16, 1), 8, 4


@pytest.fixture(scope="module")
def digits():
    """The public digits images at 16x16: structured images in [0, 1]."""
    _, public = data.load("digits", image_size=SHAPE[0])
    return np.stack(list(public.as_numpy_iterator()))


def linear_target(scale=1.0):
    """A fixed classifier images -> CLASSES logits whose softmax is far from uniform."""
    inputs = keras.Input(SHAPE)
    flat = keras.layers.Flatten()(inputs)
    init = keras.initializers.RandomNormal(0.0, scale)
    return keras.Model(inputs, keras.layers.Dense(CLASSES, kernel_initializer=init)(flat))


def make_gmi(n_critic=5, seed=0, shape=SHAPE):
    return GMIPrior(
        gan.dcgan_generator(shape, z_dim=Z_DIM, base_channels=4),
        gan.wgan_critic(shape, base_channels=4),
        n_critic=n_critic,
        seed=seed,
    )


def make_kedmi(n_critic=5, seed=0, target=None):
    return KEDMIPrior(
        gan.dcgan_generator(SHAPE, z_dim=Z_DIM, base_channels=4),
        gan.minibatch_discriminator(SHAPE, CLASSES, base_channels=4, kernels=6, kernel_dim=3),
        target if target is not None else linear_target(),
        n_critic=n_critic,
        seed=seed,
    )


MAKERS = {"gmi": make_gmi, "kedmi": make_kedmi}


def adam(learning_rate=5e-3):
    return keras.optimizers.Adam(learning_rate, beta_1=0.5)


def frozen():
    """An optimizer that counts steps but never changes a weight."""
    return keras.optimizers.SGD(0.0)


def LOSS_ATOL(*logits):  # noqa: N802 (reads as the constant it stands for)
    """Rounding of a float32 loss over rows of CLASSES logits: log-softmax (max, CLASSES exps,
    a sum, a log, a subtraction), a weighted sum over CLASSES and a mean over the rows, at the
    magnitude of the logits' log-probabilities."""
    magnitude = max(np.abs(log_softmax(np.asarray(a, "float64"))).max() + np.abs(a).max()
                    for a in logits)
    return float32_atol(magnitude, roundings=3 * CLASSES + 8 + len(logits[0]))


def values(variables):
    return [v.numpy().copy() for v in variables]


def assert_same(a, b, **tolerance):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, **tolerance)


# === Losses against formulas ===


def test_gradient_penalty_of_a_linear_critic_is_the_norm_of_its_weights():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(int(np.prod(SHAPE)), 1)).astype("float32") * 0.1
    critic = keras.Sequential(
        [keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(1, use_bias=False)]
    )
    critic.layers[-1].set_weights([w])
    real, fake = rng.uniform(size=(2, 5, *SHAPE)).astype("float32")
    mix = rng.uniform(size=(5, 1, 1, 1)).astype("float32")
    terms = priors.gradient_penalty(critic, real, fake, mix).numpy()
    # D(x) = w.x has input gradient w everywhere: every term is (||w|| - 1)^2.
    expected = (np.linalg.norm(w) - 1.0) ** 2
    # ||w||^2 sums 256 float32 squares; then a square root, a subtraction and a square: the
    # error of ||w|| (256 roundings of terms <= ||w||^2) is doubled by the final square.
    norm = np.linalg.norm(w)
    tolerance = dict(magnitude=2 * abs(norm - 1.0) * norm + norm**2, roundings=256 + 4)
    assert_float32_close(terms, np.full(5, expected), **tolerance)
    assert_float32_close(10.0 * terms.mean(), 10.0 * expected, magnitude=10.0 * tolerance[
        "magnitude"], roundings=tolerance["roundings"] + 5)


def test_gradient_penalty_is_taken_at_the_interpolated_images():
    rng = np.random.default_rng(1)
    real, fake = rng.uniform(size=(2, 3, *SHAPE)).astype("float32")
    mix = np.array([0.0, 0.3, 1.0], "float32").reshape(3, 1, 1, 1)
    # D(x) = sum(x^2) has gradient 2x: the term is (2 ||x_hat|| - 1)^2.
    inputs = keras.Input(SHAPE)
    critic = keras.Model(inputs, keras.ops.sum(inputs**2, axis=(1, 2, 3))[:, None])
    terms = priors.gradient_penalty(critic, real, fake, mix).numpy()
    x_hat = real + mix * (fake - real)
    expected = (2.0 * np.linalg.norm(x_hat.reshape(3, -1), axis=1) - 1.0) ** 2
    # As above: the interpolation (3 roundings per pixel), a sum of 256 squares, and the
    # final square doubling the norm's error.
    norm = 2.0 * np.linalg.norm(x_hat.reshape(3, -1), axis=1).max()
    assert_float32_close(terms, expected, magnitude=2 * norm * (norm + 1), roundings=256 + 8)


def test_kedmi_losses_match_their_formulas():
    rng = np.random.default_rng(2)
    a, b, real, fake = 3.0 * rng.normal(size=(4, 6, CLASSES))
    np.testing.assert_allclose(
        priors._soft_cross_entropy(a, b),
        -np.mean(np.sum(np.exp(log_softmax(b)) * log_softmax(a), axis=1)),
        rtol=0, atol=LOSS_ATOL(a, b),
    )
    # The semi-supervised loss written with an explicit (K+1)-th "fake" logit fixed at 0.

    def p_fake(logits):
        return np.exp(log_softmax(np.concatenate([logits, np.zeros((6, 1))], axis=1)))[:, -1]

    expected = 0.5 * (np.mean(-np.log(1.0 - p_fake(real))) + np.mean(-np.log(p_fake(fake))))
    np.testing.assert_allclose(priors._unlabeled_loss(real, fake), expected, rtol=0,
                               atol=LOSS_ATOL(real, fake))
    np.testing.assert_allclose(
        priors._feature_matching_loss(real, fake),
        np.mean(np.abs(fake.mean(axis=0) - real.mean(axis=0))),
        rtol=0, atol=LOSS_ATOL(real, fake),
    )
    p = np.exp(log_softmax(fake))
    np.testing.assert_allclose(priors._entropy_sum(fake), -np.sum(p * np.log(p)), rtol=0,
                               atol=6 * LOSS_ATOL(fake))  # a sum over 6 images, not a mean


def test_kedmi_step_uses_the_frozen_target_in_inference_mode():
    keras.utils.set_random_seed(0)
    # A target with batch norm: inference mode (moving statistics) and training mode (batch
    # statistics) give different logits, so the logged loss tells which mode was used.
    target = small_cnn(SHAPE, CLASSES, width=4)
    prior = make_kedmi(target=target)
    prior.compile(run_eagerly=True)
    x = np.random.default_rng(3).uniform(size=(8, *SHAPE)).astype("float32")
    training_logits = target(x, training=True).numpy()  # (this moves the moving statistics)
    target_before = values(target.weights)
    target_logits = target(x, training=False).numpy()
    assert not np.allclose(training_logits, target_logits, atol=1e-3)
    logits = prior.discriminator(x, training=True).numpy()
    logs = prior.fit(x, batch_size=8, epochs=1, verbose=0).history
    expected = -np.mean(np.sum(np.exp(log_softmax(target_logits)) * log_softmax(logits), axis=1))
    # Logits of the float32 networks (x64 inputs only change the last rounding) and then
    # the soft cross-entropy's roundings, as LOSS_ATOL counts them.
    # A logit error d moves the loss by at most (2 + max |log q|) d.
    network = float32_atol(largest_activation(target, x), sum_of_fan_ins(target))
    sensitivity = 2 + np.abs(log_softmax(logits.astype("float64"))).max()
    np.testing.assert_allclose(logs["labeled_loss"][0], expected, rtol=0,
                               atol=LOSS_ATOL(logits, target_logits) + sensitivity * network)
    agreement = np.mean(logits.argmax(1) == target_logits.argmax(1))
    np.testing.assert_allclose(logs["accuracy"][0], agreement)
    assert_same(values(target.weights), target_before, rtol=0, atol=0)


# === The n_critic schedule ===


def test_generator_steps_every_n_critic_steps_in_the_compiled_step():
    # The schedule is shared code; KEDMIPrior's compiled step is run in the strategy test.
    keras.utils.set_random_seed(0)
    shape = (8, 8, 1)  # the smallest networks: this test traces the step
    prior = make_gmi(n_critic=3, shape=shape)
    prior.compile()
    assert not prior.run_eagerly
    x = np.random.default_rng(0).uniform(size=(16, *shape)).astype("float32")
    generator_before = values(prior.generator.trainable_variables)
    prior.fit(x, batch_size=8, epochs=1, verbose=0)  # steps 1, 2: no generator step
    assert int(prior.generator_optimizer.iterations.numpy()) == 0
    assert_same(values(prior.generator.trainable_variables), generator_before, rtol=0, atol=0)
    assert prior.get_metrics_result()["generator_loss"] == 0.0
    prior.fit(x, batch_size=8, epochs=3, verbose=0)  # steps 3..8: generator steps at 3 and 6
    assert int(prior.optimizer.iterations.numpy()) == 8
    assert int(prior.generator_optimizer.iterations.numpy()) == 2


def test_schedule_and_latents_under_a_two_replica_strategy(two_replicas):
    strategy = two_replicas
    shape = (8, 8, 1)  # the smallest networks: this test traces the step on two replicas
    with strategy.scope():
        prior = KEDMIPrior(
            gan.dcgan_generator(shape, z_dim=Z_DIM, base_channels=2),
            gan.minibatch_discriminator(shape, 2, base_channels=2, kernels=2, kernel_dim=2),
            keras.Sequential([keras.Input(shape), keras.layers.Flatten(), keras.layers.Dense(2)]),
            n_critic=2,
        )
        prior.compile()
    x = np.random.default_rng(0).uniform(size=(24, *shape)).astype("float32")
    logs = prior.fit(x, batch_size=8, epochs=1, verbose=0).history
    assert int(prior.optimizer.iterations.numpy()) == 3
    assert int(prior.generator_optimizer.iterations.numpy()) == 1
    assert all(np.isfinite(v[0]) for v in logs.values())
    # Each replica draws its own latents.
    latents = strategy.run(lambda: prior._latents(4))
    first, second = strategy.experimental_local_results(latents)
    assert not np.allclose(first.numpy(), second.numpy())


# === Learning direction, on digits ===


def wasserstein(prior, real, latents):
    fake = prior.generator(latents, training=True)
    return float(np.mean(prior.critic(real)) - np.mean(prior.critic(fake)))


def test_gmi_critic_learns_to_separate_real_from_generated(digits):
    keras.utils.set_random_seed(0)
    prior = make_gmi(n_critic=10**6)  # the generator never moves
    prior.compile(critic_optimizer=adam(), run_eagerly=True)
    real, latents = digits[:64], np.random.default_rng(0).normal(size=(64, Z_DIM))
    before = wasserstein(prior, real, latents.astype("float32"))
    prior.fit(digits[64:192], batch_size=32, epochs=1, verbose=0, shuffle=False)
    after = wasserstein(prior, real, latents.astype("float32"))
    # On held-out images and fixed latents, the Wasserstein estimate grows by a wide margin
    # (a critic stepping the wrong way would shrink it).
    assert after > before + 0.5, (before, after)
    assert int(prior.generator_optimizer.iterations.numpy()) == 0


def test_gmi_generator_raises_the_frozen_critics_scores(digits):
    keras.utils.set_random_seed(0)
    prior = make_gmi(n_critic=1)
    prior.compile(generator_optimizer=adam(), critic_optimizer=frozen(), run_eagerly=True)
    latents = np.random.default_rng(0).normal(size=(64, Z_DIM)).astype("float32")

    def generator_loss():
        return -float(np.mean(prior.critic(prior.generator(latents, training=True))))

    before, critic_before = generator_loss(), values(prior.critic.weights)
    prior.fit(digits[:128], batch_size=32, epochs=1, verbose=0, shuffle=False)
    assert generator_loss() < before - 0.2, (before, generator_loss())
    assert_same(values(prior.critic.weights), critic_before, rtol=0, atol=0)


def test_kedmi_discriminator_learns_the_target_and_realness(digits):
    keras.utils.set_random_seed(0)
    prior = make_kedmi(n_critic=10**6, target=linear_target(scale=0.5))
    prior.compile(discriminator_optimizer=adam(), run_eagerly=True)
    real = digits[:32]
    latents = np.random.default_rng(0).normal(size=(32, Z_DIM)).astype("float32")

    def losses():
        logits = prior.discriminator(real)
        fake_logits = prior.discriminator(prior.generator(latents, training=True))
        labeled = priors._soft_cross_entropy(logits, prior.target(real))
        return float(labeled), float(priors._unlabeled_loss(logits, fake_logits))

    (labeled_before, unlabeled_before) = losses()
    prior.fit(digits[64:192], batch_size=32, epochs=1, verbose=0, shuffle=False)
    labeled_after, unlabeled_after = losses()
    assert labeled_after < 0.85 * labeled_before, (labeled_before, labeled_after)
    assert unlabeled_after < 0.9 * unlabeled_before, (unlabeled_before, unlabeled_after)


def test_kedmi_generator_matches_the_frozen_discriminators_features(digits):
    keras.utils.set_random_seed(0)
    prior = make_kedmi(n_critic=1)
    prior.compile(generator_optimizer=adam(), discriminator_optimizer=frozen(), run_eagerly=True)
    real = digits[:32]
    latents = np.random.default_rng(0).normal(size=(32, Z_DIM)).astype("float32")
    feature_model = keras.Model(
        prior.discriminator.input, prior.discriminator.get_layer("features").output
    )

    def feature_gap():
        fake_features = feature_model(prior.generator(latents, training=True)).numpy()
        return float(np.mean(np.abs(fake_features.mean(0) - feature_model(real).numpy().mean(0))))

    before, discriminator_before = feature_gap(), values(prior.discriminator.weights)
    prior.fit(digits[64:192], batch_size=32, epochs=1, verbose=0, shuffle=False)
    assert feature_gap() < 0.85 * before, (before, feature_gap())
    assert_same(values(prior.discriminator.weights), discriminator_before, rtol=0, atol=0)


# === Saving and resuming ===


@pytest.mark.parametrize("kind", ["gmi", "kedmi"])
def test_save_load_resumes_with_the_same_next_step(kind, tmp_path):
    keras.utils.set_random_seed(0)
    prior = MAKERS[kind](n_critic=2, seed=3)
    prior.compile(generator_optimizer=adam(1e-3), run_eagerly=True)
    x = np.random.default_rng(0).uniform(size=(24, *SHAPE)).astype("float32")
    prior.fit(x, batch_size=8, epochs=1, verbose=0, shuffle=False)  # steps 1-3
    path = str(tmp_path / "prior.keras")
    prior.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(prior)
    assert loaded.get_config()["n_critic"] == 2 and loaded.seed == 3
    assert float(loaded.generator_optimizer.learning_rate.numpy()) == pytest.approx(1e-3)
    assert_same(values(loaded.weights), values(prior.weights), rtol=0, atol=0)
    loaded.run_eagerly = True
    # Step 4 is a generator step; both draw the same latents and make the same updates.
    for model in (prior, loaded):
        model.fit(x[:8], batch_size=8, epochs=1, verbose=0)
        assert int(model.optimizer.iterations.numpy()) == 4
        assert int(model.generator_optimizer.iterations.numpy()) == 2
    assert_same(values(loaded.weights), values(prior.weights), rtol=1e-5, atol=1e-6)


# === Data ===


def test_kedmi_batches_are_three_independent_shuffles():
    images = np.arange(12, dtype="float32").reshape(12, 1, 1, 1) / 12.0
    labels = np.zeros(12, "int32")
    public = tf.data.Dataset.from_tensor_slices((images, labels))
    batches = list(priors.kedmi_batches(public, 4, seed=0).as_numpy_iterator())
    assert len(batches) == 3
    orders = {}
    for key in priors.KEDMI_BATCH_KEYS:
        order = np.concatenate([batch[key] for batch in batches]).ravel()
        np.testing.assert_array_equal(np.sort(order), images.ravel())  # one pass each
        orders[key] = tuple(order)
    assert len(set(orders.values())) == 3


def test_kedmi_accepts_dict_batches_and_rejects_missing_keys():
    prior = make_kedmi(n_critic=1)
    prior.compile(run_eagerly=True)
    x = np.random.default_rng(0).uniform(size=(8, *SHAPE)).astype("float32")
    public = tf.data.Dataset.from_tensor_slices(x)
    prior.fit(priors.kedmi_batches(public, 8, seed=0), epochs=1, verbose=0)
    assert int(prior.generator_optimizer.iterations.numpy()) == 1
    with pytest.raises(ValueError, match="missing"):
        prior.fit(tf.data.Dataset.from_tensors({"images": x, "unlabeled": x}), verbose=0)


# === Bad input ===


def test_bad_networks_are_rejected():
    generator = gan.dcgan_generator(SHAPE, z_dim=Z_DIM, base_channels=4)
    critic = gan.wgan_critic(SHAPE, base_channels=4)
    discriminator = gan.minibatch_discriminator(SHAPE, CLASSES, base_channels=4, kernels=2)
    with pytest.raises(ValueError, match="`generator` must be a keras.Model"):
        GMIPrior("generator", critic)
    with pytest.raises(ValueError, match="`generator` must map latent vectors"):
        GMIPrior(critic, critic)
    with pytest.raises(ValueError, match=r"`critic` must take images of the generator's shape"):
        GMIPrior(generator, gan.wgan_critic((32, 32, 1), base_channels=4))
    with pytest.raises(ValueError, match="`critic` must output 1 value"):
        GMIPrior(generator, discriminator)
    with pytest.raises(ValueError, match="`n_critic`"):
        GMIPrior(generator, critic, n_critic=0)
    with pytest.raises(ValueError, match="`gradient_penalty_weight`"):
        GMIPrior(generator, critic, gradient_penalty_weight=-1.0)
    with pytest.raises(ValueError, match=f"`target` must output {CLASSES} value"):
        KEDMIPrior(generator, discriminator, small_cnn(SHAPE, CLASSES + 1, width=2))
    with pytest.raises(ValueError, match="`entropy_weight`"):
        KEDMIPrior(generator, discriminator, linear_target(), entropy_weight=-1.0)


def test_bad_compile_arguments_are_rejected():
    prior = make_gmi()
    with pytest.raises(ValueError, match="does not take `loss`"):
        prior.compile(loss="mse")
    optimizer = adam()
    with pytest.raises(ValueError, match="two different optimizer objects"):
        prior.compile(generator_optimizer=optimizer, critic_optimizer=optimizer)


@pytest.mark.parametrize(
    "batch, error, message",
    [
        (np.zeros((4, 8, 8, 1), "float32"), ValueError, "shape"),
        (np.zeros((4, 16, 16, 1), "uint8"), ValueError, "floating"),
        ({"images": np.zeros((4, 16, 16, 1), "float32")}, ValueError, "images or"),
        (np.full((4, 16, 16, 1), 2.0, "float32"), tf.errors.InvalidArgumentError, r"\[0, 1\]"),
        (np.full((4, 16, 16, 1), np.nan, "float32"), tf.errors.InvalidArgumentError, "NaN"),
    ],
)
def test_bad_batches_are_rejected_before_any_update(batch, error, message):
    prior = make_gmi(n_critic=1)
    prior.compile(run_eagerly=True)
    before = values(prior.weights)
    with pytest.raises(error, match=message):
        prior.train_step(batch)
    assert_same(values(prior.weights), before, rtol=0, atol=0)
