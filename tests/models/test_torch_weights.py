"""PyTorch checkpoints into the zoo: reader, key mapping, and outputs against PyTorch's.

The fixtures (tests/models/fixtures, written once by make_torch_fixtures.py with torch 2.13)
are small versions of the reference networks; the Keras models are built the same size by
patching the zoo's width tables (the builders read them at call time).

Tolerance: every output is compared at 1e-4 absolute. The networks hold O(1) activations (BN
statistics calibrated on random inputs, |logits| <= ~10) and run in float32 (unit roundoff
u = 6e-8). The longest dot products here have n <= 1600 terms (facenet_eval's head Dense,
32·7·7 inputs; the GMI generator's first 5x5 conv-transpose, 64·25): their rounding error is
at most ~n·u = 1e-4 in the worst case and ~sqrt(n)·u = 2.4e-6 typically. Over the 15-30
layers these errors add up like a random walk, a few 1e-6 on the outputs (measured: at most
8e-6), while any mapping error (a transposed kernel, a permuted channel, a wrong BN term)
moves the outputs by O(0.1-1). 1e-4 is ten times the expected float32 noise and three orders
of magnitude below a mapping error.
"""

import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from trapmid_tf.models import cgan, gan, irse, vgg
from trapmid_tf.models.features import features_and_logits
from trapmid_tf.models.torch_checkpoint import read_torch_checkpoint, state_dict_from_checkpoint
from trapmid_tf.models.torch_weights import (
    assign_torch_state_dict,
    load_torch_weights,
    torch_state_dict_shapes,
)
from tests.numpy_reference import to_numpy

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TOLERANCE = 1e-4  # see the module docstring
NUM_CLASSES = 5
# The small sizes of make_torch_fixtures.py.
VGG_BLOCKS = ((4, 2), (8, 2), (8, 3), (16, 3), (16, 3))
IR_DEPTHS = (8, 16, 24, 32)
IR_FEATURE = 16
IR_UNITS = {"facenet64": (2, 2, 2, 2), "ir152": (1, 2, 3, 1), "facenet_eval": (1, 1, 2, 1)}


def fixture(name):
    return os.path.join(FIXTURES, name)


def arrays(name):
    return np.load(fixture(f"{name}.npz"))


@pytest.fixture
def small_zoo(monkeypatch):
    """Builders of the fixtures' small networks."""
    monkeypatch.setattr(vgg, "VGG16_BLOCKS", VGG_BLOCKS)
    monkeypatch.setattr(irse, "STAGE_DEPTHS", IR_DEPTHS)
    monkeypatch.setattr(irse, "FEATURE_DIM", IR_FEATURE)
    monkeypatch.setattr(irse, "IR50_UNITS", IR_UNITS["facenet64"])
    monkeypatch.setattr(irse, "IR152_UNITS", IR_UNITS["ir152"])

    def build(name, **kwargs):
        if name == "facenet_eval":
            monkeypatch.setattr(irse, "IR50_UNITS", IR_UNITS["facenet_eval"])
        builders = {
            "vgg16_bn": lambda: vgg.vgg16_bn((64, 64, 3), NUM_CLASSES),
            "facenet64": lambda: irse.facenet64((64, 64, 3), NUM_CLASSES),
            "ir152": lambda: irse.ir152((64, 64, 3), NUM_CLASSES),
            "facenet_eval": lambda: irse.facenet_eval((64, 64, 3), NUM_CLASSES, **kwargs),
            "dcgan_generator": lambda: gan.dcgan_generator((64, 64, 3), 100, 8),
            "resnet_generator": lambda: cgan.resnet_generator((64, 64, 3), NUM_CLASSES, 128, 4),
        }
        return builders[name]()

    return build


def chw_to_hwc(features, channels):
    """The reference VGG16 feature (CHW flatten) in the Keras model's HWC order."""
    side = int(round((features.shape[1] / channels) ** 0.5))
    return features.reshape(-1, channels, side, side).transpose(0, 2, 3, 1).reshape(len(features), -1)


# ---- outputs against PyTorch ----


