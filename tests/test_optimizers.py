"""TorchSGD and TorchAdam against NumPy transcriptions of PyTorch's update rules.

TorchSGD's reference rule (PyTorch 2.x `torch/optim/sgd.py`, `_single_tensor_sgd`), per parameter:
    g = g + weight_decay * w
    buf = g (first step) else momentum * buf + (1 - dampening) * g
    g = g + momentum * buf if nesterov else buf
    w = w - lr * g
Tolerances: each step is a handful of float32 multiply-adds on values of order 1, so TF and
NumPy (float64 here) differ by a few float32 ulps per step; after 5 steps 1e-6 relative
(about 8 ulps) bounds it with room.
"""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import trapmid_tf as tm
from tests.tolerances import FLOAT32_EPS
from trapmid_tf.optimizers import TorchAdam, TorchSGD

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


def _replica_weights(strategy, layers, optimizer, x, y, seed):
    """The weights after 2 epochs of `fit` (batch 8) of a seeded model of `layers` under
    `strategy`, compiled with `optimizer()` and cross-entropy."""
    with strategy.scope():
        keras.utils.set_random_seed(seed)
        model = keras.Sequential(layers())
        model.compile(optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=2, verbose=0)
    return model.get_weights()


def _assert_replicas_match(two_replicas, layers, optimizer, x, y, seed):
    one = _replica_weights(tf.distribute.OneDeviceStrategy("/cpu:0"), layers, optimizer, x, y,
                           seed)
    two = _replica_weights(two_replicas, layers, optimizer, x, y, seed)
    for a, b in zip(one, two):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_two_replicas_give_the_one_device_update(two_replicas):
    """Under MirroredStrategy the summed replica gradients give the one-device step."""
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(16, 5)).astype("float32")
    y = rng.integers(0, 3, 16)
    _assert_replicas_match(
        two_replicas, lambda: [keras.Input((5,)), keras.layers.Dense(3)],
        lambda: TorchSGD(0.2, momentum=0.9, weight_decay=1e-2), x, y, seed=5)


@pytest.mark.parametrize(
    "arguments, message",
    [(dict(momentum=1.5), "`momentum` must be a number in [0, 1]; received 1.5"),
     (dict(dampening=1.0), "`dampening` must be a number in [0, 1); received 1.0"),
     (dict(weight_decay=-1e-4), "`weight_decay` must be a finite number >= 0"),
     (dict(momentum="0.9"), "`momentum` must be a number in [0, 1]; received '0.9'"),
     (dict(nesterov=True, momentum=0.0), "`nesterov=True` needs")],
)
def test_bad_arguments_are_named(arguments, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        TorchSGD(0.1, **arguments)


# === TorchAdam ===
# The reference rule (PyTorch 2.x `torch/optim/adam.py`, `_single_tensor_adam`, amsgrad off,
# weight decay 0), per parameter at step t (from 1):
#     m = m + (1 - beta_1) (g - m)            (`exp_avg.lerp_(grad, 1 - beta1)`)
#     v = beta_2 v + (1 - beta_2) g^2
#     w = w - lr / (1 - beta_1^t) * m / (sqrt(v) / sqrt(1 - beta_2^t) + eps)


def torch_adam_reference(weights, gradients, learning_rates, beta_1, beta_2, epsilon):
    """PyTorch's Adam on one float64 array; returns the weights after every step."""
    w = np.asarray(weights, np.float64).copy()
    m, v = np.zeros_like(w), np.zeros_like(w)
    history = []
    for t, (g, lr) in enumerate(zip(gradients, learning_rates), start=1):
        g = np.asarray(g, np.float64)
        m = m + (1 - beta_1) * (g - m)
        v = beta_2 * v + (1 - beta_2) * g * g
        denominator = np.sqrt(v) / np.sqrt(1 - beta_2**t) + epsilon
        w = w - lr / (1 - beta_1**t) * m / denominator
        history.append(w.copy())
    return history


# Columns: gradients of order 1; of order 1e-9 (below epsilon, where its placement decides
# the step); 0 first and then 1e-7; order-1e-9 gradients of alternating sign; exactly 0.
ADAM_GRADIENTS = np.array([
    [0.5, 2e-9, 0.0, 1e-9, 0.0],
    [-0.3, 1e-9, 1e-7, -2e-9, 0.0],
    [0.8, -3e-9, 2e-7, 1e-9, 0.0],
    [0.1, 1e-9, -1e-7, -1e-9, 0.0],
    [-0.6, 5e-10, 1e-7, 3e-9, 0.0],
    [0.2, 2e-9, 0.0, -1e-9, 0.0],
])
ADAM_INITIAL = np.array([1.0, -0.5, 0.25, 0.0, 2.0])


@pytest.fixture(params=["float32", "float64"])
def floatx(request):
    """Runs a test with `keras.config.floatx()` set to each float type (restored after)."""
    previous = keras.config.floatx()
    keras.config.set_floatx(request.param)
    yield request.param
    keras.config.set_floatx(previous)


def adam_atol(floatx, history, learning_rate, beta_2, steps):
    """Rounding bound of `steps` Adam steps: about 10 roundings per step (moments, square
    root, corrections, division, update) of values up to the weights' magnitude plus the
    largest step, `lr |m_hat| / sqrt(v_hat)` <= `lr / sqrt(1 - beta_2)` (m's and v's
    histories weigh the same gradients; Cauchy-Schwarz with beta_1^2 <= beta_2)."""
    eps = FLOAT32_EPS if floatx == "float32" else float(np.finfo(np.float64).eps)
    magnitude = np.abs(history).max() + learning_rate / np.sqrt(1 - beta_2)
    return 10 * steps * eps * magnitude


@pytest.mark.parametrize("beta_1, beta_2", [(0.9, 0.999), (0.0, 0.9), (0.5, 0.999)])
def test_torch_adam_follows_pytorch_where_epsilon_matters(floatx, beta_1, beta_2):
    # A schedule that drops after step 2 checks the rate is read at every step.
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2], [0.1, 0.05])
    learning_rates = [float(schedule(step)) for step in range(len(ADAM_GRADIENTS))]
    expected = torch_adam_reference(ADAM_INITIAL, ADAM_GRADIENTS, learning_rates, beta_1,
                                    beta_2, 1e-8)
    atol = adam_atol(floatx, expected, 0.1, beta_2, len(ADAM_GRADIENTS))
    variable = keras.Variable(ADAM_INITIAL, dtype=floatx)
    optimizer = TorchAdam(schedule, beta_1=beta_1, beta_2=beta_2, epsilon=1e-8)
    keras_variable = keras.Variable(ADAM_INITIAL, dtype=floatx)
    keras_adam = keras.optimizers.Adam(schedule, beta_1=beta_1, beta_2=beta_2, epsilon=1e-8)
    for gradient, value in zip(ADAM_GRADIENTS, expected):
        optimizer.apply([tf.constant(gradient, floatx)], [variable])
        keras_adam.apply([tf.constant(gradient, floatx)], [keras_variable])
        np.testing.assert_allclose(variable.numpy(), value, rtol=0, atol=atol)
    # Keras's Adam adds epsilon before the bias correction: on the tiny gradients its steps are
    # far smaller (0.1 * 1e-9 / (1e-9 + 1e-8 / sqrt(1 - beta_2)) against PyTorch's
    # 0.1 * 1e-9 / (1e-9 + 1e-8)), which the tolerance above tells apart.
    assert np.abs(keras_variable.numpy() - expected[-1])[1:4].min() > 100 * atol


