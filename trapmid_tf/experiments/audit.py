"""The privacy report of a user's own saved classifier: `check_audit`, then `run_audit`.

The user gives a saved Keras classifier (images float32 HxWxC in [0, 1] -> logits over the
private classes; probabilities are refused), the private classes as labelled class folders
with the images the model never trained on (a test folder or a held-out fraction), and a
folder of unlabelled public images that hold none of the private classes, and optionally a
folder of images of other classes that the attacker does not hold, which the judges learn as
one more class, "other". `check_audit` refuses, before any work, what the audit cannot
handle, each error naming the setting (`trapmid-audit` shows its flag), what it expects and
what it received. `run_audit` then goes through the stages of
`trapmid_tf.experiments.pipeline` with the given model in place of the trained targets (its
defense label `AUDITED`): the judge (trained on the held-out images, tested on the model's
training images; or the user's), per seed the GMI prior and the model's own
priors, every attack (the lookup baseline and the transfer null included), the scores and
the report. Each stage is reused when the run folder holds it finished with the same
settings; the model's stages are identified by the SHA-256 of its file.
"""

import dataclasses
import hashlib
import os
import time

import numpy as np
import tensorflow as tf

import trapmid_tf as tm
from trapmid_tf.attacks import suite
from trapmid_tf.data import images
from trapmid_tf.data.images import image_files
from trapmid_tf.data.loaders import CLASS_FOLDER_TEST_FRACTION
from trapmid_tf.experiments import judges, pipeline, prior_stages, target_stages
from trapmid_tf.experiments.attacks import attacked_classes
from trapmid_tf.experiments.evaluation import (
    judge_references, load_evaluation_classifier, make_evaluator, private_arrays,
)
from trapmid_tf.experiments.pipeline import stage_count
from trapmid_tf.experiments.progress import StageProgress
from trapmid_tf.experiments.target_config import default_alpha
from trapmid_tf.files import write_json
from trapmid_tf.metrics.features import batched_predict
from trapmid_tf.metrics.intervals import clopper_pearson
from trapmid_tf.models.gan import sampling_stages

AUDITED = "yours"
# Other input ranges a model may expect, as (scale, offset) applied to images in [0, 1].
INPUT_RANGES = {"[0, 255]": (255.0, 0.0), "[-1, 1]": (2.0, -1.0)}
# A row of probabilities sums to 1 up to float32 rounding (about classes x 1.2e-7, 1.2e-4
# for 1000 classes); logits sum to 1 within this only by accident, never on every row.
PROBABILITY_TOLERANCE = 1e-3
# The attacks that read the model's penultimate feature (`trapmid_tf.models.feature_extractor`).
FEATURE_PRIORS = ("lomma",)
FEATURE_ATTACKS = ("plgmi_adaptive", "plgmi_adaptive_estimated")


@dataclasses.dataclass(frozen=True)
class AuditInputs:
    """What an audit runs on, checked by `check_audit`.

    Attributes:
        model: The classifier, as `trapmid_tf.models.load_classifier` loads it.
        config: What the model's stages depend on (`model_sha256`, `image_shape`, and
            `alpha`, the blend weight of trigger recovery by default).
        private_train: Unbatched `(image, label)` the model trained on.
        private_test: Unbatched `(image, label)` the model never saw (held out).
        public: Unbatched public images, at the model's input shape.
        public_description: The public images' folder and shape (the stages' `public_split`).
        held_out: How the held-out images were chosen, and with other images their folder,
            count, label and SHA-256 (`other`): the judge's stage settings.
        description: The model's file, hash, classes and held-out accuracy (results.json).
        other: Float32 NHWC array of the images of no private class that the attacker does
            not hold (the judges' class "other"), or None.
    """

    model: object
    config: dict
    private_train: object
    private_test: object
    public: object
    public_description: str
    held_out: dict
    description: dict
    other: object


