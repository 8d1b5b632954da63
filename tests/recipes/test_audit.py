"""trapmid-audit: the checks of a user's model and folders, and one tiny audit end to end.

The private classes are two class folders of 16x16 grayscale images: "a_dark" (pixels near
0.2) and "b_bright" (near 0.8), so label 0 is dark and label 1 bright. The models are built
by hand: global average pooling, then a Dense layer whose logit difference (bright minus dark)
is 2k(mean - t) for a threshold t. With t = 0.5 the model classifies images in [0, 1]
perfectly; t = 127.5 is the same model for inputs in [0, 255], t = 0 for inputs in [-1, 1],
and t = 2 puts every image in one class in each of the three ranges (chance).
"""

import hashlib
import json

import keras
import numpy as np
import pytest

from trapmid_tf.experiments import audit
from trapmid_tf.experiments.pipeline import pipeline_settings

SIDE = 16
PER_CLASS = 12  # test_fraction 0.5: 6 held out per class, 12 in all
CLASSES = ("a_dark", "b_bright")
LEVELS = {"a_dark": 0.2, "b_bright": 0.8}
PUBLIC_IMAGES = 64  # one batch of the GMI prior (64, the last short batch dropped)
NO_PRIOR_ATTACKS = ["lookup", "transfer_null", "mi_face"]


