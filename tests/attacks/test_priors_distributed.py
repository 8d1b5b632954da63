"""The GMI, KED-MI and PLG-MI priors make the same steps on one device and on two replicas.

Latents: each prior draws the random numbers of the whole global batch from its seed on every
replica and each replica takes its own rows (the first half for replica 0, as the strategy
splits the batch), so with the same seed both sides draw the same latents, labels, noise and
augmentation and pair them with the same images. That tests the prior's own sampling, with no
test hook: a prior that folded the replica id into its seed, or drew per-replica batches,
would fail here.

The networks have no batch statistics (no batch norm, no minibatch discrimination): those are
per replica by design and legitimately differ from whole-batch ones. The optimizers are plain
SGD, whose update is proportional to the gradient, so a gradient off by any factor (a loss
averaged per replica instead of over the global batch) shows in the weights; Adam's first step
would hide it.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.attacks.test_inversion import (
    IMAGE_SHAPE,
    NUM_CLASSES,
    Z_DIM,
    tiny_classifier,
    tiny_conditional_generator,
    tiny_generator,
)
from trapmid_tf.attacks.plgmi_prior import PLGMIPrior
from trapmid_tf.attacks.priors import GMIPrior, KEDMIPrior
from trapmid_tf.models.cgan import resnet_generator, sn_projection_discriminator
from trapmid_tf.models.small_cnn import small_cnn

GLOBAL_BATCH, STEPS, LEARNING_RATE = 8, 2, 0.5
FLOAT32_UNIT_ROUNDOFF = 2.0**-24


def image_scorer(outputs, features_name=None, output_bias=True):
    """Images -> `outputs` values through a tanh feature layer (named `features_name`).

    A WGAN critic takes no output bias: it cancels in the critic's loss, so it never moves.
    """
    images = keras.Input(IMAGE_SHAPE)
    flat = keras.layers.Flatten()(images)
    features = keras.layers.Dense(6, activation="tanh", name=features_name)(flat)
    return keras.Model(images, keras.layers.Dense(outputs, use_bias=output_bias)(features))


def conditional_discriminator():
    """`[images, y]` -> scores: tanh features, then a Dense on them and the one-hot class.

    No output bias: while the scores are inside the hinge margins it cancels in the loss.
    """
    images, labels = keras.Input(IMAGE_SHAPE), keras.Input((), dtype="int32")
    features = keras.layers.Dense(6, activation="tanh")(keras.layers.Flatten()(images))
    joint = keras.layers.Concatenate()([features, keras.ops.one_hot(labels, NUM_CLASSES)])
    return keras.Model([images, labels], keras.layers.Dense(1, use_bias=False)(joint))


MAKERS = {
    "gmi": lambda seed: GMIPrior(
        tiny_generator(), image_scorer(1, output_bias=False), n_critic=1, seed=seed
    ),
    "kedmi": lambda seed: KEDMIPrior(
        tiny_generator(), image_scorer(NUM_CLASSES, "features"), tiny_classifier(), n_critic=1,
        seed=seed,
    ),
    "plgmi": lambda seed: PLGMIPrior(
        tiny_conditional_generator(), conditional_discriminator(), tiny_classifier(), n_dis=1,
        seed=seed,
    ),
}


def train(strategy, kind, seed=0):
    """`STEPS` steps of one opponent and one generator update each.

    Returns:
        The generator's and the opponent's weights before and after the steps.
    """
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(GLOBAL_BATCH * STEPS, *IMAGE_SHAPE)).astype("float32")
    labels = (np.arange(GLOBAL_BATCH * STEPS) % NUM_CLASSES).astype("int32")
    with strategy.scope():
        keras.utils.set_random_seed(0)
        prior = MAKERS[kind](seed)
        prior.compile(keras.optimizers.SGD(LEARNING_RATE), keras.optimizers.SGD(LEARNING_RATE))
    opponent = prior.critic if kind == "gmi" else prior.discriminator
    trained = [*prior.generator.trainable_weights, *opponent.trainable_weights]
    initial = [w.numpy() for w in trained]
    prior.fit(images, labels, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
    assert int(prior.optimizer.iterations.numpy()) == STEPS
    assert int(prior.generator_optimizer.iterations.numpy()) == STEPS
    return initial, [w.numpy() for w in trained]


def float32_tolerance(weights, initial):
    """How far float32 rounding alone can move the weights of the two runs apart.

    Per step, each side rounds the updated weight (at most one ulp, 2u|w|, apart) and sums
    the gradient over the global batch in its own order (one sum of GLOBAL_BATCH per-sample
    terms against two half sums and the replicas' sum: at most about GLOBAL_BATCH·u times
    the sum of the terms' sizes, taken as the step's size, i.e. terms that do not cancel).
    Differences of the first step change the second step's gradient only to second order.
    u is the float32 unit roundoff.
    """
    step = np.abs(weights - initial).max()
    return STEPS * FLOAT32_UNIT_ROUNDOFF * (2 * np.abs(weights).max() + GLOBAL_BATCH * step)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_two_replicas_make_the_one_device_steps(two_replicas, kind):
    initial, one = train(tf.distribute.OneDeviceStrategy("/cpu:0"), kind)
    _, two = train(two_replicas, kind)
    tolerances = [float32_tolerance(a, w) for a, w in zip(one, initial)]
    for a, b, tolerance in zip(one, two, tolerances):
        np.testing.assert_allclose(b, a, rtol=0, atol=tolerance)
    # Discriminating: every tensor moved far beyond its tolerance (a gradient off by a factor
    # would show), and other latents give other steps (so the runs above drew the same ones).
    for a, w, tolerance in zip(one, initial, tolerances):
        assert np.abs(a - w).max() > 1000 * tolerance
    _, other_seed = train(tf.distribute.OneDeviceStrategy("/cpu:0"), kind, seed=1)
    assert all(
        np.abs(a - b).max() > 1000 * tolerance
        for a, b, tolerance in zip(one, other_seed, tolerances)
    )


def test_plgmi_prior_trains_its_reference_networks_on_two_replicas(two_replicas):
    """Conditional batch norm and spectral normalisation (weights renormalised in place)."""
    shape = (16, 16, 1)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(16, *shape)).astype("float32")
    labels = (np.arange(16) % NUM_CLASSES).astype("int32")
    with two_replicas.scope():
        keras.utils.set_random_seed(0)
        prior = PLGMIPrior(
            resnet_generator(shape, NUM_CLASSES, z_dim=Z_DIM, base_channels=2),
            sn_projection_discriminator(shape, NUM_CLASSES, base_channels=2),
            small_cnn(shape, NUM_CLASSES, width=2),
            n_dis=2,
            seed=0,
        )
        prior.compile()
    history = prior.fit(images, labels, batch_size=8, epochs=1, verbose=0).history
    assert int(prior.optimizer.iterations.numpy()) == 2
    assert int(prior.generator_optimizer.iterations.numpy()) == 1
    assert all(np.isfinite(values[0]) for values in history.values())
    assert all(np.all(np.isfinite(w.numpy())) for w in prior.weights)