def file_sha256(path):
    """The SHA-256 hex digest of the file `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(path):
    """Loads the audited classifier from `path` (fast input gradients, not compiled).

    Raises:
        FileNotFoundError: if `path` is not a file.
        ValueError: if it cannot be loaded as a Keras model with one image input and one
            output of one vector per image.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"`model` must be a saved Keras classifier file (.keras); {path!r} is not a file."
        )
    try:
        model = tm.models.load_classifier(path)
    except Exception as error:  # Keras raises many types (ValueError, OSError, zip errors).
        raise ValueError(
            f"`model` must be a saved Keras classifier (.keras) that keras.models.load_model "
            f"reads; {path!r} could not be loaded: {error}"
        ) from error
    if len(model.inputs) != 1 or len(model.input_shape) != 4 or len(model.outputs) != 1 or len(
        model.output_shape
    ) != 2:
        raise ValueError(
            "`model` must take one batch of HxWxC images and give one vector of logits per "
            f"image; it takes inputs of shape {model.input_shape} and gives outputs of shape "
            f"{model.output_shape}."
        )
    return model


def check_audit(model, private_dir, public_dir, attacks, test_dir=None,
                test_fraction=None, image_size=None, split_seed=0, evaluation_model=None,
                other_dir=None):
    """Loads and checks everything an audit needs, before any work.

    Args:
        model: The saved classifier (.keras): images in [0, 1] -> logits over the
            classes of `private_dir`, in sorted folder-name order.
        private_dir: One subfolder of images per private class (`"class_folder"` data).
        public_dir: Unlabelled public images (`"folder"` data), none of a private class.
        attacks: The attacks the audit will run (`pipeline_settings(...).attacks`).
        test_dir: Folder of the held-out images (same class subfolders), or None.
        test_fraction: Without `test_dir`, the fraction of each class held out (None: the
            loader's default); the user states that the model never trained on them.
        image_size: Side to resize every image to, or None to keep the files' size.
        split_seed: Seed of the `test_fraction` draw and of the trained judge.
        evaluation_model: The user's judge (.keras), or None: checked to take the images
            and to give at least one output per private class.
        other_dir: Images (`"folder"` data) of classes neither private nor in `public_dir`,
            which the attacker does not hold, or None: the judges learn them as one more
            class, "other" (label: the number of private classes; with `evaluation_model`
            only the pixel judge).

    Returns:
        The `AuditInputs`.

    Raises:
        FileNotFoundError, ValueError: naming the setting, the expected and the received value:
            a missing or unloadable model; images of another shape than the model's input
            (private or public); other than one output per private class; non-square images
            or, for the GAN priors, a side other than 4 * 2**k; a model without a
            penultimate feature for the attacks that read it; probabilities instead of
            logits; a model that expects another input range (its accuracy on the held-out
            images at chance in [0, 1], far above in [0, 255] or [-1, 1]); and a model at
            chance on the held-out images in every range (refused, not warned about); a
            judge that cannot take the images or has fewer outputs than private classes;
            an `other_dir` that is missing or empty, holds images of another shape, or is,
            lies in or holds one of the other folders, or shares an image file (by content)
            with one.
    """
    classifier = load_model(model)
    try:
        splits = tm.data.load("class_folder", private_dir, image_size=image_size,
                              seed=split_seed, test_dir=test_dir, test_fraction=test_fraction)
    except (ValueError, FileNotFoundError) as error:
        raise type(error)(f"`private_dir` {private_dir!r}: {error}") from error
    (train, test), class_names = splits.private, splits.class_names
    shape = tuple(int(side) for side in train.element_spec[0].shape)
    _check_input_shape(classifier, shape, image_size)
    classes = int(classifier.output_shape[-1])
    if classes != len(class_names):
        raise ValueError(
            f"`model` must give one logit per class folder of `private_dir` "
            f"({len(class_names)}: {list(class_names)}, in this order); it gives {classes}."
        )
    _check_side(shape, attacks)
    _check_features(classifier, attacks)
    if evaluation_model is not None:
        _check_judge(evaluation_model, shape, class_names)
    public = _folder_images("public_dir", public_dir, shape, image_size)
    held_out = dict(
        trained_on="held-out images", private_dir=os.path.abspath(private_dir),
        test_dir=test_dir and os.path.abspath(test_dir),
        test_fraction=None if test_dir else _held_out_fraction(test_fraction),
        image_size=image_size, split_seed=split_seed,
    )
    other = None
    if other_dir is not None:
        other = _folder_images("other_dir", other_dir, shape, image_size)
        identity = _other_apart(other_dir, dict(
            public_dir=public_dir, private_dir=private_dir, test_dir=test_dir))
        other = np.stack(list(other.as_numpy_iterator()))
        held_out["other"] = dict(identity, images=len(other), label=classes)
    held_images, held_labels = private_arrays(test)
    accuracy = _check_outputs(classifier, held_images, held_labels)
    alpha, _ = default_alpha(shape, classes)
    sha256 = file_sha256(model)
    return AuditInputs(
        model=classifier,
        config=dict(defense=AUDITED, model_sha256=sha256,
                    image_shape=list(shape), alpha=alpha),
        private_train=train, private_test=test, public=public,
        public_description=f"{os.path.abspath(public_dir)} ({'x'.join(map(str, shape))})",
        held_out=held_out,
        description=dict(
            path=os.path.abspath(model), sha256=sha256,
            classes=list(class_names), held_out_images=len(held_labels),
            held_out_accuracy=accuracy,
        ),
        other=other,
    )


