"""bfloat16 mixed precision: the switch, and every model family training and attacking under it."""

import contextlib
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from trapmid_tf import precision
from trapmid_tf.attacks import suite
from trapmid_tf.attacks.inversion import cross_entropy_identity_loss
from trapmid_tf.defenses import BiDOModel, FastTrapMIDModel, MIDModel, TrapMIDModel
from trapmid_tf.models import small_cnn

SHAPE, CLASSES = (8, 8, 1), 3
# bfloat16 keeps 8 significant bits: one rounding changes a value by at most 2**-8 relative.
BFLOAT16_ROUNDING = 2.0**-8


@contextlib.contextmanager
def policy(name):
    """Runs the block under the precision `name`, then restores the global policy."""
    previous = precision.use_precision(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.fixture
def mixed():
    with policy("mixed_bfloat16"):
        yield


def float_variables_are_float32(model):
    """Every floating-point variable of `model` (optimizer slots included) is float32."""
    variables = list(model.weights)
    for optimizer in ("optimizer", "generator_optimizer", "discriminator_optimizer"):
        if getattr(model, optimizer, None) is not None:
            variables += getattr(model, optimizer).variables
    floating = [v for v in variables if keras.backend.is_float_dtype(v.dtype)]
    assert floating and all(v.dtype == "float32" for v in floating), [
        (v.path, v.dtype) for v in floating if v.dtype != "float32"
    ]


def images_and_labels(count=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((count, *SHAPE), dtype=np.float32)
    return images, rng.integers(0, CLASSES, count).astype("int32")


# === The switch ===


def test_use_precision_sets_and_returns_the_policy():
    with policy("mixed_bfloat16"):
        model = small_cnn(SHAPE, CLASSES, width=2)
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        assert model.layers[-1].compute_dtype == "bfloat16"
        assert model.layers[-1].variable_dtype == "float32"
        assert precision.use_precision("float32") == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"


def test_use_precision_names_the_argument():
    with pytest.raises(ValueError, match=r"`precision` must be one of \['float32', "
                       r"'mixed_bfloat16'\]; received 'float16'"):
        precision.use_precision("float16")
    assert keras.config.dtype_policy().name == "float32"


def test_use_precision_warns_without_bfloat16_hardware(monkeypatch):
    monkeypatch.setattr(precision, "bfloat16_hardware", lambda: None)
    with pytest.warns(RuntimeWarning, match="emulates bfloat16"), policy("mixed_bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with policy("float32"):  # float32 never warns
            pass


def test_bfloat16_hardware_reads_the_cpu_flags(monkeypatch, tmp_path):
    monkeypatch.setattr(precision.tf.config, "list_physical_devices", lambda kind: [])
    x86, arm, plain = tmp_path / "x86", tmp_path / "arm", tmp_path / "plain"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n\n")
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert precision.cpu_flags(str(arm)) == {"fp", "asimd", "bf16", "i8mm"}
    assert precision.cpu_flags(str(tmp_path / "missing")) == frozenset()
    assert precision.bfloat16_hardware(str(x86)) == "CPU (amx_bf16)"
    assert precision.bfloat16_hardware(str(arm)) == "CPU (bf16)"
    assert precision.bfloat16_hardware(str(plain)) is None
    assert precision.bfloat16_hardware(str(tmp_path / "missing")) is None


@pytest.mark.large  # three fresh interpreters
def test_every_command_takes_the_precision_flag_and_start_applies_it():
    script = os.path.join(os.path.dirname(sys.executable), "trapmid-train")
    help_text = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=300)
    assert "--precision: <float32|mixed_bfloat16>" in help_text.stdout
    code = ("import sys, keras; from absl import flags; from trapmid_tf.cli import console; "
            "flags.FLAGS(sys.argv); console.start(); print(keras.config.dtype_policy().name)")
    for flags, expected in ((["--precision=mixed_bfloat16"], "mixed_bfloat16"), ([], "float32")):
        result = subprocess.run([sys.executable, "-c", code, *flags], capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.split()[-1] == expected


# === Training, priors and attacks under mixed_bfloat16 ===


@pytest.mark.parametrize("model_class", [TrapMIDModel, FastTrapMIDModel])
def test_trapmid_fit_step_keeps_float32_variables_and_triggers(mixed, model_class):
    keras.utils.set_random_seed(0)
    model = model_class(small_cnn(SHAPE, CLASSES, width=4), CLASSES, alpha=0.1, seed=0)
    model.compile()
    triggers_before = model.triggers.numpy()
    images, labels = images_and_labels()
    history = model.fit(images, labels, batch_size=16, epochs=1, verbose=0).history
    assert all(np.isfinite(values[0]) for values in history.values()), history
    float_variables_are_float32(model)
    assert model.classifier.compute_dtype == "bfloat16"
    # One signed step of 1e-2 (the default; clipping to [0, 1] only shortens it), in float32.
    step = np.abs(model.triggers.numpy() - triggers_before)
    assert 0 < step.max() <= 1e-2 + 1e-7
    triggered = model.trigger(images, labels)
    assert triggered.dtype == "float32"  # the blend is exact float32 arithmetic
    expected = 0.9 * images + 0.1 * model.triggers.numpy()[labels]
    np.testing.assert_allclose(triggered, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("model_class", [MIDModel, BiDOModel])
def test_baseline_defenses_fit_under_mixed_precision(mixed, model_class):
    """MID's KL and BiDO's HSIC terms are computed in float32 from bfloat16 features."""
    keras.utils.set_random_seed(0)
    model = model_class(small_cnn(SHAPE, CLASSES, width=4))
    model.compile()
    history = model.fit(*images_and_labels(), batch_size=16, epochs=1, verbose=0).history
    assert all(np.isfinite(values[0]) for values in history.values()), history
    float_variables_are_float32(model)


@pytest.fixture(scope="module")
def priors():
    """Every prior after a few steps under mixed_bfloat16 (narrow networks), and its target."""
    with policy("mixed_bfloat16"):
        keras.utils.set_random_seed(1)
        images, _ = images_and_labels()
        public = tf.data.Dataset.from_tensor_slices(images)
        target = small_cnn(SHAPE, CLASSES, width=4, feature_dim=8)
        gan = dict(batch_size=8, base_channels=4, verbose=0)
        trained = {
            "gmi": suite.train_gmi_prior(public, 1, n_critic=2, **gan),
            "kedmi": suite.train_kedmi_prior(public, target, 1, n_critic=1, **gan),
            "plgmi": suite.train_plgmi_prior(images, target, 1, top_n=4, n_dis=2, **gan),
            "lomma": suite.train_lomma_surrogates(
                public, target, 2, students=[small_cnn(SHAPE, CLASSES, width=2, feature_dim=4)],
                batch_size=8, verbose=0,
            ),
        }
    return trained, target, images


@pytest.mark.parametrize("name", ["gmi", "kedmi", "plgmi"])
def test_prior_steps_keep_float32_variables_and_images(priors, name):
    trained, _, _ = priors
    prior = trained[name]
    float_variables_are_float32(prior)
    assert suite.training_steps(prior)["generator_steps"] == 1
    assert prior.generator.compute_dtype == "bfloat16"
    assert prior.generator.outputs[0].dtype == "float32"  # images stay float32


def test_lomma_surrogates_distil_under_mixed_precision(priors):
    trained, _, _ = priors
    (surrogate,) = trained["lomma"].surrogates
    assert surrogate.compute_dtype == "bfloat16"
    assert trained["lomma"].steps == {"distillation_steps": [2]}
    assert trained["lomma"].p_reg.dtype == np.float32 and np.isfinite(trained["lomma"].p_reg).all()


@pytest.mark.filterwarnings("ignore:BREP-MI found no initial point")
@pytest.mark.parametrize("name", suite.ATTACKS)
def test_one_inversion_iteration_of_every_attack(mixed, priors, name):
    trained, target, images = priors
    settings = suite.InversionSettings(iterations=1, plgmi_iterations=1, mi_face_iterations=1)
    options = {
        "plgmi_adaptive": dict(signatures=np.random.default_rng(0).normal(size=(CLASSES, 8))),
        "plgmi_adaptive_estimated": dict(public_images=images, top_n=2),
        "trigger_recovery": dict(public_images=images, iterations=1),
        suite.LOOKUP: dict(public_images=images),
        suite.TRANSFER_NULL: dict(public_images=images, iterations=1),
        "brep_mi": dict(max_iterations=1, initial_batch=8, max_initial_batches=1),
    }.get(name, {})
    attack = suite.build_attack(name, trained, settings, **options)
    result = attack.invert(target, [0, 2], per_class=2, seed=0, verbose=0)
    assert result.images.dtype == np.float32 and result.images.shape == (4, *SHAPE)
    assert np.isfinite(result.images).all()
    assert result.images.min() >= 0.0 and result.images.max() <= 1.0
    if name in (suite.LOOKUP, suite.TRANSFER_NULL):  # latents: indices of public images
        assert np.issubdtype(np.asarray(result.latents).dtype, np.integer)
    elif result.latents is not None:
        assert np.asarray(result.latents).dtype == np.float32


# === Values: bfloat16 against float32 ===


def test_mixed_logits_and_identity_loss_are_within_the_bfloat16_bound():
    """A Dense classifier's logits and the attacks' cross-entropy, bf16 against float32.

    A logit `sum_i x_i w_i + b` in bfloat16 rounds the n inputs, the n weights, each of the n
    products and partial sums (accumulating in bfloat16 at worst) and the bias: at most
    n + 3 roundings of relative size 2**-8 of at most `S = sum_i |x_i w_i| + |b|` each. The
    cross-entropy from logits moves by at most twice the largest logit change.
    """
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(5, 6)).astype("float32")
    kernel, bias = rng.normal(size=(6, 4)).astype("float32"), rng.normal(size=4).astype("float32")
    labels = np.array([0, 1, 2, 3, 0], dtype="int32")

    def classifier():
        layer = keras.layers.Dense(4)
        model = keras.Sequential([keras.Input((6,)), layer])
        layer.set_weights([kernel, bias])
        return model

    reference = classifier()
    with policy("mixed_bfloat16"):
        mixed_model = classifier()
    exact = reference(inputs).numpy()
    rounded = mixed_model(inputs)
    assert rounded.dtype == "bfloat16"
    scale = np.abs(inputs) @ np.abs(kernel) + np.abs(bias)
    bound = (inputs.shape[1] + 3) * BFLOAT16_ROUNDING * scale
    error = np.abs(rounded.numpy().astype("float32") - exact)
    assert np.all(error <= bound), (error, bound)
    assert error.max() > 0  # the mixed model did compute in bfloat16
    exact_loss = cross_entropy_identity_loss(reference)(inputs, labels)
    mixed_loss = cross_entropy_identity_loss(mixed_model)(inputs, labels)
    assert mixed_loss.dtype == "float32"
    np.testing.assert_array_less(np.abs(mixed_loss - exact_loss), 2 * bound.max(axis=1) + 1e-6)
