"""recipes/compare_reference.py: its torch-free parts, and (slow) the comparison itself."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from tests.recipes.recipe_loader import load_recipe

ROOT = pathlib.Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "compare_reference.py"
TORCH_PYTHON = os.environ.get("TRAPMID_TORCH_PYTHON", "/work/torchenv/bin/python")
REFERENCE_REPO = os.environ.get("TRAPMID_REFERENCE_REPO", "/work/trapmid_ref")


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("compare_reference")


def test_relative_difference_scales_by_the_largest_reference_entry(recipe):
    # |2.001 - 2| / max(|1|, |-2|) = 5e-4, by hand; a zero entry of the reference is fine.
    ours, reference = np.array([1.0, -2.001, 0.0]), np.array([1.0, -2.0, 0.0])
    assert recipe.relative_difference(ours, reference) == pytest.approx(5e-4, rel=1e-12)
    assert recipe.relative_difference(reference, reference) == 0.0


def test_relative_difference_counts_differing_indices(recipe):
    ours, reference = np.array([[3, 1], [4, 0]]), np.array([[3, 1], [0, 4]])
    assert recipe.relative_difference(ours, reference) == 0.5


def test_relative_difference_of_an_all_zero_reference_is_zero_or_infinite(recipe):
    assert recipe.relative_difference(np.zeros(2), np.zeros(2)) == 0.0
    assert recipe.relative_difference(np.array([0.0, 1e-30]), np.zeros(2)) == float("inf")


def test_relative_difference_rejects_other_shapes(recipe):
    with pytest.raises(ValueError, match="shape"):
        recipe.relative_difference(np.zeros(3), np.ones(2))


def test_largest_difference_is_the_worst_array_and_needs_the_same_keys(recipe):
    reference = {"a": np.array([1.0, 1.0]), "b": np.array([4.0])}
    ours = {"a": np.array([1.0, 1.1]), "b": np.array([4.0 + 4e-3])}
    assert recipe.largest_difference(ours, reference) == pytest.approx(0.1, rel=1e-9)
    with pytest.raises(ValueError, match="'a'"):
        recipe.largest_difference({"b": ours["b"]}, reference)


def test_npz_exchange_keeps_values_and_dtypes(recipe, tmp_path):
    arrays = {"x": np.random.default_rng(0).standard_normal((3, 2)),
              "labels": np.arange(4, dtype=np.int64), "steps": np.asarray(5)}
    recipe.save_arrays(tmp_path / "a.npz", arrays)
    loaded = recipe.load_arrays(tmp_path / "a.npz")
    assert set(loaded) == set(arrays)
    for key, value in arrays.items():
        assert loaded[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded[key], value)


@pytest.mark.parametrize(
    "row", ["knn", "fid", "topn", "gmi", "kedmi", "lomma", "gmi_prior", "kedmi_prior", "plgmi",
            "plgmi_prior", "trapmid_vgg16", "trapmid_ir18", "trapmid_negls", "negls", "bido"]
)
def test_inputs_are_float32_values_and_reproducible(recipe, row):
    arrays = recipe.make_inputs(row, seed=3, steps=4)
    again = recipe.make_inputs(row, seed=3, steps=4)
    for key, value in arrays.items():
        np.testing.assert_array_equal(again[key], value)
        if value.dtype == np.float64:  # read exactly by a float32 cast on either side
            np.testing.assert_array_equal(value.astype(np.float32).astype(np.float64), value)
    if row == "kedmi":
        assert arrays["eps"].shape == (4, recipe.IDENTITIES, recipe.RESTARTS, recipe.Z_DIM)
    if row in ("gmi_prior", "kedmi_prior"):  # 4 critic steps: 4 latents, no generator step
        assert arrays["normal"].shape == (4, recipe.PRIOR_BATCH, recipe.Z_DIM)
        assert ("uniform" in arrays) == (row == "gmi_prior")
    if row == "plgmi_prior":  # generator steps before critic steps 0 and N_CRITIC (= 5) > 4
        assert arrays["generator_z"].shape == (1, recipe.PRIOR_BATCH, recipe.Z_DIM)
        assert arrays["critic_y"].shape == (4, recipe.PRIOR_BATCH)
        assert 0.0 <= arrays["noise"].min() and arrays["noise"].max() < 1.0 / 256.0


@pytest.mark.parametrize("row, side, classes, batch, channels", [
    ("trapmid_vgg16", 64, 4, 2, 3), ("trapmid_ir18", 32, 5, 4, 1), ("negls", 32, 5, 4, 0)])
def test_training_inputs_hold_batches_labels_and_triggers(recipe, row, side, classes, batch,
                                                          channels):
    arrays = recipe.make_inputs(row, seed=1, steps=3)
    assert arrays["images"].shape == (3, batch, side, side, 3)
    assert arrays["labels"].shape == (3, batch)
    assert arrays["labels"].min() >= 0 and arrays["labels"].max() < classes
    assert arrays["probes"].shape == (recipe.PROBES, side, side, 3)
    assert 0.0 <= arrays["images"].min() and arrays["images"].max() < 1.0
    if channels:  # the reference's (classes, channels, H, W) triggers, U[0, 1)
        assert arrays["triggers"].shape == (classes, channels, side, side)
        assert 0.0 <= arrays["triggers"].min() and arrays["triggers"].max() < 1.0
        assert arrays["trapdoor_labels"].shape == (3, batch)
    else:  # NegLS alone: no trapdoor
        assert "triggers" not in arrays and "trapdoor_labels" not in arrays


def test_ir18_map_names_torchvision_resnet18_state_dict(recipe):
    """The recipe's IR-18 map asks for exactly the reference `IR18`'s state dict."""
    from trapmid_tf.models import ir18, torch_weights

    torch_weights.ARCHITECTURES.setdefault("ir18", recipe._map_ir18)
    shapes = torch_weights.torch_state_dict_shapes(ir18((32, 32, 3), 5), "ir18")
    # torchvision ResNet-18 without the BatchNorm counters: stem conv + BN (1 + 4), 8 basic
    # blocks of two convs and two BNs (8 x 10), 3 downsampling conv + BN (3 x 5), fc (2).
    assert len(shapes) == 1 + 4 + 80 + 15 + 2
    assert shapes["feature.0.weight"] == (64, 3, 7, 7)
    assert shapes["feature.4.1.bn2.running_var"] == (64,)
    assert shapes["feature.5.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert shapes["feature.7.1.conv2.weight"] == (512, 512, 3, 3)
    assert shapes["fc_layer.weight"] == (5, 512)


def test_make_inputs_rejects_an_unknown_row(recipe):
    with pytest.raises(ValueError, match="'mid'"):  # MID has no reference to compare with
        recipe.make_inputs("mid", seed=0, steps=1)


def test_keras_classifier_is_the_torch_module_in_numpy(recipe):
    """The Keras network equals the PyTorch module's definition written in NumPy (NCHW)."""
    arrays = recipe.make_inputs("topn", seed=0, steps=1)
    images = arrays["images"][:3]
    nchw = np.pad(images.transpose(0, 3, 1, 2), ((0, 0), (0, 0), (1, 1), (1, 1)))
    weight, side = arrays["T.conv.weight"], recipe.SIDE
    conv = np.zeros((3, recipe.CHANNELS, side, side))
    for i in range(side):
        for j in range(side):
            conv[:, :, i, j] = np.einsum("bchw,ochw->bo", nchw[:, :, i:i + 3, j:j + 3], weight)
    hidden = np.tanh(conv + arrays["T.conv.bias"][None, :, None, None]).reshape(3, -1)
    hidden = np.maximum(hidden @ arrays["T.fc.weight"].T + arrays["T.fc.bias"], 0.0)
    logits = hidden @ arrays["T.out.weight"].T + arrays["T.out.bias"]
    ours = np.asarray(recipe._keras_networks(arrays)["T"](images))
    # float64 sums of about 30 products of magnitude ~1: 1e-13 is far above their rounding.
    np.testing.assert_allclose(ours, logits, rtol=0, atol=1e-13)