def _check_judge(path, shape, class_names):
    """Raises if the judge at `path` cannot judge images of `shape` over `class_names`."""
    outputs = int(load_evaluation_classifier(path, shape).output_shape[-1])
    if outputs < len(class_names):
        raise ValueError(
            f"`evaluation_model` must judge the {len(class_names)} private classes (its first "
            f"{len(class_names)} outputs, in the class folders' order); it gives {outputs} "
            "outputs."
        )


def _held_out_fraction(test_fraction):
    """The held-out fraction `"class_folder"` uses for `test_fraction` (None: its default)."""
    return CLASS_FOLDER_TEST_FRACTION if test_fraction is None else float(test_fraction)


def _check_input_shape(model, shape, image_size):
    """Raises ValueError if `model` does not take images of `shape` (None sides take any)."""
    expected = tuple(model.input_shape[1:])
    if all(side is None or side == got for side, got in zip(expected, shape)):
        return
    if expected[2] is not None and expected[2] != shape[2]:
        hint = f"give class folders of {expected[2]}-channel images"
    elif expected[0] is not None and expected[0] == expected[1]:
        hint = f"set `image_size` to {expected[0]} to resize them"
    else:
        hint = "give a model that takes square images"
    resized = f" (resized by `image_size` {image_size})" if image_size else ""
    raise ValueError(
        f"`model` must take the images of `private_dir`, of shape {shape}{resized}; it takes "
        f"images of shape {expected}: {hint}."
    )


def _check_side(shape, attacks):
    """Raises ValueError for non-square images, or a side the selected GAN priors cannot make."""
    if shape[0] != shape[1]:
        raise ValueError(
            f"`private_dir` must hold square images (the public images are read at the same "
            f"square size); they are {shape[0]}x{shape[1]}: set `image_size` to resize them "
            "(with a model that takes that size)."
        )
    priors = suite.priors_needed(attacks)
    if not priors:
        return
    try:
        sampling_stages(shape, "the GAN priors")
    except ValueError:
        prior_free = [name for name in attacks if not suite.PRIORS_OF_ATTACK[name]]
        raise ValueError(
            f"`image_size` (or the images' own size) must be 4 * 2**k (8, 16, 32, 64, ...) for "
            f"the GAN priors {list(priors)} of the selected attacks; the images are "
            f"{shape[0]}x{shape[1]}: resize them with a model that takes such a side, or "
            f"select attacks without a prior (`attacks` {prior_free})."
        ) from None