def test_torch_adam_sums_a_sparse_gradient_before_squaring():
    # An embedding-style gradient: rows 1 (twice), 0 and 1 again; row 2 never looked up.
    # PyTorch's dense gradient adds the slices per row first: row 1 gets (1 + 3 - 0.5,
    # -2 + 0.5 + 1) = (3.5, -0.5), row 0 (-1, 1), row 2 zero.
    sparse = tf.IndexedSlices(
        tf.constant([[1.0, -2.0], [3.0, 0.5], [-1.0, 1.0], [-0.5, 1.0]]),
        tf.constant([1, 1, 0, 1]),
        tf.constant([3, 2]),
    )
    dense = np.array([[-1.0, 1.0], [3.5, -0.5], [0.0, 0.0]])
    initial = np.array([[0.5, -0.5], [1.0, 2.0], [-1.0, 0.25]])
    learning_rate, beta_1, beta_2 = 0.1, 0.9, 0.999
    expected = torch_adam_reference(initial, [dense, dense], [learning_rate] * 2, beta_1,
                                    beta_2, 1e-8)
    atol = adam_atol("float32", expected, learning_rate, beta_2, 2)
    variable = keras.Variable(initial, dtype="float32")
    optimizer = TorchAdam(learning_rate, beta_1=beta_1, beta_2=beta_2)
    for value in expected:
        optimizer.apply([sparse], [variable])
        np.testing.assert_allclose(variable.numpy(), value, rtol=0, atol=atol)
    # Keras's Adam squares slice by slice: row 1's first entry has sqrt(1 + 9 + 0.25) = 3.2 in
    # its first step's denominator instead of 3.5, a step of 0.109 instead of 0.1.
    keras_variable = keras.Variable(initial, dtype="float32")
    keras.optimizers.Adam(learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=1e-8).apply(
        [sparse], [keras_variable]
    )
    assert abs(keras_variable.numpy()[1, 0] - expected[0][1, 0]) > 0.005


def test_torch_adam_config_round_trip_and_serialization():
    optimizer = TorchAdam(2e-4, beta_1=0.0, beta_2=0.9, epsilon=1e-6, clipnorm=1.0)
    config = optimizer.get_config()
    assert (config["beta_1"], config["beta_2"], config["epsilon"]) == (0.0, 0.9, 1e-6)
    assert config["weight_decay"] is None
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, TorchAdam)
    assert restored.get_config() == config
    assert tm.TorchAdam is TorchAdam


def test_torch_adam_two_replicas_give_the_one_device_update(two_replicas):
    """Under MirroredStrategy, with an embedding's sparse gradient, as on one device."""
    rng = np.random.default_rng(6)
    x = rng.integers(0, 4, 16)  # 16 lookups of 4 rows: every batch repeats rows
    y = rng.integers(0, 3, 16)
    _assert_replicas_match(
        two_replicas, lambda: [keras.Input((), dtype="int32"), keras.layers.Embedding(4, 5),
                               keras.layers.Dense(3)],
        lambda: TorchAdam(0.05), x, y, seed=7)


@pytest.mark.parametrize(
    "arguments, message",
    [(dict(beta_1=1.0), "`beta_1` must be a number in [0, 1); received 1.0"),
     (dict(beta_2=-0.1), "`beta_2` must be a number in [0, 1); received -0.1"),
     (dict(beta_1="0.9"), "`beta_1` must be a number in [0, 1); received '0.9'"),
     (dict(epsilon=-1e-8), "`epsilon` must be a finite number >= 0"),
     (dict(weight_decay=1e-4), "`weight_decay` must be None")],
)
def test_torch_adam_bad_arguments_are_named(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TorchAdam(0.1, **arguments)
