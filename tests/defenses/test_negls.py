import keras
import numpy as np
import pytest

from trapmid_tf.defenses.negls import NegLSLoss, NegLSScheduler, negls_factor
from tests.numpy_reference import log_softmax
from tests.tolerances import assert_float32_close


def test_loss_matches_formula():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], dtype="float32")
    labels = np.array([0, 1])
    loss = NegLSLoss(smoothing=-0.05, num_epochs=10, start_epoch=0, full_epoch=0)
    logp = log_softmax(logits.astype("float64"))
    s = -0.05
    per_sample = (1 - s) * -logp[[0, 1], labels] + s * -logp.mean(axis=1)
    # float32 log-softmax of 3 logits (max, 3 exps, a sum of 3, a log, a subtraction), the
    # weighted sum of 4 terms and the mean of 2: about 16 roundings of values up to max|log p|.
    assert_float32_close(float(loss(labels, logits)), per_sample.mean(),
                         magnitude=np.abs(logp).max(), roundings=16)


def test_zero_smoothing_equals_cross_entropy():
    logits = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    labels = np.array([0, 1, 2, 3, 0])
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    loss = NegLSLoss(num_epochs=100)  # epoch 0 is before the schedule starts
    # Two float32 log-softmaxes of 4 logits and means of 5 (about 16 roundings each way).
    magnitude = np.abs(log_softmax(logits.astype("float64"))).max()
    assert_float32_close(float(loss(labels, logits)), float(ce), magnitude, roundings=32)


def test_reference_schedules():
    # CelebA (100 epochs): 0 until 49, (e + 1 - 50) / 50 for 50..74, then 1.
    celeba = [negls_factor(e, 100, 50, 75) for e in (0, 49, 50, 74, 75, 99)]
    assert celeba == [0.0, 0.0, 1 / 50, 25 / 50, 1.0, 1.0]
    # MNIST (10 epochs): 0 until 4, (e + 1 - 5) / 5 for 5..6, then 1.
    assert [negls_factor(e, 10, 5, 7) for e in range(10)] == [0] * 5 + [0.2, 0.4] + [1.0] * 3


def test_set_epoch_changes_the_compiled_value():
    loss = NegLSLoss(smoothing=-0.1, num_epochs=10, start_epoch=5, full_epoch=7)
    logits = np.array([[1.0, 0.0]], dtype="float32")
    before = float(loss([0], logits))
    loss.set_epoch(8)
    assert float(loss.current_smoothing.numpy()) == pytest.approx(-0.1)
    logp = log_softmax(logits.astype("float64"))[0]
    assert_float32_close(float(loss([0], logits)), 1.1 * -logp[0] - 0.1 * -logp.mean(),
                         magnitude=1.1 * np.abs(logp).max(), roundings=16)  # as above
    assert float(loss([0], logits)) != before


def test_scheduler_advances_a_compiled_model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    loss = NegLSLoss(smoothing=-0.05, num_epochs=4, start_epoch=1, full_epoch=2)
    model.compile(optimizer="sgd", loss=loss)
    x, y = np.zeros((4, 2), "float32"), np.zeros(4, "int32")
    model.fit(x, y, epochs=3, verbose=0, callbacks=[NegLSScheduler()])
    assert loss.epoch == 2
    assert float(loss.current_smoothing.numpy()) == pytest.approx(-0.05)


def test_config_round_trip():
    loss = NegLSLoss(smoothing=-0.05, num_epochs=10, start_epoch=5, full_epoch=7, epoch=6)
    clone = NegLSLoss.from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    assert float(clone.current_smoothing.numpy()) == pytest.approx(-0.05 * 0.4)


def test_a_copy_keeps_a_float64_dtype_under_float32_floatx():
    loss = NegLSLoss(smoothing=-0.05, num_epochs=10, start_epoch=0, full_epoch=0,
                     dtype="float64")
    clone = NegLSLoss.from_config(loss.get_config())
    assert clone.dtype == "float64"
    assert keras.backend.standardize_dtype(clone.current_smoothing.dtype) == "float64"


def test_bad_schedule():
    with pytest.raises(ValueError, match="start_epoch"):
        NegLSLoss(num_epochs=10, start_epoch=8, full_epoch=5)


def test_a_float64_loss_smooths_by_the_float64_value():
    """Logits (ln 3, 0), label 0: p = (3/4, 1/4), so -log p_y = ln(4/3) and the mean of -log p
    is (ln(4/3) + ln 4) / 2; at s = -0.05 the loss is 1.025 ln(4/3) - 0.025 ln 4. The float32
    rounding of s (-0.05 + 7.5e-10) would move it by 7.5e-10 * ln(3) / 2 ~ 4e-10."""
    loss = NegLSLoss(smoothing=-0.05, num_epochs=10, start_epoch=0, full_epoch=0,
                     dtype="float64")
    assert keras.backend.standardize_dtype(loss.current_smoothing.dtype) == "float64"
    logits = np.array([[np.log(3.0), 0.0]])
    expected = 1.025 * np.log(4.0 / 3.0) - 0.025 * np.log(4.0)
    # float64: a log-softmax of 2 logits and a weighted sum, ~10 roundings of values below 1.4.
    assert float(loss([0], logits)) == pytest.approx(expected, rel=0, abs=1e-14)