def _check_features(model, attacks):
    """Raises ValueError when a selected attack reads a feature `model` does not expose."""
    readers = [name for name in attacks if name in FEATURE_ATTACKS or any(
        prior in FEATURE_PRIORS for prior in suite.PRIORS_OF_ATTACK[name])]
    if not readers:
        return
    try:
        tm.models.feature_extractor(model)
    except ValueError as error:
        raise ValueError(
            f"`model` must expose its penultimate feature for the attacks {readers} (a "
            f"functional model ending in a Dense layer, or with a Dense layer named 'logits'), "
            f"or leave them out of `attacks`: {error}"
        ) from None


def _folder_images(setting, folder, shape, image_size):
    """The unbatched images below `folder` (any layout, `"folder"` data) at `shape`, after
    checking from the files' headers that they have it (with `image_size`, its channels).

    Raises:
        FileNotFoundError, ValueError: naming `setting`: not a folder, no image file, an
            unreadable header, or images of another shape.
    """
    if not os.path.isdir(folder or ""):
        raise FileNotFoundError(
            f"`{setting}` must be a folder of images; {folder!r} is not a folder."
        )
    try:
        sizes, channels = images.folder_shape(folder)
    except (ValueError, FileNotFoundError) as error:
        raise type(error)(f"`{setting}` {folder!r}: {error}") from error
    if channels != shape[2] or (image_size is None and sizes != {shape[:2]}):
        resize = "" if image_size else " (or set `image_size` to resize every folder)"
        raise ValueError(
            f"`{setting}` must hold images of the model's input shape {shape[0]}x{shape[1]} "
            f"with {shape[2]} channel(s){resize}; it holds images of size(s) "
            f"{sorted(sizes)} (height, width) with {channels} channel(s)."
        )
    return tm.data.load("folder", folder, image_size=shape[0], channels=shape[2]).public


def _other_apart(other_dir, folders):
    """Checks that `other_dir` is apart from `folders` and returns its stage identity.

    Args:
        other_dir: The folder of other images.
        folders: `{setting: folder or None}`: the folders it must neither be, lie in nor hold,
            and share no image file with (same SHA-256).

    Returns:
        `{"folder": its absolute path, "sha256": the SHA-256 of its image files' SHA-256
        digests in the order they are read}`.

    Raises:
        ValueError: naming `other_dir` and the other setting.
    """
    other = os.path.realpath(other_dir)
    folders = {setting: folder for setting, folder in folders.items() if folder is not None}
    for setting, folder in folders.items():
        path = os.path.realpath(folder)
        common = os.path.commonpath([other, path])
        if common in (other, path):
            where = "is" if other == path else ("lies in" if common == path else "holds")
            raise ValueError(
                f"`other_dir` must be a folder apart from `{setting}` (its images are of no "
                f"private class and not the attacker's); {other_dir!r} {where} `{setting}` "
                f"{folder!r}."
            )
    listed = [(file_sha256(path), path) for path in image_files(other_dir)]
    digests = dict(listed)
    for setting, folder in folders.items():
        for path in image_files(folder):
            digest = file_sha256(path)
            if digest in digests:
                raise ValueError(
                    f"`other_dir` must share no image file with `{setting}` (its images are of "
                    f"no private class and not the attacker's); {digests[digest]!r} is "
                    f"identical to {path!r} (SHA-256 {digest})."
                )
    identity = hashlib.sha256("".join(digest for digest, _ in listed).encode())
    return dict(folder=os.path.abspath(other_dir), sha256=identity.hexdigest())