def _conv3x3(nchw, weight, bias):
    """PyTorch's Conv2d(k=3, padding=1) in NumPy, NCHW."""
    padded = np.pad(nchw, ((0, 0), (0, 0), (1, 1), (1, 1)))
    side = nchw.shape[-1]
    out = np.zeros((len(nchw), len(weight), side, side))
    for i in range(side):
        for j in range(side):
            out[:, :, i, j] = np.einsum("bchw,ochw->bo", padded[:, :, i:i + 3, j:j + 3], weight)
    return out + bias[None, :, None, None]


def test_keras_conditional_networks_are_the_torch_modules_in_numpy(recipe):
    """PLG-MI's small G(z, y) and projection D(x, y) equal their PyTorch definitions."""
    arrays = recipe.make_inputs("plgmi_prior", seed=0, steps=1)
    networks = recipe._keras_networks(arrays)
    z, y = arrays["critic_z"][0], arrays["critic_y"][0]
    side, channels = recipe.SIDE, recipe.GEN_CHANNELS
    x = np.tanh(z @ arrays["G.l1.weight"].T + arrays["G.l1.bias"] + arrays["G.emb.weight"][y])
    x = x.reshape(len(z), channels, side, side)
    images = 1.0 / (1.0 + np.exp(-_conv3x3(x, arrays["G.conv.weight"], arrays["G.conv.bias"])))
    ours = np.asarray(networks["G"]([z, y]))
    # float64 sums of at most ~20 products of magnitude ~1: far above their rounding.
    np.testing.assert_allclose(ours, images.transpose(0, 2, 3, 1), rtol=0, atol=1e-13)
    nhwc = arrays["images"][0]
    feature = np.tanh(_conv3x3(nhwc.transpose(0, 3, 1, 2), arrays["D.conv.weight"],
                               arrays["D.conv.bias"])).reshape(len(nhwc), -1)
    score = feature @ arrays["D.out.weight"].T + arrays["D.out.bias"]
    score += np.sum(arrays["D.emb.weight"][arrays["labels"][0]] * feature, axis=1,
                    keepdims=True)
    ours = np.asarray(networks["D"]([nhwc, arrays["labels"][0]]))
    np.testing.assert_allclose(ours, score, rtol=0, atol=1e-13)