@pytest.mark.parametrize("name", ["vgg16_bn", "facenet64", "ir152"])
def test_target_classifiers_match_pytorch(small_zoo, name):
    model = load_torch_weights(small_zoo(name), fixture(f"{name}.pth"), name)
    expected = arrays(name)
    features, logits = features_and_logits(model)(expected["images"], training=False)
    reference_features = expected["features"]
    if name == "vgg16_bn":
        reference_features = chw_to_hwc(reference_features, VGG_BLOCKS[-1][0])
    np.testing.assert_allclose(to_numpy(logits), expected["logits"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(to_numpy(features), reference_features, atol=TOLERANCE, rtol=0)
    assert np.abs(expected["logits"]).max() > 0.5  # not a vacuous comparison


@pytest.mark.parametrize(
    "align_corners,suffix", [(True, "align_corners"), (False, "half_pixel")]
)
def test_evaluation_facenet_matches_pytorch_on_resized_inputs(small_zoo, align_corners, suffix):
    model = small_zoo("facenet_eval", align_corners=align_corners)
    load_torch_weights(model, fixture("facenet_eval.pth"), "facenet_eval")
    expected = arrays("facenet_eval")
    # The resize alone against F.interpolate(..., mode="bilinear", align_corners=...). The
    # source coordinate (up to 64) is computed in float32 by both, so interpolation weights
    # may differ by ~64·u = 4e-6, times a neighbour difference of at most 1.
    resized = to_numpy(model.get_layer("resize")(expected["images"]))
    np.testing.assert_allclose(resized, expected[f"resized_{suffix}"], atol=1e-5, rtol=0)
    features, logits = features_and_logits(model)(expected["images"], training=False)
    np.testing.assert_allclose(to_numpy(logits), expected[f"logits_{suffix}"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(
        to_numpy(features), expected[f"features_{suffix}"], atol=TOLERANCE, rtol=0
    )


def test_the_two_resize_conventions_differ():
    expected = arrays("facenet_eval")
    gap = np.abs(expected["resized_align_corners"] - expected["resized_half_pixel"]).max()
    assert gap > 0.05


def test_gmi_generator_matches_pytorch(small_zoo):
    model = load_torch_weights(small_zoo("dcgan_generator"), fixture("dcgan_generator.pth"),
                               "dcgan_generator")
    expected = arrays("dcgan_generator")
    images = to_numpy(model(expected["latents"], training=False))
    np.testing.assert_allclose(images, expected["images"], atol=TOLERANCE, rtol=0)


def test_plgmi_generator_matches_pytorch(small_zoo):
    model = load_torch_weights(small_zoo("resnet_generator"), fixture("resnet_generator.pth"),
                               "resnet_generator")
    expected = arrays("resnet_generator")
    images = to_numpy(model([expected["latents"], expected["labels"]], training=False))
    # Ours maps the reference's tanh output t to (t + 1) / 2.
    np.testing.assert_allclose(images, (expected["images"] + 1) / 2, atol=TOLERANCE, rtol=0)


# ---- full-size layouts ----


@pytest.mark.parametrize(
    "name,build",
    [
        ("vgg16_bn", lambda: vgg.vgg16_bn((64, 64, 3), 1000)),
        ("facenet64", lambda: irse.facenet64((64, 64, 3), 1000)),
        ("facenet_eval", lambda: irse.facenet_eval((64, 64, 3), 1000)),
        ("dcgan_generator", lambda: gan.dcgan_generator((64, 64, 3))),
        ("resnet_generator", lambda: cgan.resnet_generator((64, 64, 3), 1000)),
        pytest.param("ir152", lambda: irse.ir152((64, 64, 3), 1000), marks=pytest.mark.slow),
    ],
)
def test_full_size_layout_is_the_references(name, build):
    """Every key and shape of the reference's full-size state dict (recorded from the PyTorch
    modules, no weights) is what the mapping expects of our full-size model."""
    with open(fixture("reference_shapes.json")) as file:
        reference = {key: tuple(shape) for key, shape in json.load(file)[name].items()}
    assert torch_state_dict_shapes(build(), name) == reference


# ---- errors ----


def test_unknown_missing_and_mismatched_keys_named_in_one_error(small_zoo):
    model = small_zoo("resnet_generator")
    before = [to_numpy(w).copy() for w in model.weights]
    with pytest.raises(ValueError) as info:
        load_torch_weights(model, fixture("resnet_generator_mismatched.pth"), "resnet_generator")
    message = str(info.value)
    assert "4 problems" in message
    assert "unknown key 'block2.c1.kernel', shape (32, 64, 3, 3)" in message
    assert "unknown key 'block9.c1.weight', shape (3,)" in message
    assert "missing key 'block2.c1.weight', expected shape (32, 64, 3, 3)" in message
    assert "'conv6.weight': expected (3, 4, 1, 1), received (2, 4, 1, 1)" in message
    for old, new in zip(before, model.weights):  # all or nothing: nothing was assigned
        np.testing.assert_array_equal(old, to_numpy(new))


def test_nonzero_frozen_vgg_bias_is_refused(small_zoo):
    state = state_dict_from_checkpoint(read_torch_checkpoint(fixture("vgg16_bn.pth")))
    state["bn.bias"] = state["bn.bias"] + 0.5
    with pytest.raises(ValueError, match=r"'bn\.bias' must be all zeros"):
        assign_torch_state_dict(small_zoo("vgg16_bn"), state, "vgg16_bn")


def test_checkpoint_of_another_architecture_is_refused(small_zoo):
    with pytest.raises(ValueError, match="missing key 'feature.input_layer.0.weight'"):
        load_torch_weights(small_zoo("facenet64"), fixture("vgg16_bn.pth"), "facenet64")


def test_model_of_another_architecture_is_refused(small_zoo):
    with pytest.raises(ValueError, match=r"no layer 'stem_conv'.*'ir152'"):
        load_torch_weights(small_zoo("vgg16_bn"), fixture("ir152.pth"), "ir152")


def test_unknown_architecture_is_refused(small_zoo):
    with pytest.raises(ValueError, match=r"`architecture` must be one of .*received 'resnet50'"):
        load_torch_weights(small_zoo("vgg16_bn"), fixture("vgg16_bn.pth"), "resnet50")


# ---- the reader ----


def test_reader_rebuilds_dtypes_and_layouts():
    checkpoint = read_torch_checkpoint(fixture("tensor_zoo.pth"))
    expected = arrays("tensor_zoo")
    assert sorted(checkpoint["tensors"]) == sorted(expected.files)
    for name in expected.files:
        array = checkpoint["tensors"][name]
        assert array.dtype == expected[name].dtype, name
        np.testing.assert_array_equal(array, expected[name])
    assert checkpoint["meta"] == {
        "epoch": 7, "betas": (0.5, 0.999), "name": "zoo", "flags": [True, None]
    }


@pytest.mark.parametrize(
    "name,key",
    [
        ("facenet64", None),  # a plain state dict
        ("ir152", None),  # {'state_dict': {'module.…': …}}
        ("resnet_generator", None),  # {'model': …, 'opt': …} (PLG-MI)
        ("resnet_generator", "model"),
    ],
)
def test_state_dict_found_and_data_parallel_prefix_removed(name, key):
    state = state_dict_from_checkpoint(read_torch_checkpoint(fixture(f"{name}.pth")), key)
    assert state and not any(k.startswith("module.") for k in state)
    assert all(isinstance(v, np.ndarray) for v in state.values())


def test_checkpoint_without_state_dict_names_its_keys():
    checkpoint = read_torch_checkpoint(fixture("tensor_zoo.pth"))
    with pytest.raises(ValueError, match=r"no state dict.*\['meta', 'tensors'\]"):
        state_dict_from_checkpoint(checkpoint)
    with pytest.raises(ValueError, match=r"`key` 'weights' is not in the checkpoint"):
        state_dict_from_checkpoint(checkpoint, key="weights")


def rewrite_archive(source, target, change):
    """Copies a zip, passing each member's (name, bytes) through `change`."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            new.writestr(name, change(name, old.read(name)))


class _Command:
    """Pickles as a call of os.system, the classic malicious checkpoint."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_forbidden_global_is_refused_and_not_called(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps({"weight": _Command(f"touch {marker}")}, protocol=2)
    path = tmp_path / "evil.pth"
    rewrite_archive(
        fixture("tensor_zoo.pth"), path,
        lambda name, data: payload if name.endswith("data.pkl") else data,
    )
    with pytest.raises(ValueError, match=r"global (posix|os|nt)\.system.*refused"):
        read_torch_checkpoint(path)
    assert not marker.exists()


def test_truncated_storage_is_reported(tmp_path):
    path = tmp_path / "truncated.pth"
    rewrite_archive(
        fixture("vgg16_bn.pth"), path,
        lambda name, data: data[:-4] if name.endswith("/data/0") else data,
    )
    with pytest.raises(ValueError, match=r"data/0.*corrupted"):
        read_torch_checkpoint(path)


def test_truncated_pickle_is_reported(tmp_path):
    path = tmp_path / "cut.pth"
    rewrite_archive(
        fixture("vgg16_bn.pth"), path,
        lambda name, data: data[: len(data) // 2] if name.endswith("data.pkl") else data,
    )
    with pytest.raises(ValueError, match="not a readable torch.save file"):
        read_torch_checkpoint(path)


def test_not_a_zip_and_missing_file(tmp_path):
    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps({"a": 1}) + b"\x00" * 16)
    with pytest.raises(ValueError, match="not a zip-format torch.save file"):
        read_torch_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        read_torch_checkpoint(tmp_path / "absent.pth")


def _unicode(text):
    """Pickle opcode BINUNICODE for `text`."""
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def test_storage_read_past_its_end_is_reported(tmp_path):
    """A hand-written pickle whose tensor (100 elements) overruns its storage ("0")."""
    with zipfile.ZipFile(fixture("tensor_zoo.pth")) as archive:
        prefix = [n for n in archive.namelist() if n.endswith("data.pkl")][0][: -len("data.pkl")]
        numel = len(archive.read(f"{prefix}data/0")) // 4
    assert numel < 100
    payload = (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n("  # PROTO 2, GLOBAL, MARK
        + b"(" + _unicode("storage") + b"ctorch\nFloatStorage\n" + _unicode("0")
        + _unicode("cpu") + b"J" + numel.to_bytes(4, "little") + b"tQ"  # persistent id
        + b"K\x00" + b"Kd\x85" + b"K\x01\x85" + b"\x89N"  # offset 0, size (100,), stride (1,)
        + b"tR."
    )
    path = tmp_path / "overrun.pth"
    rewrite_archive(
        fixture("tensor_zoo.pth"), path,
        lambda name, data: payload if name.endswith("data.pkl") else data,
    )
    with pytest.raises(ValueError, match=rf"reads element 99 of a storage of {numel} elements"):
        read_torch_checkpoint(path)
