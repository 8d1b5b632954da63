"""BiDO: kernels and normalised HSIC against numpy, hidden layers of the zoo, training."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trapmid_tf.data.loaders import load
from trapmid_tf.defenses.bido import (
    BiDOModel,
    bido_terms,
    default_hidden_layers,
    gaussian_kernel,
    imq_kernel,
    label_kernel,
    linear_kernel,
    normalized_hsic,
)
from trapmid_tf.models.irse import facenet64
from trapmid_tf.models.resnet import ir18
from trapmid_tf.models.small_cnn import small_cnn
from trapmid_tf.models.vgg import vgg16_bn
from tests.tolerances import assert_float32_close

# === numpy references, written from the formulas ===


def np_gaussian(a, sigma):
    a = a.reshape(len(a), -1)
    m, d = a.shape
    kernel = np.empty((m, m))
    for i in range(m):
        for j in range(m):
            kernel[i, j] = np.exp(-np.sum((a[i] - a[j]) ** 2) / (2 * sigma**2 * d))
    return kernel


def np_linear(a):
    a = a.reshape(len(a), -1)
    return np.array([[np.dot(u, v) for v in a] for u in a])


def np_imq(a):
    a = a.reshape(len(a), -1)
    return np.array([[1 / np.sqrt(np.sum((u - v) ** 2) + 1) for v in a] for u in a])


def np_hsic(kernel_a, kernel_b, epsilon=1e-5):
    m = len(kernel_a)
    centring = np.eye(m) - np.ones((m, m)) / m

    def normalized(kernel):
        centred = kernel @ centring
        return centred @ np.linalg.inv(centred + epsilon * m * np.eye(m))

    r_a, r_b = normalized(kernel_a), normalized(kernel_b)
    return sum(r_a[i, j] * r_b[j, i] for i in range(m) for j in range(m))


def random(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


def onehot(labels, classes):
    return np.eye(classes)[labels]


# === Kernels and HSIC ===


def test_kernels_match_the_direct_computation():
    a = random(6, 2, 3, 2)
    for sigma in (5.0, 0.7):
        np.testing.assert_allclose(gaussian_kernel(a, sigma), np_gaussian(a, sigma), rtol=1e-10)
    np.testing.assert_allclose(linear_kernel(a), np_linear(a), rtol=1e-10)
    np.testing.assert_allclose(imq_kernel(a), np_imq(a), rtol=1e-10)
    y = onehot([0, 2, 1, 2, 0, 0], 3)
    np.testing.assert_allclose(label_kernel(y), np_linear(y), rtol=1e-12)
    np.testing.assert_allclose(label_kernel(y, "gaussian", 5.0), np_gaussian(y, 5.0), rtol=1e-12)
    np.testing.assert_allclose(label_kernel(y, "imq"), np_imq(y), rtol=1e-12)
    with pytest.raises(ValueError, match="kernel_y"):
        label_kernel(y, "cosine")


def test_normalized_hsic_matches_the_inverse_formula():
    kernel_a = np_gaussian(random(7, 4, seed=1), 0.5)
    kernel_b = np_linear(random(7, 3, seed=2))
    expected = np_hsic(kernel_a, kernel_b)
    np.testing.assert_allclose(normalized_hsic(kernel_a, kernel_b), expected, rtol=1e-8)
    # float32, as in training: the solve stays close to the float64 inverse.
    single = normalized_hsic(kernel_a.astype("float32"), kernel_b.astype("float32"))
    np.testing.assert_allclose(single, expected, rtol=1e-3)


def test_hsic_of_balanced_labels_with_themselves_has_a_closed_form():
    classes, per_class = 3, 4
    y = onehot(np.repeat(np.arange(classes), per_class), classes)
    kernel = np_linear(y)
    # K H has the eigenvalue m/C (C - 1 times) and zeros, so R has the eigenvalue
    # (m/C) / (m/C + 1e-5 m) = 1 / (1 + 1e-5 C) C - 1 times, and tr(R R) follows.
    expected = (classes - 1) / (1 + 1e-5 * classes) ** 2
    np.testing.assert_allclose(normalized_hsic(kernel, kernel), expected, rtol=1e-9)


def test_centring_makes_the_linear_kernel_hsic_shift_invariant():
    a, b = random(8, 5, seed=3), random(8, 4, seed=4)
    shift_a, shift_b = random(1, 5, seed=5) * 3, random(1, 4, seed=6) * 3
    assert not np.allclose(linear_kernel(a + shift_a), linear_kernel(a))
    base = normalized_hsic(linear_kernel(a), linear_kernel(b))
    shifted = normalized_hsic(linear_kernel(a + shift_a), linear_kernel(b + shift_b))
    np.testing.assert_allclose(shifted, base, rtol=1e-6)
    kernel_b = np_gaussian(b, 1.0)
    np.testing.assert_allclose(
        normalized_hsic(linear_kernel(a + shift_a), kernel_b),
        normalized_hsic(linear_kernel(a), kernel_b),
        rtol=1e-6,
    )


def test_bido_terms_sum_the_hsic_of_every_hidden():
    x = random(6, 4, 4, 1, seed=7)
    hiddens = [random(6, 3, 3, 2, seed=8), random(6, 5, seed=9)]
    y = onehot([0, 1, 2, 3, 0, 1], 4)
    for kind, np_kernel in (("linear", np_linear), ("imq", np_imq)):
        hsic_xz, hsic_yz = bido_terms(x, y, hiddens, kernel_y=kind, sigma=5.0)
        kernels_h = [np_gaussian(h, 5.0) for h in hiddens]
        expected_xz = sum(np_hsic(k, np_gaussian(x, 5.0)) for k in kernels_h)
        expected_yz = sum(np_hsic(k, np_kernel(y)) for k in kernels_h)
        np.testing.assert_allclose(hsic_xz, expected_xz, rtol=1e-8)
        np.testing.assert_allclose(hsic_yz, expected_yz, rtol=1e-8)


# === Hidden layers ===


@pytest.mark.parametrize(
    "builder, input_shape, expected",
    [
        (
            vgg16_bn,
            (32, 32, 3),
            {
                "block1_pool": (16, 16, 64),
                "block2_pool": (8, 8, 128),
                "block3_pool": (4, 4, 256),
                "block4_pool": (2, 2, 512),
                "feature_bn": (512,),
            },
        ),
        (
            ir18,
            (32, 32, 3),
            {
                "layer1_block1_out": (8, 8, 64),
                "layer2_block1_out": (4, 4, 128),
                "layer3_block1_out": (2, 2, 256),
                "layer4_block1_out": (1, 1, 512),
            },
        ),
        (
            facenet64,
            (16, 16, 3),
            {
                "stage1_unit2_add": (8, 8, 64),
                "stage2_unit3_add": (4, 4, 128),
                "stage3_unit13_add": (2, 2, 256),
                "stage4_unit2_add": (1, 1, 512),
            },
        ),
        (
            small_cnn,
            (16, 16, 1),
            {
                "block1_pool": (8, 8, 32),
                "block2_pool": (4, 4, 64),
                "block3_pool": (2, 2, 128),
                "feature_relu": (128,),
            },
        ),
    ],
)
def test_default_hidden_layers_of_the_zoo(builder, input_shape, expected):
    # ir152 follows the facenet64 rule (the last unit of each IR stage); left out for speed.
    classifier = builder(input_shape, 3)
    assert default_hidden_layers(classifier) == tuple(expected)
    model = BiDOModel(classifier)
    shapes = [tuple(shape[1:]) for shape in model.hidden_view.output_shape]
    assert shapes == [*expected.values(), (3,)]


def test_unknown_architectures_need_hidden_layers_and_bad_arguments_are_rejected():
    inputs = keras.Input((8, 8, 1))
    features = keras.layers.Flatten(name="flat")(keras.layers.Conv2D(2, 3, name="conv")(inputs))
    classifier = keras.Model(inputs, keras.layers.Dense(3, name="logits")(features))
    with pytest.raises(ValueError, match="hidden_layers"):
        BiDOModel(classifier)
    assert BiDOModel(classifier, hidden_layers=["conv", "flat"]).hidden_layers == ("conv", "flat")
    with pytest.raises(ValueError, match="nope"):
        BiDOModel(classifier, hidden_layers=["conv", "nope"])
    with pytest.raises(ValueError, match="hidden_layers"):
        BiDOModel(classifier, hidden_layers="conv")
    for kwargs, name in (
        ({"lambda_xz": -1.0}, "lambda_xz"),
        ({"lambda_yz": float("nan")}, "lambda_yz"),
        ({"sigma": 0.0}, "sigma"),
        ({"kernel_y": "cosine"}, "kernel_y"),
    ):
        with pytest.raises(ValueError, match=name):
            BiDOModel(classifier, hidden_layers=["conv"], **kwargs)


# === Training ===


def test_trains_on_digits_exports_and_round_trips(tmp_path):
    (train, test), _ = load("digits", seed=0)
    batches = train.take(48).batch(16)
    x_test, _ = next(iter(test.batch(16)))
    keras.utils.set_random_seed(0)
    model = BiDOModel(small_cnn((32, 32, 1), 5, width=8), lambda_xz=0.1, lambda_yz=1.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    logs = model.fit(batches, epochs=1, verbose=0).history
    assert set(logs) == {"loss", "main_loss", "hsic_xz", "hsic_yz", "accuracy"}
    loss, main, xz, yz = (logs[k][0] for k in ("loss", "main_loss", "hsic_xz", "hsic_yz"))
    # Epoch means of float32 per-step values: per step, 3 roundings to form the loss; then
    # one per step of the running sum and one division, for each of the four means.
    assert_float32_close(loss, main + 0.1 * xz - 1.0 * yz,
                         magnitude=abs(main) + 0.1 * abs(xz) + abs(yz), roundings=4 * (3 + 3 + 1))
    assert np.isfinite([xz, yz]).all() and min(xz, yz) > 0.0

    path = tmp_path / "classifier.keras"
    model.export_classifier(str(path))
    exported = keras.models.load_model(path)
    expected = model.predict(x_test, verbose=0)
    # The export's batch norms are Keras's own, which round differently from the fused
    # kernel in the last bits (a few float32 roundings per layer).
    np.testing.assert_allclose(exported.predict(x_test, verbose=0), expected, rtol=1e-5, atol=1e-6)

    model.save(tmp_path / "bido.keras")
    loaded = keras.models.load_model(tmp_path / "bido.keras")
    assert isinstance(loaded, BiDOModel)
    for key in ("hidden_layers", "lambda_xz", "lambda_yz", "kernel_y", "sigma"):
        assert getattr(loaded, key) == getattr(model, key)
    assert isinstance(loaded.optimizer, keras.optimizers.Adam)
    # Training resumes from the same weights and optimiser state (moments, step count).
    state = model.weights + model.optimizer.variables
    for a, b in zip(state, loaded.weights + loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(loaded.optimizer.iterations) == 3


def test_two_replicas_use_the_mean_of_their_own_batch_hsic(two_replicas):
    """S couples a batch's samples, so each replica computes it on its half of the batch."""
    shape, classes, lr, lambdas = (8, 8, 1), 3, 0.5, (1.0, 2.0)
    x = np.random.default_rng(0).uniform(size=(8, *shape)).astype("float32")
    y = np.array([0, 1, 2, 0, 1, 2, 2, 1], dtype="int32")
    strategy = two_replicas
    with strategy.scope():
        keras.utils.set_random_seed(0)
        classifier = small_cnn(shape, classes, width=2, feature_dim=8, batch_norm=False)
        model = BiDOModel(classifier, lambda_xz=lambdas[0], lambda_yz=lambdas[1])
        model.compile(optimizer=keras.optimizers.SGD(lr))
    initial = classifier.get_weights()

    def one_device_update(halves, dtype):
        keras.config.set_dtype_policy(dtype)
        try:
            reference = small_cnn(shape, classes, width=2, feature_dim=8, batch_norm=False)
        finally:
            keras.config.set_dtype_policy("float32")
        reference.set_weights([w.astype(dtype) for w in initial])
        view = BiDOModel(reference).hidden_view
        images = x.astype(dtype)
        with tf.GradientTape() as tape:
            *hiddens, logits = view(images)
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=dtype)(
                y, logits
            )
            for part in np.split(np.arange(8), halves):
                labels = onehot(y[part], classes).astype(dtype)
                xz, yz = bido_terms(images[part], labels, [tf.gather(h, part) for h in hiddens])
                loss += (lambdas[0] * xz - lambdas[1] * yz) / halves
        gradients = tape.gradient(loss, reference.trainable_variables)
        variables = reference.trainable_variables
        return [w.numpy() - lr * g.numpy() for w, g in zip(variables, gradients)]

    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0)
    exact, global_batch = one_device_update(2, "float64"), one_device_update(1, "float64")
    # The float32 rounding error of this update, measured: the same per-replica update computed
    # in float32 on one device, against float64. The kernels (exp of differences of squared
    # norms) and the ridge solves amplify float32 rounding far beyond a few ulps here, so a
    # tolerance in ulps of the weights would be wrong. Two replicas reorder the same float32
    # operations and add one rounding of the gradient sum, so their error is of the same size;
    # twice the measured error bounds it.
    float32_error = max(
        np.abs(a - b).max() for a, b in zip(one_device_update(2, "float32"), exact)
    )
    tolerance = 2 * float32_error
    for got, expected in zip(classifier.get_weights(), exact):
        np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)
    # The two semantics give updates far apart on the scale of that error, so the comparison
    # is discriminating.
    differences = [np.abs(a - b).max() for a, b in zip(exact, global_batch)]
    assert max(differences) > 100 * tolerance