def test_injected_draws_are_handed_out_in_turn_and_reshaped(recipe):
    first, second = np.full((2, 3), 0.5), np.arange(4.0)
    with recipe.injected_draws(keras.random, "normal", [first, second]):
        np.testing.assert_array_equal(keras.random.normal((2, 3)), first)
        np.testing.assert_array_equal(keras.random.normal((4, 1), seed=1), second[:, None])
        with pytest.raises(RuntimeError, match="More random draws"):
            keras.random.normal((1, 4))
    assert keras.random.normal((2,)).shape == (2,)  # restored
    with recipe.injected_draws(keras.random, "randint", [np.array([3, 0, 2])]):
        labels = keras.random.randint((3,), 0, 4, dtype="int32")
    assert keras.backend.standardize_dtype(labels.dtype) == "int32"
    np.testing.assert_array_equal(labels, [3, 0, 2])


def test_injected_draws_must_all_be_taken_at_their_size(recipe):
    with pytest.raises(RuntimeError, match="1 injected draws were not taken"):
        with recipe.injected_draws(keras.random, "normal", [np.zeros(2)]):
            pass
    with pytest.raises(RuntimeError, match="shape"):
        with recipe.injected_draws(keras.random, "normal", [np.zeros(2)]):
            keras.random.normal((3,))


def test_lifted_casts_keep_float64_tensors_and_then_restore(recipe):
    from keras import ops

    from trapmid_tf.attacks import inversion

    value = np.array([1.0 / 3.0, 0.1])
    floatx = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        with recipe.float32_casts_lifted():
            assert keras.backend.standardize_dtype(ops.cast(value, "float32").dtype) == "float64"
            converted = ops.convert_to_tensor(value, "float32")
            np.testing.assert_array_equal(converted, value)  # not rounded to float32
            # The scalar loss cast of `minimize` stays float32 (its gradient is exact).
            assert keras.backend.standardize_dtype(
                ops.cast(np.float64(0.5), "float32").dtype) == "float32"
            weights = inversion.reference_batch_weights(3, 2, identities_per_batch=2)
            np.testing.assert_array_equal(weights, [0.5, 0.5, 0.5, 0.5, 1.0, 1.0])
            assert weights.dtype == np.float64
            assert inversion.reference_batch_weights(3, 1, 60)[0] == 1.0 / 3.0  # not float32's
    finally:
        keras.config.set_floatx(floatx)
    assert keras.backend.standardize_dtype(ops.cast(value, "float32").dtype) == "float32"
    assert keras.backend.standardize_dtype(ops.convert_to_tensor(value, "float32").dtype) == (
        "float32")
    assert inversion.reference_batch_weights(3, 1, 60).dtype == np.float32


