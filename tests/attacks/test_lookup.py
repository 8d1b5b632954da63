"""The lookup baseline against a hand-built linear target whose confidence order is known."""

import keras
import numpy as np
import pytest

from trapmid_tf.attacks import suite
from trapmid_tf.attacks.lookup import LookupAttack

# Public image i lights pixel `class` at `strength` (all other pixels 0); None is the black
# image. The target's logit of class k is pixel k (k < 3), so an image of class k at strength
# s has p(k) = e^s / (e^s + 2), rising with s, and p(j) = 1 / (e^s + 2) for j != k, falling
# with s; the black image has p = 1/3 for every class, which lies between the two for
# s >= 0.2 (p(k) >= 0.379 > 1/3 > 0.311 >= p(j)). Images 2 and 5 are equal: a tie.
PUBLIC = [(0, 0.5), (1, 0.9), (0, 0.9), None, (2, 0.2), (0, 0.9), (1, 0.3), (2, 0.7)]
# Hence, by class, most confident first (ties by the lower index):
RANKING = {
    0: [2, 5, 0, 3, 4, 6, 7, 1],
    1: [1, 6, 3, 4, 0, 7, 2, 5],
    2: [7, 4, 3, 6, 0, 1, 2, 5],
}


def public_images():
    images = np.zeros((len(PUBLIC), 2, 2, 1), np.float32)
    for index, lit in enumerate(PUBLIC):
        if lit is not None:
            images[index].reshape(-1)[lit[0]] = lit[1]
    return images


def linear_target():
    target = keras.Sequential([
        keras.Input((2, 2, 1)), keras.layers.Flatten(), keras.layers.Dense(3, use_bias=False)
    ])
    target.layers[-1].set_weights([np.eye(4, 3, dtype=np.float32)])  # logit k = pixel k
    return target


@pytest.mark.parametrize("per_class", [1, 3, 8])
def test_lookup_returns_the_most_confident_public_images(per_class):
    images = public_images()
    # Batches of 3 split the 8 images unevenly: the scores must not depend on batching.
    attack = suite.build_attack("lookup", {}, public_images=images, batch_size=3)
    result = attack.invert(linear_target(), classes=[2, 0], per_class=per_class)
    expected = RANKING[2][:per_class] + RANKING[0][:per_class]
    np.testing.assert_array_equal(result.latents, expected)
    np.testing.assert_array_equal(result.images, images[expected])
    np.testing.assert_array_equal(result.labels, [2] * per_class + [0] * per_class)
    assert result.images.dtype == np.float32 and attack.iterations == 0


def test_an_image_may_serve_several_classes():
    result = LookupAttack(public_images()).invert(linear_target(), [0, 1, 2], per_class=3)
    # The black image (3) is third for classes 1 and 2.
    np.testing.assert_array_equal(result.latents, [2, 5, 0, 1, 6, 3, 7, 4, 3])


def test_lookup_needs_no_prior_and_says_what_is_missing():
    assert suite.priors_needed([suite.LOOKUP]) == []
    assert suite.LOOKUP in suite.OPTION_ATTACKS
    with pytest.raises(ValueError, match="'lookup' needs the option `public_images`"):
        suite.build_attack("lookup", {})


def test_lookup_rejects_bad_arguments():
    attack = LookupAttack(public_images())
    with pytest.raises(ValueError, match=r"`per_class` must be at most the number of public "
                                         r"images, 8; received 9"):
        attack.invert(linear_target(), [0], per_class=9)
    with pytest.raises(ValueError, match=r"public images of shape \(2, 2, 1\)"):
        attack.invert(keras.Sequential([keras.Input((3, 3, 1)), keras.layers.Flatten(),
                                        keras.layers.Dense(3)]), [0], per_class=1)
    with pytest.raises(ValueError, match=r"`public_images` must lie in \[0, 1\]"):
        LookupAttack(public_images() + 2.0)
    with pytest.raises(ValueError, match="non-empty NHWC array"):
        LookupAttack(np.zeros((0, 2, 2, 1)))
