"""The attack suite by name: prior bookkeeping, prior training, save/load, building attacks."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trapmid_tf.attacks import suite
from trapmid_tf.models import small_cnn

SHAPE = (8, 8, 1)


def test_priors_needed_by_hand():
    assert suite.priors_needed(["gmi"]) == ["gmi"]
    assert suite.priors_needed(["lomma_kedmi", "mi_face"]) == ["kedmi", "lomma"]
    assert suite.priors_needed(suite.ATTACKS) == ["gmi", "kedmi", "lomma", "plgmi"]
    with pytest.raises(ValueError, match="attacks must be among .* received 'fgsm'"):
        suite.priors_needed(["fgsm"])


def test_build_attack_names_the_missing_prior():
    with pytest.raises(ValueError, match=r"'lomma_gmi' needs the priors \['lomma'\]"):
        suite.build_attack("lomma_gmi", {"gmi": None})


@pytest.fixture(scope="module")
def public():
    rng = np.random.default_rng(0)
    return tf.data.Dataset.from_tensor_slices(rng.random((16, *SHAPE), dtype=np.float32))


@pytest.fixture(scope="module")
def target():
    keras.utils.set_random_seed(1)
    return small_cnn(SHAPE, 3, width=4, feature_dim=8)


@pytest.fixture(scope="module")
def trained(public, target):
    """Every prior after a few steps (more than one pass of the 16 images), narrow networks."""
    gan = dict(batch_size=8, base_channels=4, verbose=0)
    return {
        "gmi": suite.train_gmi_prior(public, 2, n_critic=3, **gan),
        "kedmi": suite.train_kedmi_prior(public, target, 3, n_critic=1, **gan),
        "plgmi": suite.train_plgmi_prior(
            np.stack(list(public.as_numpy_iterator())), target, 2, top_n=4, n_dis=2, **gan
        ),
        "lomma": suite.train_lomma_surrogates(
            public, target, 3, students=[small_cnn(SHAPE, 3, width=2, feature_dim=4)],
            batch_size=8, verbose=0,
        ),
    }


@pytest.mark.parametrize(
    "name, expected",
    [
        # generator steps x opponent steps per generator step, across passes of the data
        ("gmi", {"generator_steps": 2, "opponent_steps": 6}),
        ("kedmi", {"generator_steps": 3, "opponent_steps": 3}),
        ("plgmi", {"generator_steps": 2, "opponent_steps": 4}),
        ("lomma", {"distillation_steps": [3]}),
    ],
)
def test_priors_take_the_steps_asked_and_record_them(trained, tmp_path, name, expected):
    assert suite.training_steps(trained[name]) == expected
    suite.save_prior(name, trained[name], str(tmp_path))
    assert suite.load_training_steps(str(tmp_path)) == expected


def test_gmi_prior_generates_public_shaped_images(trained):
    assert trained["gmi"].generator.output_shape[1:] == SHAPE


def test_lomma_p_reg_is_the_mean_public_feature(trained, public, target):
    from trapmid_tf.models import feature_extractor

    images = np.stack(list(public.as_numpy_iterator()))
    expected = feature_extractor(target).predict(images, verbose=0).mean(axis=0)
    np.testing.assert_allclose(trained["lomma"].p_reg, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["gmi", "kedmi", "plgmi", "lomma"])
def test_save_and_load_round_trip(trained, tmp_path, name):
    suite.save_prior(name, trained[name], str(tmp_path))
    loaded = suite.load_prior(name, str(tmp_path))
    if name == "lomma":
        np.testing.assert_array_equal(loaded.p_reg, trained[name].p_reg)
        originals, copies = trained[name].surrogates, loaded.surrogates
    else:
        originals = [trained[name].generator, suite._opponent(trained[name])]
        copies = [loaded.generator, loaded.discriminator]
    assert len(copies) == len(originals)
    for original, copy in zip(originals, copies):
        for a, b in zip(original.get_weights(), copy.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_load_prior_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="generator.keras"):
        suite.load_prior("gmi", str(tmp_path))


def tiny_options(name, public):
    """What the attacks of `suite.OPTION_ATTACKS` need, at a tiny budget."""
    images = np.stack(list(public.as_numpy_iterator()))
    return {
        "lookup": dict(public_images=images),
        "plgmi_adaptive": dict(signatures=np.random.default_rng(0).normal(size=(3, 8))),
        "plgmi_adaptive_estimated": dict(public_images=images, top_n=2),
        "trigger_recovery": dict(public_images=images, iterations=2),
        "transfer_null": dict(public_images=images, iterations=2),
        "brep_mi": dict(max_iterations=2, initial_batch=16, max_initial_batches=2),
    }.get(name, {})


@pytest.mark.filterwarnings("ignore:BREP-MI found no initial point")
@pytest.mark.parametrize("name", suite.ATTACKS)
def test_every_attack_builds_from_priors_and_inverts(trained, target, public, name):
    settings = suite.InversionSettings(iterations=2, plgmi_iterations=2, mi_face_iterations=2)
    attack = suite.build_attack(name, trained, settings, **tiny_options(name, public))
    result = attack.invert(target, [0, 2], per_class=2, seed=0, verbose=0)
    assert result.images.shape == (4, *SHAPE)
    np.testing.assert_array_equal(np.sort(result.labels), [0, 0, 2, 2])
    assert result.images.min() >= 0.0 and result.images.max() <= 1.0