def test_format_table_has_one_line_per_row(recipe):
    table = recipe.format_table({
        "knn": {"steps": "-", "as_is": 0.0},
        "kedmi": {"steps": 5, "as_is": 3e-5, "lifted": 2e-5, "lifted_epsilon_zero": 1e-15},
    })
    lines = table.splitlines()
    assert lines[2] == "| knn | - | 0.0e+00 | - | - |"
    assert lines[3] == "| kedmi | 5 | 3.0e-05 | 2.0e-05 | 1.0e-15 |"


@pytest.mark.slow
def test_ours_matches_the_reference_code_in_float64(tmp_path):
    if not os.path.isfile(TORCH_PYTHON):
        pytest.skip(f"No torch-enabled python at {TORCH_PYTHON} (set TRAPMID_TORCH_PYTHON).")
    if not os.path.isfile(os.path.join(REFERENCE_REPO, "plgmi", "baselines", "recovery.py")):
        pytest.skip(f"No Trap-MID checkout at {REFERENCE_REPO} (set TRAPMID_REFERENCE_REPO).")
    subprocess.run(
        [sys.executable, str(RECIPE), f"--reference_python={TORCH_PYTHON}",
         f"--reference_repo={REFERENCE_REPO}", f"--out={tmp_path}", "--steps=5",
         "--prior_steps=10"],
        check=True, cwd=ROOT, capture_output=True,
    )
    results = json.loads((tmp_path / "results.json").read_text())
    for row in ("knn", "fid", "topn"):
        # Same float64 formulas on float32-exact inputs: a few roundings of 1.1e-16 at most.
        assert results[row]["as_is"] <= 1e-13, row
    for row in ("gmi", "lomma"):
        # Our float32 casts: about float32's epsilon (1.2e-7) per step, over 5 steps.
        assert results[row]["as_is"] <= 1e-6, row
        assert results[row]["lifted"] <= 1e-9, row
    # KED-MI and the priors: PyTorch's Adam (`TorchAdam`) on both sides, so lifted they are the
    # same algorithm, epsilon or not.
    for row in ("kedmi", "gmi_prior", "kedmi_prior"):
        assert results[row]["lifted"] <= 1e-9, row
        assert results[row]["lifted_epsilon_zero"] <= 1e-9, row
    # PLG-MI's inversion: each image weighted as in the reference's batches, PyTorch's Adam on
    # both sides, the margins in float64 on both (it casts nothing): float64 rounding over 5
    # steps of Adam (2.6e-15 measured; 8.5e-8 with the loss one over the restarts apart).
    assert results["plgmi"]["as_is"] <= 1e-12
    assert results["plgmi"]["lifted_epsilon_zero"] <= 1e-12
    # PLG-MI's prior: our real images plus noise summed in float32 (plgmi_prior.py:446), about
    # float32's epsilon (6e-8) on the real batch; embedding gradients are dense on both sides.
    assert results["plgmi_prior"]["lifted"] <= 1e-6
    assert results["plgmi_prior"]["lifted_epsilon_zero"] <= 1e-6
    # The training rows (Trap-MID, NegLS, BiDO): with float32 lifted, float64 rounding (about
    # 1e-13 to 1e-11 after the first step; BiDO inverts ridge-regularised kernels) grows 20 to
    # 100 times a step over three steps of fresh networks on batches of 2 to 4; a difference
    # in the algorithm shows at 1e-2 or more (Keras's BatchNorm variance rule: 0.24).
    # Trap-MID + NegLS (Adam) sits higher: where a gradient element is near epsilon, Adam's
    # first step turns a rounding difference d of it into a relative step difference of about
    # d / (4 epsilon); the reference run against itself on images 1 ulp apart lands at 1.4e-6
    # to 8.0e-6 after three steps (8.3e-6 measured for ours). Its epsilon-1e-30 column is not
    # asserted: a bias gradient that is exactly zero in exact arithmetic is +-1e-17 on either
    # side, and Adam without epsilon steps it by +-lr (the reference against itself: 1.08).
    for row in ("trapmid_vgg16", "trapmid_ir18", "negls", "bido"):
        assert results[row]["lifted"] <= 1e-5, row
    assert results["trapmid_negls"]["lifted"] <= 1e-4
