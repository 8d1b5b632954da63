"""FastTrapMIDModel against NumPy versions of what it changes, and its checks.

The trigger gradient (same formula as the reference on a linear classifier without batch
norm) comes from the classifier step, whose update therefore sees the triggers before their
step, not after; the discriminator step and the naturalness term run on every k-th step only.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.defenses.test_trapmid_step import (
    ALPHA,
    BATCH,
    BETA,
    CLASSES,
    LR,
    SHAPE,
    STEP,
    bce_grads,
    ce_grads,
    linear_model,
    make_model,
)
from trapmid_tf.defenses.trapmid_fast import FastTrapMIDModel
from trapmid_tf.models.small_cnn import small_cnn


def fast_iteration(x, y, t, triggers, cw, cb, dw, db, with_discriminator):
    """One step of the fast variant in NumPy on flattened images."""
    n = len(x)
    blend = (1 - ALPHA) * x + ALPHA * triggers[t]  # the triggers before this step, throughout
    gx_d = np.zeros_like(x)
    if with_discriminator:
        both = np.concatenate([x, blend])
        _, gw, gb = bce_grads(both, np.r_[np.ones(n), np.zeros(n)], dw, db)
        dw, db = dw - LR * gw, db - LR * gb
        gx_d, _, _ = bce_grads(blend, np.ones(n), dw, db)  # through the updated discriminator
    gx_c, gw_trap, gb_trap = ce_grads(blend, t, cw, cb)
    _, gw_main, gb_main = ce_grads(x, y, cw, cb)
    cw = cw - LR * ((1 - BETA) * gw_main + BETA * gw_trap)
    cb = cb - LR * ((1 - BETA) * gb_main + BETA * gb_trap)
    grad = np.zeros_like(triggers)
    np.add.at(grad, t, ALPHA * (gx_d + gx_c))
    triggers = np.clip(triggers - STEP * np.sign(grad), 0, 1)
    return triggers, cw, cb, dw, db


def variables(model):
    return [v.numpy() for v in model.classifier.trainable_variables] + [
        v.numpy() for v in model.discriminator.trainable_variables
    ]


def test_fast_steps_match_numpy_over_three_steps():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, BATCH, *SHAPE)).astype("float32")
    y = rng.integers(0, CLASSES, (3, BATCH)).astype("int32")
    t = rng.integers(0, CLASSES, (3, BATCH)).astype("int32")
    model = make_model(FastTrapMIDModel, discriminator_interval=2)
    start = rng.choice([0.01, 0.5, 0.99], size=model.triggers.shape).astype("float32")
    model.triggers.assign(start)
    triggers, state = start.reshape(CLASSES, -1), variables(model)

    history = model.fit(tf.data.Dataset.from_tensor_slices((x, y, t)), epochs=1, verbose=0)

    for step in range(3):  # the discriminator runs on steps 0 and 2
        triggers, *state = fast_iteration(
            x[step].reshape(BATCH, -1), y[step], t[step], triggers, *state, step % 2 == 0
        )
    np.testing.assert_allclose(model.triggers.numpy().reshape(CLASSES, -1), triggers, atol=1e-6)
    for got, expected in zip(variables(model), state):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert int(model.discriminator_optimizer.iterations) == 2
    assert int(model.trigger_optimizer.iterations) == 3
    assert np.isfinite(history.history["discriminator_loss"][0])


def test_skipped_steps_leave_the_discriminator_and_its_loss_alone():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(BATCH, *SHAPE)).astype("float32")
    y, t = rng.integers(0, CLASSES, (2, BATCH)).astype("int32")
    model = make_model(FastTrapMIDModel, discriminator_interval=2)
    data = tf.data.Dataset.from_tensors((x, y, t))
    first = model.fit(data, epochs=1, verbose=0).history["discriminator_loss"][0]
    after_first = model.discriminator.get_weights()
    triggers = model.triggers.numpy().reshape(CLASSES, -1)
    cw, cb = [v.numpy() for v in model.classifier.trainable_variables]
    second = model.fit(data, epochs=1, verbose=0).history["discriminator_loss"][0]
    for got, expected in zip(model.discriminator.get_weights(), after_first):
        np.testing.assert_array_equal(got, expected)
    # The skipped step adds no 0 to the loss mean: its epoch has no discriminator loss at all
    # (Keras' Mean reports 0 for no data).
    assert first > 0.0 and second == 0.0
    # On the skipped step the triggers follow the classifier's trapdoor loss alone.
    gx_c, _, _ = ce_grads((1 - ALPHA) * x.reshape(BATCH, -1) + ALPHA * triggers[t], t, cw, cb)
    grad = np.zeros_like(triggers)
    np.add.at(grad, t, ALPHA * gx_c)
    expected = np.clip(triggers - STEP * np.sign(grad), 0, 1)
    np.testing.assert_allclose(model.triggers.numpy().reshape(CLASSES, -1), expected, atol=1e-6)


def test_fast_model_trains_a_small_cnn_with_augmentation_and_reloads(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(16, 16, 16, 1)).astype("float32")
    y = rng.integers(0, 4, 16).astype("int32")
    model = FastTrapMIDModel(
        small_cnn((16, 16, 1), 4, width=4), 4, alpha=0.1, seed=0, discriminator_interval=3
    )
    model.compile()
    weights, triggers = model.get_weights(), model.triggers.numpy()
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert all(np.isfinite(v).all() for v in history.history.values())
    assert not np.array_equal(model.triggers.numpy(), triggers)
    assert all(not np.array_equal(a, b) for a, b in zip(model.get_weights(), weights))
    path = str(tmp_path / "fast.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, FastTrapMIDModel) and loaded.discriminator_interval == 3
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(beta=0.0), "`beta` must be > 0"),
        (dict(discriminator_interval=0), "`discriminator_interval` must be an integer >= 1"),
        (dict(discriminator_interval=1.5), "received 1.5"),
        (dict(discriminator_interval=True), "received True"),
    ],
)
def test_bad_options_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        FastTrapMIDModel(linear_model(CLASSES, "f"), CLASSES, augment=False, **options)


def test_compile_refuses_the_interval_on_several_replicas(two_replicas):
    with two_replicas.scope():
        model = FastTrapMIDModel(
            linear_model(CLASSES, "f"), CLASSES, augment=False, discriminator_interval=2
        )
        with pytest.raises(ValueError, match="needs a single replica.*strategy of 2 replicas"):
            model.compile()
        # Without a discriminator no update is conditional: several replicas are fine.
        FastTrapMIDModel(
            linear_model(CLASSES, "g"), CLASSES, augment=False, discriminator=None,
            discriminator_interval=2,
        ).compile()
