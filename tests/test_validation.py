"""The shared argument checks: what each accepts, returns and the message of what it refuses."""

import keras
import numpy as np
import pytest

from trapmid_tf import validation


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.uint8(2)])
def test_check_positive_int_returns_a_python_int(value):
    checked = validation.check_positive_int("n", value)
    assert type(checked) is int and checked == int(value)


@pytest.mark.parametrize("value", [0, -2, True, 1.0, "3", None])
def test_check_positive_int_refuses(value):
    with pytest.raises(ValueError, match=rf"`n` must be an integer >= 1; received {value!r}\."):
        validation.check_positive_int("n", value)


def test_integer_and_float_checks():
    validation.check_non_negative_int("n", 0)
    validation.check_non_negative_float("x", 0.0)
    validation.check_positive_float("x", np.float32(0.5))
    for check, value, expected in [
        (validation.check_non_negative_int, -1, "an integer >= 0"),
        (validation.check_non_negative_int, False, "an integer >= 0"),
        (validation.check_non_negative_float, -0.1, "a finite number >= 0"),
        (validation.check_non_negative_float, float("inf"), "a finite number >= 0"),
        (validation.check_positive_float, 0.0, "a finite number > 0"),
        (validation.check_positive_float, float("nan"), "a finite number > 0"),
        (validation.check_positive_float, True, "a finite number > 0"),
    ]:
        with pytest.raises(ValueError, match=rf"`v` must be {expected}; received"):
            check("v", value)


@pytest.mark.parametrize("value", [0.5, np.float32(0.25), 1e-9])
def test_check_open_unit_interval_returns_a_float(value):
    checked = validation.check_open_unit_interval("alpha", value)
    assert type(checked) is float and checked == float(value)


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, float("nan"), True, "0.5"])
def test_check_open_unit_interval_refuses(value):
    with pytest.raises(ValueError, match=r"`alpha` must be a number in \(0, 1\); received"):
        validation.check_open_unit_interval("alpha", value)


def test_check_model():
    validation.check_model("target", keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    with pytest.raises(ValueError, match=r"`target` must be a keras.Model; received Dense\."):
        validation.check_model("target", keras.layers.Dense(1))


def test_is_integer():
    assert validation.is_integer(3) and validation.is_integer(np.int32(-1))
    assert not any(map(validation.is_integer, [True, 3.0, "3", None]))


def test_as_image_batch_returns_float32_nhwc_in_the_unit_range_or_names_the_argument():
    images = validation.as_image_batch("images", [[[[0.0]], [[1.0]]]])
    assert images.dtype == np.float32 and images.shape == (1, 2, 1, 1)
    with pytest.raises(ValueError, match=r"`pics` must be a non-empty NHWC array .* \(2, 2\)"):
        validation.as_image_batch("pics", np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"`pics` must lie in \[0, 1\]; received values in "
                                         r"\[0.0, 2.0\]"):
        validation.as_image_batch("pics", np.array([0.0, 2.0]).reshape(1, 2, 1, 1))