def _check_outputs(model, held_images, held_labels):
    """The model's accuracy on the held-out images, after checking its outputs and range.

    Accuracy is no better than chance when the lower end of its 95% Clopper-Pearson
    interval is at or below 1 / classes; the model expects another input range when its
    accuracy is so in [0, 1] but better than chance on the same images in that range, and
    above the upper end of the interval in [0, 1].

    Raises:
        ValueError: for probabilities instead of logits, another input range, or accuracy
            no better than chance.
    """
    def accuracy(images):
        outputs = batched_predict(model, images)
        correct = int(np.sum(np.argmax(outputs, axis=1) == held_labels))
        return outputs, correct / len(held_labels), clopper_pearson(correct, len(held_labels))

    outputs, top1, (low, high) = accuracy(held_images)
    if np.all(outputs >= 0) and np.all(np.abs(outputs.sum(axis=1) - 1) <= PROBABILITY_TOLERANCE):
        raise ValueError(
            "`model` must output logits (the attacks' losses take logits); on the held-out "
            "images every output row is non-negative and sums to 1, i.e. probabilities: save "
            "the model without its final softmax."
        )
    chance = 1.0 / outputs.shape[1]
    if low > chance:
        return top1
    others = {}
    for name, (scale, offset) in INPUT_RANGES.items():
        _, others[name], (other_low, _) = accuracy(held_images * scale + offset)
        if other_low > chance and others[name] > high:
            raise ValueError(
                f"`model` must take images in [0, 1]; it expects another input range: its "
                f"accuracy on the {len(held_labels)} held-out images is {top1:.3f} in [0, 1] "
                f"(chance {chance:.3f}) but {others[name]:.3f} on the same images scaled to "
                f"{name}. "
                f"Save it with the rescaling inside, e.g. keras.Sequential([keras.Input("
                f"{tuple(model.input_shape[1:])}), keras.layers.Rescaling({scale:g}, "
                f"offset={offset:g}), model])."
            )
    raise ValueError(
        f"`model` must classify the held-out images better than chance ({chance:.3f}); its "
        f"accuracy on the {len(held_labels)} held-out images is {top1:.3f} (95% interval "
        f"[{low:.3f}, {high:.3f}]) in [0, 1], "
        + ", ".join(f"{value:.3f} in {name}" for name, value in others.items())
        + ". Check that its "
        "outputs follow the sorted order of the class folders' names and that it was trained "
        "on these classes; a report of a model that has learnt nothing would measure nothing."
    )


def run_audit(out, settings, inputs, preset, overwrite=False, fid_weights=None,
              evaluation_model=None, verbose=False, progress=None):
    """Runs every stage of the audit (reusing stored ones) and writes results.json and the report.

    Args:
        out: The run folder.
        settings: The run's `PipelineSettings` (`pipeline_settings`; its defenses, target
            epochs and trapdoor requirement are not used).
        inputs: `check_audit`'s `AuditInputs`.
        preset: The preset the settings started from.
        overwrite: Redo every stage even if stored.
        fid_weights: Local InceptionV3 weights for FID, or None.
        evaluation_model: The user's judge (.keras), or None to train one on the held-out
            images.
        verbose: Show per-epoch logs and inversion progress bars.
        progress: A `StageProgress` over `audit_stage_count(settings)` stages, or None for
            one on standard error.

    Returns:
        The results dict written to results.json (the pipeline's, with `model`:
        `inputs.description`; with other images, `evaluation_model` adds `trained_on`).

    Raises:
        ValueError: if the given evaluation model cannot take the images
            (`evaluation.load_evaluation_classifier`).
    """
    start = time.perf_counter()
    settings = audit_settings(settings, inputs)
    run = pipeline.PipelineRun(
        out=out, dataset="class_folder", data_dir=inputs.held_out["private_dir"],
        seed=inputs.held_out["split_seed"], preset=preset, overwrite=overwrite,
        fid_weights=fid_weights, evaluation_model=evaluation_model, verbose=verbose,
    )
    progress = progress or StageProgress(audit_stage_count(settings))
    write_json(os.path.join(out, "flags.json"), dict(
        settings.as_dict(), preset=preset, model=inputs.description["path"],
        held_out=inputs.held_out,
    ))
    with progress.stage("evaluation model"):
        judge, evaluation, references = audit_judges(run, settings, inputs)
    evaluator = make_evaluator(judge, inputs.private_train, fid_weights, references)
    scoring = pipeline.Scoring(
        inputs.public, np.stack(list(inputs.public.as_numpy_iterator())),
        prior_stages.gmi_prior_per_seed(run, settings, inputs.public, progress), evaluator,
        judge,
    )
    target_results = dict(test_accuracy=inputs.description["held_out_accuracy"],
                          trapdoor_accuracy=None)
    per_seed, reconstructions = {}, {}
    for seed in settings.seeds:
        target = target_stages.TrainedTarget(
            target_stages.target_dir(run, AUDITED, seed), inputs.model, inputs.config, seed,
            target_results,
        )
        per_seed[seed], shown = pipeline.attack_and_score(run, settings, scoring, target,
                                                          progress)
        reconstructions.setdefault(AUDITED, shown)
    results = pipeline.run_results(run, settings, evaluation, evaluator,
                                   attacked_classes(inputs.model), {AUDITED: per_seed}, start,
                                   progress, references)
    results["model"] = inputs.description
    pipeline.write_report(run, results, inputs.private_train, reconstructions, {}, progress)
    return results


