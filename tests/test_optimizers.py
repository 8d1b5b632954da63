"""TorchSGD against a NumPy transcription of `torch.optim.SGD`'s update rule.

The reference rule (PyTorch 2.x `torch/optim/sgd.py`, `_single_tensor_sgd`), per parameter:
    g = g + weight_decay * w
    buf = g (first step) else momentum * buf + (1 - dampening) * g
    g = g + momentum * buf if nesterov else buf
    w = w - lr * g
Tolerances: each step is a handful of float32 multiply-adds on values of order 1, so TF and
NumPy (float64 here) differ by a few float32 ulps per step; after 5 steps 1e-6 relative
(about 8 ulps) bounds it with room.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import trapmid_tf as tm
from trapmid_tf.optimizers import TorchSGD

STEPS = 5


def torch_sgd_reference(weights, gradients, learning_rates, momentum, dampening, weight_decay,
                        nesterov):
    """PyTorch's SGD on lists of float64 arrays; returns the weights after every step."""
    weights = [w.astype(np.float64) for w in weights]
    buffers = [None] * len(weights)
    history = []
    for step_gradients, lr in zip(gradients, learning_rates):
        for i, (w, g) in enumerate(zip(weights, step_gradients)):
            g = g.astype(np.float64) + weight_decay * w
            if momentum:
                if buffers[i] is None:
                    buffers[i] = g.copy()
                else:
                    buffers[i] = momentum * buffers[i] + (1 - dampening) * g
                g = g + momentum * buffers[i] if nesterov else buffers[i]
            weights[i] = w - lr * g
        history.append([w.copy() for w in weights])
    return history


def model_with_batch_norm():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="logits")(x))


def assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "momentum, dampening, weight_decay, nesterov",
    [(0.9, 0.0, 1e-2, False), (0.9, 0.3, 5e-2, False), (0.8, 0.0, 1e-2, True),
     (0.0, 0.0, 1e-1, False)],
)
def test_steps_on_a_batch_norm_model_follow_pytorch(momentum, dampening, weight_decay, nesterov):
    model = model_with_batch_norm()
    variables = model.trainable_variables
    names = [v.path for v in variables]
    assert any("gamma" in n for n in names) and any("beta" in n for n in names)
    moving = [v.numpy().copy() for v in model.non_trainable_variables]
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(8, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 4, 8)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    # A schedule that drops after step 2 checks the rate is read at every step.
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2], [0.1, 0.01])
    learning_rates = [float(schedule(step)) for step in range(STEPS)]
    optimizer = TorchSGD(schedule, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)
    initial = [v.numpy().copy() for v in variables]
    gradients = []
    for _ in range(STEPS):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=False))
        step_gradients = tape.gradient(loss, variables)
        gradients.append([g.numpy() for g in step_gradients])
        optimizer.apply(step_gradients, variables)
        # The gradient of the next step is taken at the optimiser's weights; compare now so
        # that the reference below sees the same gradients at the same weights.
        expected = torch_sgd_reference(initial, gradients, learning_rates, momentum, dampening,
                                       weight_decay, nesterov)[-1]
        for variable, value in zip(variables, expected):
            assert_close(variable.numpy(), value)
    # BatchNorm moving statistics are buffers, not parameters: never decayed.
    for variable, value in zip(model.non_trainable_variables, moving):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_weight_decay_is_coupled_unlike_keras_sgd():
    # Zero gradient: PyTorch still moves w by lr * wd * w, and with momentum the move
    # accumulates: w1 = w0 (1 - lr wd), w2 = w1 - lr (m wd w0 + wd w1).
    w0, lr, wd, m = 2.0, 0.1, 0.5, 0.9
    variable = keras.Variable([w0])
    optimizer = TorchSGD(lr, momentum=m, weight_decay=wd)
    for _ in range(2):
        optimizer.apply([tf.zeros(1)], [variable])
    w1 = w0 * (1 - lr * wd)
    w2 = w1 - lr * (m * wd * w0 + wd * w1)
    assert_close(variable.numpy(), [w2])
    keras_variable = keras.Variable([w0])
    keras_sgd = keras.optimizers.SGD(lr, momentum=m, weight_decay=wd)
    for _ in range(2):
        keras_sgd.apply([tf.zeros(1)], [keras_variable])
    assert abs(float(keras_variable.numpy()[0]) - w2) > 1e-3


def test_config_round_trip_and_serialization():
    optimizer = TorchSGD(0.05, momentum=0.9, dampening=0.1, weight_decay=1e-4, clipnorm=1.0)
    config = optimizer.get_config()
    assert config["weight_decay"] == 1e-4 and config["dampening"] == 0.1
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, TorchSGD)
    assert restored.get_config() == config
    assert tm.TorchSGD is TorchSGD


def test_saved_model_resumes_with_its_momentum(tmp_path):
    """A compiled model saved mid-training continues exactly as the uninterrupted one."""
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(16, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 4, 16)

    def compiled():
        model = model_with_batch_norm()
        model.compile(TorchSGD(0.1, momentum=0.9, weight_decay=1e-2),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    straight = compiled()
    straight.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    first = compiled()
    first.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    first.save(tmp_path / "m.keras")
    resumed = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(resumed.optimizer, TorchSGD)
    resumed.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        assert_close(b, a)


def test_loss_scaling_gives_the_unscaled_update():
    rng = np.random.default_rng(3)
    gradients = [rng.normal(size=(3,)).astype("float32") for _ in range(3)]
    plain_variable, scaled_variable = keras.Variable(np.ones(3)), keras.Variable(np.ones(3))
    plain = TorchSGD(0.1, momentum=0.9, weight_decay=1e-2)
    scaled = keras.optimizers.LossScaleOptimizer(
        TorchSGD(0.1, momentum=0.9, weight_decay=1e-2), initial_scale=256.0
    )
    for g in gradients:
        plain.apply([tf.constant(g)], [plain_variable])
        scaled.apply([tf.constant(g * 256.0)], [scaled_variable])
    assert_close(scaled_variable.numpy(), plain_variable.numpy())


def test_two_replicas_give_the_one_device_update(two_replicas):
    """Under MirroredStrategy the summed replica gradients give the one-device step."""
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(16, 5)).astype("float32")
    y = rng.integers(0, 3, 16)

    def train(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(5)
            model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
            model.compile(TorchSGD(0.2, momentum=0.9, weight_decay=1e-2),
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=2, verbose=0)
        return model.get_weights()

    one = train(tf.distribute.OneDeviceStrategy("/cpu:0"))
    two = train(two_replicas)
    for a, b in zip(one, two):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "arguments, message",
    [(dict(momentum=1.5), "`momentum` must be in [0, 1]"),
     (dict(dampening=1.0), "`dampening` must be in [0, 1)"),
     (dict(weight_decay=-1e-4), "`weight_decay` must be a float >= 0"),
     (dict(momentum="0.9"), "`momentum` must be a float"),
     (dict(nesterov=True, momentum=0.0), "`nesterov=True` needs")],
)
def test_bad_arguments_are_named(arguments, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        TorchSGD(0.1, **arguments)
