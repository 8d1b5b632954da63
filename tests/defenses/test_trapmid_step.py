"""One Trap-MID iteration against a hand-written NumPy version of the reference algorithm.

Linear classifier and discriminator, plain SGD (no momentum, no weight decay) and no
augmentation make every gradient of the reference iteration (reference_spec.md 1.6) easy to
write down by hand, so the whole ordering is checked: discriminator step, signed trigger step
through the *updated* discriminator and the classifier, clip, then the classifier step on the
concatenated batch with the *updated* triggers.
"""

import keras
import numpy as np
import tensorflow as tf

from trapmid_tf.defenses.trapmid import TrapMIDModel
from tests.numpy_reference import softmax

ALPHA, BETA, STEP, LR = 0.3, 0.2, 0.05, 0.1
SHAPE, CLASSES, BATCH = (2, 2, 1), 3, 6


def linear_model(outputs, name):
    inputs = keras.Input(SHAPE)
    flat = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(outputs, name="logits")(flat), name=name)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def ce_grads(x, labels, w, b):
    """Mean cross-entropy of softmax(x w + b): gradients w.r.t. x, w and b."""
    p = softmax(x @ w + b)
    p[np.arange(len(labels)), labels] -= 1.0
    p /= len(labels)
    return p @ w.T, x.T @ p, p.sum(0)


def bce_grads(x, targets, w, b):
    """Mean binary cross-entropy of sigmoid(x w + b): gradients w.r.t. x, w and b."""
    d = (sigmoid(x @ w + b) - targets[:, None]) / len(targets)
    return d @ w.T, x.T @ d, d.sum(0)


def reference_iteration(x, y, t, triggers, cw, cb, dw, db):
    """The reference iteration in NumPy on flattened images."""
    n = len(x)
    blend = lambda trig: (1 - ALPHA) * x + ALPHA * trig[t]
    # 1b. Discriminator step on [x; x~] with targets [1; 0].
    both = np.concatenate([x, blend(triggers)])
    _, gw, gb = bce_grads(both, np.r_[np.ones(n), np.zeros(n)], dw, db)
    dw, db = dw - LR * gw, db - LR * gb
    # 1c-d. Trigger loss BCE(D(x~), 1) + CE(f(x~), t); signed step; clip.
    gx_d, _, _ = bce_grads(blend(triggers), np.ones(n), dw, db)
    gx_c, _, _ = ce_grads(blend(triggers), t, cw, cb)
    grad = np.zeros_like(triggers)
    np.add.at(grad, t, ALPHA * (gx_d + gx_c))
    triggers = np.clip(triggers - STEP * np.sign(grad), 0, 1)
    # 2. Classifier step on [x; x~] with the updated triggers.
    _, gw_main, gb_main = ce_grads(x, y, cw, cb)
    _, gw_trap, gb_trap = ce_grads(blend(triggers), t, cw, cb)
    cw = cw - LR * ((1 - BETA) * gw_main + BETA * gw_trap)
    cb = cb - LR * ((1 - BETA) * gb_main + BETA * gb_trap)
    return triggers, cw, cb, dw, db


def make_model(model_class=TrapMIDModel, seed=0, **options):
    """The linear Trap-MID model of these tests; `options` go to `model_class`."""
    model = model_class(
        linear_model(CLASSES, "f"),
        CLASSES,
        alpha=ALPHA,
        beta=BETA,
        trigger_step_size=STEP,
        discriminator=linear_model(1, "d"),
        augment=False,
        seed=seed,
        **options,
    )
    model.compile(optimizer=keras.optimizers.SGD(LR), discriminator_optimizer=keras.optimizers.SGD(LR))
    return model


def test_one_iteration_matches_reference_algorithm():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(BATCH, *SHAPE)).astype("float32")
    y = rng.integers(0, CLASSES, BATCH).astype("int32")
    t = np.array([0, 0, 2, 2, 2, 0], dtype="int32")  # class 1 unused: its trigger must not move
    keras.utils.set_random_seed(1)  # initial weights for which the step reaches the clip at 0 and 1,
    # whatever tests ran before (the reference comparison holds for any)
    model = make_model()
    # Triggers next to 0 and 1 so that the clip to [0, 1] takes effect.
    start = rng.choice([0.01, 0.5, 0.99], size=model.triggers.shape).astype("float32")
    model.triggers.assign(start)
    cw, cb = [v.numpy() for v in model.classifier.trainable_variables]
    dw, db = [v.numpy() for v in model.discriminator.trainable_variables]

    model.fit(tf.data.Dataset.from_tensors((x, y, t)), epochs=1, verbose=0)

    flat = x.reshape(BATCH, -1)
    triggers, cw, cb, dw, db = reference_iteration(
        flat, y, t, start.reshape(CLASSES, -1), cw, cb, dw, db
    )
    np.testing.assert_allclose(model.triggers.numpy().reshape(CLASSES, -1), triggers, atol=1e-6)
    np.testing.assert_array_equal(model.triggers.numpy()[1], start[1])
    assert np.any(model.triggers.numpy() == 0.0) and np.any(model.triggers.numpy() == 1.0)
    got = [v.numpy() for v in model.classifier.trainable_variables]
    np.testing.assert_allclose(got[0], cw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], cb, rtol=1e-5, atol=1e-6)
    got = [v.numpy() for v in model.discriminator.trainable_variables]
    np.testing.assert_allclose(got[0], dw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], db, rtol=1e-5, atol=1e-6)


def test_fixed_triggers_do_not_move_and_classifier_still_learns():
    model = TrapMIDModel(
        linear_model(CLASSES, "f"), CLASSES, alpha=ALPHA, optimize_triggers=False, augment=False
    )
    model.compile(optimizer=keras.optimizers.SGD(LR))
    assert model.discriminator is None
    before = model.triggers.numpy()
    weights = model.classifier.get_weights()
    x = np.random.default_rng(1).uniform(size=(BATCH, *SHAPE)).astype("float32")
    history = model.fit(x, np.zeros(BATCH, "int32"), epochs=1, verbose=0)
    np.testing.assert_array_equal(model.triggers.numpy(), before)
    assert not np.allclose(model.classifier.get_weights()[0], weights[0])
    assert "discriminator_loss" not in history.history
    assert {"loss", "main_loss", "trapdoor_loss", "accuracy", "trapdoor_accuracy"} <= set(
        history.history
    )