def audit_judges(run, settings, inputs):
    """The audit's evaluation model and the pixel judge's references.

    Both know the held-out images of the K private classes (labels 0..K-1) and, with other
    images (`inputs.other`), those too as class K, "other": an answer there is a miss for
    every attacked class. The evaluation model is `run.evaluation_model` as given, or trained
    (or reused) in evaluator/ on those images and tested on the model's training images.

    Args:
        run: The audit's `PipelineRun`.
        settings: The audit's settings (`audit_settings`).
        inputs: The `AuditInputs`.

    Returns:
        `(model, description, references)`: the evaluation model, its description
        (`judges.judge`'s; with other images and a trained model, `trained_on` says what it
        trained on) and the `evaluation.JudgeReferences`.
    """
    classes = len(inputs.description["classes"])
    references = judge_references(run.dataset, run.data_dir, inputs.private_test)
    train, outputs = inputs.private_test, classes
    if inputs.other is not None:
        other = inputs.held_out["other"]
        references = references.joined(
            inputs.other, np.full(len(inputs.other), classes),
            f"held-out images of the {classes} private classes and the {other['images']} "
            f"images of --other_dir {other['folder']}, labelled {classes} (\"other\": no "
            "private class)",
        )
        train = tf.data.Dataset.from_tensor_slices((references.images, references.labels))
        outputs = classes + 1
    model, description = judges.judge(
        run, inputs.private_train, settings,
        (train, inputs.private_train, outputs, inputs.held_out),
    )
    if inputs.other is not None and not run.evaluation_model:
        description["trained_on"] = references.source
    return model, description, references


@dataclasses.dataclass(frozen=True)
class AuditSettings(pipeline.PipelineSettings):
    """The pipeline settings as the audit runs them (`audit_settings`): nothing is trained,
    so its records (`as_dict`) hold no target epochs or trapdoor requirement."""

    def as_dict(self):
        """The settings as the audit's flags.json and results.json record them."""
        record = super().as_dict()
        for key in ("target_epochs", "require_trapdoor"):
            del record[key]
        return record


def audit_settings(settings, inputs):
    """The pipeline settings as the audit runs them: one model (`AUDITED`), the public folder.

    Args:
        settings: The run's `PipelineSettings` (`pipeline_settings`).
        inputs: The `AuditInputs`.

    Returns:
        The `AuditSettings`: `settings` with `defenses` `(AUDITED,)` and `public_split` the
        public folder's description.
    """
    return AuditSettings(**dict(vars(settings), defenses=(AUDITED,),
                                public_split=inputs.public_description))


def audit_stage_count(settings):
    """The stages of `run_audit` with `settings`: the pipeline's less the targets' training
    and the held-out judge (the audit's one judge is already trained on held-out images)."""
    return stage_count(dataclasses.replace(settings, defenses=(AUDITED,))) - len(
        settings.seeds) - 1
