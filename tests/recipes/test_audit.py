"""trapmid-audit: the checks of a user's model and folders, and one tiny audit end to end.

The private classes are two class folders of 16x16 grayscale images: "a_dark" (pixels near
0.2) and "b_bright" (near 0.8), so label 0 is dark and label 1 bright. The models are built
by hand: global average pooling, then a Dense layer whose logit difference (bright minus dark)
is 2k(mean - t) for a threshold t. With t = 0.5 the model classifies images in [0, 1]
perfectly; t = 127.5 is the same model for inputs in [0, 255], t = 0 for inputs in [-1, 1],
and t = 2 puts every image in one class in each of the three ranges (chance).
"""

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from trapmid_tf.experiments import audit
from trapmid_tf.experiments.evaluation import make_evaluator, private_arrays
from trapmid_tf.experiments.pipeline import PipelineRun, pipeline_settings

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
        model, private_dir, attacks=attacks or pipeline_settings("tiny").attacks, **options
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
    with pytest.raises(FileNotFoundError, match="`model` must be a saved Keras classifier file"):
        check(str(tmp_path / "absent.keras"), folders)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a keras file")
    with pytest.raises(ValueError, match="`model` .* could not be loaded"):
        check(str(broken), folders)


@pytest.mark.large  # a TensorFlow process of its own: about 20 s on a shared CPU
def test_the_command_names_its_flag_where_the_library_names_the_setting(folders, tmp_path):
    private_dir, public_dir = folders
    absent = tmp_path / "absent.keras"
    result = subprocess.run(
        [sys.executable, "-m", "trapmid_tf.cli.audit", f"--model={absent}",
         f"--private_dir={private_dir}", f"--public_dir={public_dir}", f"--out={tmp_path / 'x'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1 and not (tmp_path / "x").exists()
    assert result.stderr.splitlines()[-1] == (
        f"--model must be a saved Keras classifier file (.keras); '{absent}' is not a file.")


def test_images_of_another_size_need_image_size(folders, tmp_path):
    path = brightness_model(tmp_path / "small.keras", threshold=0.5, side=8)
    with pytest.raises(ValueError, match=r"set `image_size` to 8 to resize them"):
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
    with pytest.raises(ValueError, match=r"`evaluation_model` must judge the 2 private classes"
                                         r".* it gives 1 outputs"):
        check(path, folders, evaluation_model=str(tmp_path / "judge.keras"))
    # The audited model itself, 2 outputs, is an acceptable judge.
    assert check(path, folders, evaluation_model=path).description["classes"] == list(CLASSES)

@pytest.mark.parametrize("side, channels", [(8, 1), (SIDE, 3)])
def test_public_images_of_another_shape_are_refused(folders, tmp_path, side, channels):
    public = tmp_path / "public"
    write_images(public, 4, 0.5, np.random.default_rng(1), side, channels)
    path = brightness_model(tmp_path / "model.keras", threshold=0.5)
    with pytest.raises(ValueError, match="`public_dir` must hold images"):
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
    assert tuple(results["defenses"][audit.AUDITED]["attacks"]) == settings.attacks
    assert settings.attacks[:2] == ("lookup", "transfer_null")
    assert set(scores["attacks"]) == set(settings.attacks)
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
              {"argv": [*given, "--preset=tiny", "--gmi_steps=3", "--seeds=0,1"]},
              {"argv": [*given, "--other_dir=o"]}]
    outcomes = command_outcomes("trapmid_tf.cli.audit", cases)
    for name, outcome in zip(("model", "private_dir", "public_dir", "out"), outcomes):
        assert outcome == {"message": f"--{name} must be set.", "started": False, "written": []}
    assert outcomes[4]["message"] == "--gmi_steps must be positive; received 0."
    assert outcomes[5] == outcomes[6] == {"message": "", "started": True, "written": []}


# --other_dir: images of no private class that the attacker does not hold, the judges' class
# "other" (label 2 here: two private classes). Mid grey like the public images (public-like).
OTHER_IMAGES = 8


@pytest.fixture(scope="module")
def other_dir(folders):
    """A folder of `OTHER_IMAGES` mid-grey images beside the private and public folders."""
    root = Path(folders[0]).parent / "other"
    write_images(root, OTHER_IMAGES, 0.5, np.random.default_rng(2))
    return str(root)


def png_images(folder):
    """The PNGs of `folder` in sorted name order, as float32 [0, 1] HxWx1 (read with PIL)."""
    names = sorted(path.name for path in Path(folder).iterdir())
    images = []
    for name in names:
        with Image.open(Path(folder) / name) as image:
            images.append(np.asarray(image, np.float32)[..., None] / 255)
    return np.stack(images), names


@pytest.fixture
def trained(monkeypatch):
    """The evaluation model's trainings, recorded and not run: per training the images and
    labels it trained on, its test labels and its number of classes.

    The stand-in judge is GlobalAveragePooling and a Dense "logits" layer that gives the last
    class (label 2 with other images) logit 1 and every other 0, whatever the image.
    """
    from trapmid_tf.experiments import evaluation

    records = []

    def fake_training(train, test, num_classes, build, epochs, seed, verbose):
        images, labels = private_arrays(train)
        records.append(dict(images=images, labels=labels, test_labels=private_arrays(test)[1],
                            classes=num_classes))
        model = keras.Sequential([keras.Input((SIDE, SIDE, 1)),
                                  keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(num_classes, name="logits")])
        bias = np.zeros(num_classes, np.float32)
        bias[-1] = 1.0
        model.layers[-1].set_weights([np.zeros((1, num_classes), np.float32), bias])
        return model, 0.5

    # Patched where `evaluation_model` looks it up (imported there at module level).
    monkeypatch.setattr(evaluation, "train_evaluation_model", fake_training)
    return records


def test_the_audits_settings_record_no_target_training():
    inputs = types.SimpleNamespace(public_description="/data/public (16x16x1)")
    settings = audit.audit_settings(pipeline_settings("tiny", attacks=NO_PRIOR_ATTACKS), inputs)
    assert settings.defenses == (audit.AUDITED,)
    assert settings.public_split == "/data/public (16x16x1)"
    # The pipeline's record of the same settings less the two keys of target training.
    pipeline_record = dataclasses.replace(
        pipeline_settings("tiny", attacks=NO_PRIOR_ATTACKS), defenses=(audit.AUDITED,),
        public_split="/data/public (16x16x1)",
    ).as_dict()
    del pipeline_record["target_epochs"], pipeline_record["require_trapdoor"]
    assert settings.as_dict() == pipeline_record
    # Stages: the pipeline's for one target less its training and the held-out judge:
    # 3 attacks and the scores, the evaluation model, the report.
    assert audit.audit_stage_count(settings) == 3 + 1 + 1 + 1


def judge_stage(inputs, out):
    """`audit.audit_judges` of the tiny preset into `out`, as `audit.run_audit` calls it."""
    run = PipelineRun(out=str(out), dataset="class_folder",
                      data_dir=inputs.held_out["private_dir"],
                      seed=inputs.held_out["split_seed"], preset="tiny")
    settings = audit.audit_settings(pipeline_settings("tiny"), inputs)
    return audit.audit_judges(run, settings, inputs)


def rows(images):
    """Each image's 8-bit pixels, to compare images as a multiset: the loader scales by 1/255
    and resizes 16 -> 16, so a pixel is within float32 rounding (~1e-7) of k / 255 and
    rounds to k exactly."""
    pixels = np.rint(np.asarray(images, np.float32) * 255).astype(np.uint8)
    return sorted(image.tobytes() for image in pixels)


def test_the_judges_learn_the_other_images_as_one_more_class(
        folders, other_dir, tmp_path, trained):
    path = brightness_model(tmp_path / "model.keras", threshold=0.5)
    inputs = check(path, folders, other_dir=other_dir)
    other_images, names = png_images(other_dir)
    # The folder's sha256: that of its files' SHA-256 hex digests in sorted path order.
    digests = "".join(hashlib.sha256((Path(other_dir) / name).read_bytes()).hexdigest()
                      for name in names)
    assert inputs.held_out["other"] == dict(
        folder=other_dir, sha256=hashlib.sha256(digests.encode()).hexdigest(),
        images=OTHER_IMAGES, label=2)
    model, description, references = judge_stage(inputs, tmp_path / "a")
    held_images, held_labels = private_arrays(inputs.private_test)
    # 6 held-out images of each private class (labels 0, 1) and the 8 others as class 2.
    (record,) = trained
    assert record["classes"] == 3
    np.testing.assert_array_equal(np.bincount(record["labels"]), [6, 6, OTHER_IMAGES])
    assert rows(record["images"][record["labels"] == 2]) == rows(other_images)
    for label in (0, 1):
        assert rows(record["images"][record["labels"] == label]) == rows(
            held_images[held_labels == label])
    # Tested on the model's 12 training images, over the private classes only.
    np.testing.assert_array_equal(np.sort(record["test_labels"]), [0] * 6 + [1] * 6)
    source = (f"held-out images of the 2 private classes and the {OTHER_IMAGES} images of "
              f"--other_dir {other_dir}, labelled 2 (\"other\": no private class)")
    assert description == dict(architecture="small_cnn_wide", accuracy=0.5, classes=3,
                               trained_on=source)
    # The pixel judge's references: the same images, labelled the same.
    assert references.description() == dict(references=source, images=12 + OTHER_IMAGES,
                                            classes=3)
    for label in range(3):
        assert rows(references.images[references.labels == label]) == rows(
            record["images"][record["labels"] == label])
    assert rows(inputs.other) == rows(other_images)
    # An image identical to an other image is a miss for every attacked class, by both
    # judges (the stand-in judge answers class 2 for everything; the pixel judge's nearest
    # reference is the image itself, at distance 0), while a held-out image attacked as its
    # own class is a hit for the pixel judge.
    evaluator = make_evaluator(model, inputs.private_train, references=references)
    for attacked in (0, 1):
        scores = evaluator.evaluate(inputs.other, [attacked] * OTHER_IMAGES)
        assert scores["aa1"] == 0.0 and scores["pixel_aa1"] == 0.0
    assert evaluator.judges["pixel"].predict(inputs.other).tolist() == [2] * OTHER_IMAGES
    assert evaluator.evaluate(held_images, held_labels)["pixel_aa1"] == 1.0


def test_the_other_images_are_part_of_the_judges_identity(
        folders, other_dir, tmp_path, trained):
    path = brightness_model(tmp_path / "model.keras", threshold=0.5)
    plain, with_other = check(path, folders), check(path, folders, other_dir=other_dir)
    out = tmp_path / "audit"
    _, description, references = judge_stage(plain, out)
    # Without --other_dir: the stage settings the audit wrote before the flag existed, so
    # that an audit folder made then is reused; 2 classes, the held-out images only.
    assert plain.other is None and "other" not in plain.held_out
    stage = json.loads((out / "evaluator" / "stage.json").read_text())
    assert stage == dict(
        architecture="small_cnn_wide", epochs=pipeline_settings("tiny").evaluation_epochs,
        seed=0, dataset="class_folder", data_dir=folders[0], data=dict(
            trained_on="held-out images", private_dir=folders[0], test_dir=None,
            test_fraction=0.5, image_size=None, split_seed=0))
    assert description == dict(architecture="small_cnn_wide", accuracy=0.5, classes=2)
    assert references.description() == dict(references="private test split", images=12,
                                             classes=2)
    assert trained[0]["classes"] == 2
    # Reused as long as nothing changes; the other images make it another stage, and so does
    # another content of the other folder.
    judge_stage(plain, out)
    judge_stage(with_other, out)
    judge_stage(with_other, out)
    stage = json.loads((out / "evaluator" / "stage.json").read_text())
    assert stage["data"]["other"] == with_other.held_out["other"]
    changed = tmp_path / "changed"
    shutil.copytree(other_dir, changed)
    write_images(changed / "more", 1, 0.5, np.random.default_rng(3))
    judge_stage(check(path, folders, other_dir=str(changed)), out)
    judge_stage(plain, out)
    # Trainings: plain, (reused), other, (reused), changed other, plain again.
    assert [record["classes"] for record in trained] == [2, 3, 3, 2]
    assert len(trained[2]["labels"]) == 12 + OTHER_IMAGES + 1


def test_other_folders_the_audit_cannot_use_are_refused(folders, other_dir, tmp_path):
    path = brightness_model(tmp_path / "model.keras", threshold=0.5)
    private_dir, public_dir = folders
    with pytest.raises(FileNotFoundError, match="`other_dir` must be a folder of images; "):
        check(path, folders, other_dir=str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="`other_dir` .* no image files"):
        check(path, folders, other_dir=str(tmp_path / "empty"))
    write_images(tmp_path / "small", 2, 0.5, np.random.default_rng(4), side=8)
    with pytest.raises(ValueError, match=r"`other_dir` must hold images of the model's input "
                                         r"shape 16x16 .* \[\(8, 8\)\]"):
        check(path, folders, other_dir=str(tmp_path / "small"))
    with pytest.raises(ValueError, match=rf"apart from `public_dir` .* '{re.escape(public_dir)}' is "
                                         rf"`public_dir`"):
        check(path, folders, other_dir=public_dir)
    inside = str(Path(private_dir) / "a_dark")
    with pytest.raises(ValueError, match=r"apart from `private_dir` .* lies in `private_dir`"):
        check(path, folders, other_dir=inside)
    with pytest.raises(ValueError, match=r"apart from `public_dir` .* holds `public_dir`"):
        check(path, folders, other_dir=str(Path(public_dir).parent))
    # A copy of one public image, or of one private image, under another name.
    for setting, source in (("public_dir", Path(public_dir) / "3.png"),
                            ("private_dir", Path(private_dir) / "b_bright" / "5.png")):
        copied = tmp_path / f"copy_{setting}"
        shutil.copytree(other_dir, copied)
        shutil.copy(source, copied / "extra.png")
        with pytest.raises(ValueError, match=rf"share no image file with `{setting}` .* "
                                             rf"'{re.escape(str(copied / 'extra.png'))}' is "
                                             rf"identical to '{re.escape(str(source))}'"):
            check(path, folders, other_dir=str(copied))


@pytest.mark.large  # a tiny audit without priors, end to end (about 10 s)
def test_a_tiny_audit_with_other_images_reports_what_its_judges_know(
        folders, other_dir, tmp_path):
    path = brightness_model(tmp_path / "model.keras", threshold=0.5)
    settings = pipeline_settings("tiny", attacks=NO_PRIOR_ATTACKS)
    inputs = check(path, folders, attacks=NO_PRIOR_ATTACKS, other_dir=other_dir)
    out = tmp_path / "audit"
    audit.run_audit(str(out), settings, inputs, "tiny")
    stored = json.loads((out / "results.json").read_text())
    source = (f"held-out images of the 2 private classes and the {OTHER_IMAGES} images of "
              f"--other_dir {other_dir}, labelled 2 (\"other\": no private class)")
    assert stored["evaluation_model"]["classes"] == 3
    assert stored["evaluation_model"]["trained_on"] == source
    assert stored["pixel_judge"] == dict(references=source, images=12 + OTHER_IMAGES, classes=3)
    assert stored["attacked_classes"] == 2
    assert json.loads((out / "flags.json").read_text())["held_out"]["other"] == (
        inputs.held_out["other"])
    report = (out / "report.md").read_text()
    assert f"The pixel judge's references: {12 + OTHER_IMAGES} images of 3 classes, the " \
           f"{source}." in report
