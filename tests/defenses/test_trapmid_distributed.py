"""The same Trap-MID steps on one device and on two replicas give the same model.

Both the reference step and the fast variant's shared trigger gradient (with the
discriminator on every step: a conditional one refuses several replicas).

Uses the two logical CPUs set up in conftest.py. Augmentation is off and the classifier has
no BatchNormalization: per-replica batch statistics legitimately differ from whole-batch ones.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trapmid_tf.defenses.trapmid import TrapMIDModel
from trapmid_tf.defenses.trapmid_fast import FastTrapMIDModel
from trapmid_tf.models.small_cnn import small_cnn

SHAPE, CLASSES, GLOBAL_BATCH, STEPS = (16, 16, 1), 4, 8, 3


def train(strategy, model_class, options):
    rng = np.random.default_rng(0)
    n = GLOBAL_BATCH * STEPS
    x = rng.uniform(size=(n, *SHAPE)).astype("float32")
    y = rng.integers(0, CLASSES, n).astype("int32")
    t = rng.integers(0, CLASSES, n).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y, t)).batch(GLOBAL_BATCH)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        classifier = small_cnn(SHAPE, CLASSES, width=4, batch_norm=False)
        model = model_class(classifier, CLASSES, alpha=0.1, augment=False, seed=0, **options)
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    initial = [v.numpy() for v in model.trainable_weights]
    model.fit(data, epochs=1, verbose=0)
    return model, initial


def relative_difference(a, b):
    return np.abs(a - b).max() / max(np.abs(a).max(), 1e-12)


@pytest.mark.parametrize(
    "model_class, options",
    [(TrapMIDModel, {}), (FastTrapMIDModel, {"discriminator_interval": 1})],
)
def test_one_and_two_replicas_give_the_same_update(two_replicas, model_class, options):
    one, initial = train(tf.distribute.OneDeviceStrategy("/cpu:0"), model_class, options)
    two, _ = train(two_replicas, model_class, options)
    assert two.distribute_strategy.num_replicas_in_sync == 2
    for part in ("classifier", "discriminator"):
        a, b = getattr(one, part).get_weights(), getattr(two, part).get_weights()
        for wa, wb in zip(a, b):
            assert relative_difference(wa, wb) <= 1e-5, part
    np.testing.assert_array_equal(one.triggers.numpy(), two.triggers.numpy())
    # The steps did change every part (the comparison is not between untouched models).
    assert int(one.optimizer.iterations) == STEPS
    changed = [not np.array_equal(v.numpy(), w) for v, w in zip(one.trainable_weights, initial)]
    assert all(changed)
