"""The pipeline's learned judges: the evaluation model (`judge`) and the held-out judge.

Each is a stage of its own (evaluator/, held_out_judge/), a classifier trained (or reused) by
`evaluation.evaluation_model`: the evaluation model on the dataset's labelled classes, the
held-out judge on the classes of the judges' references (`evaluation.judge_references`); the
held-out judge has an architecture other than the evaluation model's and the targets' and
trains on images no target trains on.
"""

import os

from absl import logging

from trapmid_tf.experiments.evaluation import (
    evaluation_model, held_out_split, load_evaluation_classifier,
)

# The judge trained when --evaluation_model is not given: the reference's FaceNet (IR-50 at
# 112x112) for faces, a wide CNN without batch norm for the digit datasets.
EVALUATION_ARCHITECTURES = {"celeba": "facenet_eval"}
DEFAULT_EVALUATION_ARCHITECTURE = "small_cnn_wide"
# The held-out judge (stage held_out_judge/), trained only on part of the judges' references
# (the private test split and, for MNIST and Fashion-MNIST, the test file's images of classes
# 5-9: `evaluation.judge_references`, `evaluation.held_out_split`), for the digit datasets:
# IR-18 (residual, batch-normalised, globally pooled: unlike the evaluation model's plain
# three-convolution CNN), or VGG16-BN where a target is itself an IR-18 (the MNIST preset's),
# so that it shares its architecture with neither the evaluation model nor a target. CelebA
# has none: its private test split holds about 3 images per identity, too few to train a face
# classifier on.
HELD_OUT_ARCHITECTURES = ("ir18", "vgg16_bn")
HELD_OUT_DATASETS = ("digits", "mnist", "fashion_mnist")
# Its data are about a tenth of the evaluation model's (digits: 145 vs 1,437 images), so it
# trains this many times the evaluation model's epochs (measured on digits, seed 0: IR-18's
# held-out accuracy 0.66 after 10 epochs, 0.91 after 40).
HELD_OUT_EPOCH_FACTOR = 4
HELD_OUT_FOLDER = "held_out_judge"


def judge(run, private_train, settings, held_out=None):
    """The evaluation model: --evaluation_model as given, else trained (or reused) in evaluator/.

    Args:
        run: The `PipelineRun`.
        private_train: The private training split (its image shape).
        settings: The pipeline settings.
        held_out: `(train, test, num_classes, description)`: the data to train and test the
            judge on instead of the dataset's evaluation data, `description` (a dict) saying
            what they are in the stage's settings; or None.

    Returns:
        `(model, description)`: the description holds architecture (or the file), test
        accuracy (None for a given file) and classes.
    """
    if run.evaluation_model:
        image_shape = private_train.element_spec[0].shape
        model = load_evaluation_classifier(run.evaluation_model, image_shape)
        architecture, accuracy = os.path.abspath(run.evaluation_model), None
    else:
        architecture = EVALUATION_ARCHITECTURES.get(run.dataset, DEFAULT_EVALUATION_ARCHITECTURE)
        stage = dict(architecture=architecture, epochs=settings.evaluation_epochs,
                     seed=run.seed)
        data = None
        if held_out is not None:
            *data, stage["data"] = held_out
        model, accuracy = evaluation_model(
            run.dataset, run.data_dir, stage, os.path.join(run.out, "evaluator"),
            run.overwrite, run.fit_verbosity, data,
        )
    return model, dict(
        architecture=architecture, accuracy=accuracy, classes=int(model.output_shape[-1])
    )


def held_out_architecture(dataset, configs):
    """The held-out judge's architecture: the first of `HELD_OUT_ARCHITECTURES` that no
    target has, or None (a dataset outside `HELD_OUT_DATASETS`, or targets of each).

    Args:
        dataset: The dataset name.
        configs: The targets' train_target settings (`target_configs`).
    """
    if dataset not in HELD_OUT_DATASETS:
        return None
    models = {config["model"] for config in configs.values()}
    return next((name for name in HELD_OUT_ARCHITECTURES if name not in models), None)


def held_out_judge(run, references, configs, settings, progress):
    """Trains (or reuses) the held-out judge in held_out_judge/: a classifier of the
    references' classes of another architecture than the evaluation model's and the targets'
    (`held_out_architecture`), trained on images no target trains on
    (`evaluation.held_out_split` of the references, by `run.seed`), for
    `HELD_OUT_EPOCH_FACTOR` times the evaluation model's epochs.

    Args:
        run: The `PipelineRun`.
        references: The judges' `evaluation.JudgeReferences`.
        configs: The targets' train_target settings (`target_configs`).
        settings: The pipeline settings.
        progress: The run's `StageProgress`.

    Returns:
        `(model, description)`: the description holds architecture, test accuracy (on the
        judge's own test part), classes and data (`held_out_split`'s description); `(None,
        None)` for a dataset without a held-out judge.
    """
    with progress.stage("held-out judge"):
        architecture = held_out_architecture(run.dataset, configs)
        if architecture is None:
            logging.info("held-out judge: none (dataset %s, target models %s)", run.dataset,
                         sorted({config["model"] for config in configs.values()}))
            return None, None
        *data, description = held_out_split(references, run.seed)
        stage = dict(architecture=architecture, seed=run.seed, data=description,
                     epochs=settings.evaluation_epochs * HELD_OUT_EPOCH_FACTOR)
        model, accuracy = evaluation_model(
            run.dataset, run.data_dir, stage, os.path.join(run.out, HELD_OUT_FOLDER),
            run.overwrite, run.fit_verbosity, data,
        )
    return model, dict(architecture=architecture, accuracy=accuracy,
                       classes=int(model.output_shape[-1]), data=description)