def write_images(folder, count, level, rng, side=SIDE, channels=1):
    """`count` PNGs of noise around `level` (in [0, 1]) into `folder`."""
    folder.mkdir(parents=True)
    for index in range(count):
        pixels = np.clip(level + rng.uniform(-0.1, 0.1, (side, side, channels)), 0, 1)
        keras.utils.save_img(folder / f"{index}.png", pixels * 255, scale=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """`(private_dir, public_dir)`: the two classes, and public images at mid grey."""
    root = tmp_path_factory.mktemp("audit_data")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        write_images(root / "private" / name, PER_CLASS, LEVELS[name], rng)
    write_images(root / "public", PUBLIC_IMAGES, 0.5, rng)
    return str(root / "private"), str(root / "public")


def brightness_model(path, threshold, side=SIDE, channels=1, classes=2, activation=None):
    """Saves the hand-built model of the module docstring (k = 10) at `path`; returns it."""
    model = keras.Sequential([
        keras.Input((side, side, channels)),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(classes, activation=activation, name="logits"),
    ])
    kernel = np.zeros((channels, classes), np.float32)
    kernel[:, 0], kernel[:, 1] = -10 / channels, 10 / channels
    bias = np.zeros(classes, np.float32)
    bias[:2] = 10 * threshold, -10 * threshold
    model.layers[-1].set_weights([kernel, bias])
    model.save(path)
    return str(path)


def check(model, folders, attacks=None, **options):
    """`check_audit` with the tiny preset's attacks (or `attacks`), half of each class held out."""
    private_dir, public_dir = folders
    options = dict(dict(public_dir=public_dir, test_fraction=0.5), **options)
    return audit.check_audit(
        model, private_dir, attacks=attacks or pipeline_settings("tiny")["attacks"], **options
    )


def test_a_model_that_classifies_the_held_out_images_is_accepted(folders, tmp_path):
    path = brightness_model(tmp_path / "model.keras", threshold=0.5)
    inputs = check(path, folders)
    # Means near 0.2 and 0.8 against the threshold 0.5: every held-out image is right.
    assert inputs.description["held_out_accuracy"] == 1.0
    assert inputs.description["held_out_images"] == 2 * PER_CLASS // 2
    assert inputs.description["classes"] == list(CLASSES)
    with open(path, "rb") as stream:
        assert inputs.config["model_sha256"] == hashlib.sha256(stream.read()).hexdigest()
    assert tuple(inputs.public.element_spec.shape) == (SIDE, SIDE, 1)


def test_a_missing_or_unloadable_model_is_refused(folders, tmp_path):
    with pytest.raises(FileNotFoundError, match="--model"):
        check(str(tmp_path / "absent.keras"), folders)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a keras file")
    with pytest.raises(ValueError, match="--model .* could not be loaded"):
        check(str(broken), folders)


def test_images_of_another_size_need_image_size(folders, tmp_path):
    path = brightness_model(tmp_path / "small.keras", threshold=0.5, side=8)
    with pytest.raises(ValueError, match=r"--image_size=8"):
        check(path, folders)
    # Resized to 8x8 (both folders), the images keep their brightness.
    assert check(path, folders, image_size=8).description["held_out_accuracy"] == 1.0


def test_images_of_other_channels_are_refused(folders, tmp_path):
    path = brightness_model(tmp_path / "rgb.keras", threshold=0.5, channels=3)
    with pytest.raises(ValueError, match="3-channel images"):
        check(path, folders)


def test_outputs_other_than_one_per_class_folder_are_refused(folders, tmp_path):
    path = brightness_model(tmp_path / "three.keras", threshold=0.5, classes=3)
    with pytest.raises(ValueError, match=r"one logit per class folder .*\(2: .* it gives 3"):
        check(path, folders)



def test_a_judge_with_fewer_outputs_than_private_classes_is_refused_before_any_work(
        folders, tmp_path):
    path = brightness_model(tmp_path / "model.keras", threshold=0.5)
    one_class = keras.Sequential([keras.Input((SIDE, SIDE, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(1)])
    one_class.save(tmp_path / "judge.keras")
    with pytest.raises(ValueError, match=r"--evaluation_model must judge the 2 private classes"
                                         r".* it gives 1 outputs"):
        check(path, folders, evaluation_model=str(tmp_path / "judge.keras"))
    # The audited model itself, 2 outputs, is an acceptable judge.
    assert check(path, folders, evaluation_model=path).description["classes"] == list(CLASSES)

@pytest.mark.parametrize("side, channels", [(8, 1), (SIDE, 3)])
def test_public_images_of_another_shape_are_refused(folders, tmp_path, side, channels):
    public = tmp_path / "public"
    write_images(public, 4, 0.5, np.random.default_rng(1), side, channels)
    path = brightness_model(tmp_path / "model.keras", threshold=0.5)
    with pytest.raises(ValueError, match="--public_dir must hold images"):
        check(path, folders, public_dir=str(public))


def test_a_side_the_gan_priors_cannot_make_is_refused_unless_no_prior_runs(folders, tmp_path):
    path = brightness_model(tmp_path / "twelve.keras", threshold=0.5, side=12)
    with pytest.raises(ValueError, match=r"4 \* 2\*\*k"):
        check(path, folders, image_size=12)
    inputs = check(path, folders, attacks=NO_PRIOR_ATTACKS, image_size=12)
    assert inputs.description["held_out_accuracy"] == 1.0


def test_probabilities_are_refused(folders, tmp_path):
    path = brightness_model(tmp_path / "softmax.keras", threshold=0.5, activation="softmax")
    with pytest.raises(ValueError, match="must output logits"):
        check(path, folders)


@pytest.mark.parametrize("threshold, expected", [(127.5, r"\[0, 255\]"), (0.0, r"\[-1, 1\]")])
def test_a_model_for_another_input_range_is_refused(folders, tmp_path, threshold, expected):
    # In [0, 1] every mean is below 127.5 (above 0): one class for all, accuracy 0.5 = chance;
    # scaled to the model's range the means fall on both sides of its threshold.
    path = brightness_model(tmp_path / "range.keras", threshold=threshold)
    with pytest.raises(ValueError, match=rf"expects another input range: .* 0\.500 in \[0, 1\] "
                                         rf"\(chance 0\.500\) but 1\.000 .* scaled to {expected}"):
        check(path, folders)


def test_a_model_at_chance_is_refused(folders, tmp_path):
    # Threshold 2: means in [0, 1] and [-1, 1] all below it, means in [0, 255] (51, 204) all
    # above it: one class for every image in every range, accuracy 0.5 = chance.
    path = brightness_model(tmp_path / "chance.keras", threshold=2.0)
    with pytest.raises(ValueError, match=r"better than chance \(0\.500\); .* is 0\.500 .* in "
                                         r"\[0, 1\], 0\.500 in \[0, 255\], 0\.500 in \[-1, 1\]\."):
        check(path, folders)


@pytest.mark.large  # the tiny preset's priors and attacks (about a minute)
def test_a_tiny_audit_writes_the_report_with_the_lookup_row(folders, tmp_path):
    path = brightness_model(tmp_path / "model.keras", threshold=0.5)
    settings = pipeline_settings("tiny")
    inputs = check(path, folders)
    out = tmp_path / "audit"
    results = audit.run_audit(str(out), settings, inputs, "tiny")
    stored = json.loads((out / "results.json").read_text())
    assert list(stored["defenses"]) == [audit.AUDITED]
    scores = stored["defenses"][audit.AUDITED]
    # The lookup and the transfer null first (results.json sorts its keys; the dict returned
    # keeps the run's order).
    assert list(results["defenses"][audit.AUDITED]["attacks"]) == settings["attacks"]
    assert settings["attacks"][:2] == ["lookup", "transfer_null"]
    assert set(scores["attacks"]) == set(settings["attacks"])
    assert scores["accuracy"]["mean"] == 1.0
    assert stored["attacked_classes"] == 2 and stored["model"]["classes"] == list(CLASSES)
    # The judge trained on the 12 held-out images; the pixel judge compares with them.
    assert stored["pixel_judge"]["images"] == 12
    # 2 classes x 2 reconstructions per class (tiny), per attack.
    assert len(scores["attacks"]["lookup"]["groups"]["top1"][0]) == 4
    report = (out / "report.md").read_text()
    assert any(line.startswith(f"| {audit.AUDITED} ") for line in report.splitlines())
    assert "lookup aa1" in report and "![lookup](grids/lookup.png)" in report
    assert results["model"]["sha256"] == stored["model"]["sha256"]
    # A second run reuses every stage: the same reconstructions.
    again = audit.run_audit(str(out), settings, inputs, "tiny")
    assert again["defenses"] == json.loads(json.dumps(results["defenses"]))


def test_the_command_needs_its_folders_and_takes_the_pipelines_budget_flags():
    from tests.cli_cases import command_outcomes

    given = ["--model=m.keras", "--private_dir=p", "--public_dir=q", "--out=x"]
    cases = [{"argv": [flag for flag in given if not flag.startswith(f"--{name}=")]}
             for name in ("model", "private_dir", "public_dir", "out")]
    cases += [{"argv": [*given, "--preset=tiny", "--gmi_steps=0"]},
              {"argv": [*given, "--preset=tiny", "--gmi_steps=3", "--seeds=0,1"]}]
    outcomes = command_outcomes("trapmid_tf.cli.audit", cases)
    for name, outcome in zip(("model", "private_dir", "public_dir", "out"), outcomes):
        assert outcome == {"message": f"--{name} must be set.", "started": False, "written": []}
    assert outcomes[4]["message"] == "--gmi_steps must be positive; received 0."
    assert outcomes[5] == {"message": "", "started": True, "written": []}
