"""Trains a target classifier with a defense (or none) and writes its artefacts.

Defenses: none, trapmid, negls, trapmid_negls (Trap-MID with NegLS as main and trapdoor loss),
mid (variational information bottleneck) and bido (HSIC dependency regularisation).

Example:
    trapmid-train --dataset=digits --defense=trapmid --out=runs/trapmid

Writes into --out: flags.json, results.json (test_accuracy, trapdoor_accuracy, epochs,
seconds of training, best_epoch, skipped_images and skipped_files: the images that
--skip_unreadable left out, trapdoor_formed and trapdoor_warning_threshold; for Trap-MID
defenses alpha, alpha_source: "flag", "preset" or "measured default", and alpha_reason),
classifier.keras (the best epoch, by test accuracy as the reference) and, for Trap-MID
defenses, triggers.npz (secret: owner-only permissions).

--dataset=class_folder without --alpha takes a blend weight chosen from the images' size,
channels and class count (trapmid_tf.experiments.target_config.default_alpha, from the
measurements of docs/trapdoor_formation.md); the output says which and why, in the line
before the last.

A trapdoor that did not form (the kept epoch's test trapdoor accuracy below
--trapdoor_warning_threshold) gives no protection: training warns, results.json records
trapdoor_formed false, the last line printed says so, and with --require_trapdoor the recipe
exits non-zero once every artefact is written (see docs/trapdoor_formation.md).

Fault tolerance: with --backup_dir, the whole training state is backed up after every epoch
(trapmid_tf.callbacks.TrapMIDBackup); a run killed at any moment and started again with the
same command continues from its last completed epoch and ends as an uninterrupted run. Each
epoch's data order is a function of (--seed, epoch), so it does not depend on restarts.
Training stops at the first non-finite loss, naming the epoch, batch and loss, before it
overwrites any file.

Several machines: --strategy=multi_worker with TF_CONFIG set on every worker; only the chief
writes --out and --backup_dir (see docs/guide.md, "Training on several machines").
"""

import json
import sys

from absl import app, flags

from trapmid_tf.callbacks import NonFiniteLossError
from trapmid_tf.cli import console
from trapmid_tf.experiments.target_config import (
    DEFAULTS, DEFENSES, MODELS, PRESETS, resolve_config,
)
from trapmid_tf.experiments.targets import TrapdoorNotFormedError, train, trapdoor_line

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", DEFAULTS["dataset"], sorted(PRESETS),
                  "Dataset name (trapmid_tf.data.load).")
flags.DEFINE_string("data_dir", None, "Folder with the dataset files (not needed for digits); "
                    "class_folder: one subfolder of images per class (the training images "
                    "when --test_dir is given).")
flags.DEFINE_string("test_dir", None, "class_folder: folder of the test images, with the same "
                    "class subfolders as --data_dir (default: hold out --test_fraction).")
flags.DEFINE_float("test_fraction", None, "class_folder without --test_dir: fraction of each "
                   "class held out for testing, drawn with --split_seed (default 0.2).")
flags.DEFINE_enum("public_split", None, ["classes", "samples"],
                  "Digit datasets: public data = classes 5-9 (reference) or also a disjoint half "
                  "of the private classes' images (default: dataset preset; see README).")
flags.DEFINE_bool("skip_unreadable", DEFAULTS["skip_unreadable"],
                  "CelebA, class_folder: leave out missing or undecodable images "
                  "(counted in results.json) instead of stopping at the first, named.")
flags.DEFINE_string("model", None, f"Classifier architecture, one of {', '.join(MODELS)} "
                    "(default: dataset preset; facenet_eval with --defense=none trains the face "
                    "evaluation classifier), or package.module:function, your own: it gets "
                    "(input_shape, num_classes) and returns an uncompiled keras.Model mapping "
                    "images in [0, 1] to logits (mid and bido: its last layer a Dense).")
flags.DEFINE_integer("image_size", None, "Side of the training images (default: the dataset's, "
                     "112 for facenet_eval on CelebA).")
flags.DEFINE_bool("flip", None, "Flip training images left-right at random, a new draw each "
                  "epoch (default: preset; CelebA yes, as the reference).")
flags.DEFINE_integer("width", None, "small_cnn: channels of the first conv block (default 32); "
                     "smaller trains faster, e.g. for smoke tests.")
flags.DEFINE_enum("defense", DEFAULTS["defense"], DEFENSES, "Defense to train with.")
flags.DEFINE_integer("epochs", None, "Training epochs (default: preset).")
flags.DEFINE_integer("batch_size", None, "Global batch size (default: preset).")
flags.DEFINE_enum("optimizer", None, ["sgd", "adam"], "Optimiser (default: preset): sgd is "
                  "PyTorch's SGD (trapmid_tf.TorchSGD, momentum 0.9, weight decay 1e-4 added to "
                  "every gradient), adam is PyTorch's Adam (trapmid_tf.TorchAdam: epsilon 1e-8 "
                  "after the bias correction, no weight decay), as the reference.")
flags.DEFINE_float("learning_rate", None, "Learning rate (default: preset).")
flags.DEFINE_multi_integer("lr_decay_epoch", None,
                           "Epoch from which the learning rate is 10x lower; repeat for several "
                           "drops (PyTorch's MultiStepLR), 0 for a constant rate (default: "
                           "preset; digits 3/4 of --epochs, face NegLS 75 and 90, MNIST NegLS 7 "
                           "and 9, others none).")
flags.DEFINE_float("alpha", None, "Trigger blend weight (default: dataset preset; "
                   "class_folder: from the images' size, channels and class count, stated in "
                   "the output).")
flags.DEFINE_float("beta", None, "Trapdoor loss weight (default: dataset preset).")
flags.DEFINE_float("trigger_step_size", None, "Signed trigger step (default: dataset preset).")
flags.DEFINE_bool("discriminator", DEFAULTS["discriminator"],
                  "Train triggers against a naturalness discriminator.")
flags.DEFINE_bool("augment", DEFAULTS["augment"],
                  "Use the reference augmentation in Trap-MID training.")
flags.DEFINE_float("min_trapdoor_accuracy", None, "Trap-MID: the best epoch (highest test "
                   "accuracy) must have at least this test trapdoor accuracy once an epoch has "
                   "it (default: digits 0.9, others 0, the reference's rule).")
flags.DEFINE_float("trapdoor_warning_threshold", None, "Trap-MID: test trapdoor accuracy of the "
                   "kept epoch below which the trapdoor counts as not formed (default: "
                   "TrapMIDCallback's, 0.9).")
flags.DEFINE_bool("require_trapdoor", DEFAULTS["require_trapdoor"],
                  "Exit non-zero (after writing every artefact) when "
                  "a Trap-MID trapdoor did not form; no effect on defenses without triggers.")
flags.DEFINE_bool("optimize_triggers", DEFAULTS["optimize_triggers"],
                  "Optimise the triggers (else random, fixed).")
flags.DEFINE_bool("fast_trapmid", DEFAULTS["fast_trapmid"],
                  "Trap-MID as trapmid_tf.defenses.FastTrapMIDModel "
                  "(trigger gradient shared with the classifier step, discriminator every 4th "
                  "step): a faster algorithm of its own; one replica only.")
flags.DEFINE_float("negls_smoothing", DEFAULTS["negls_smoothing"],
                   "Full NegLS smoothing (negls defenses).")
flags.DEFINE_float("mid_beta", None, "MID: weight of the KL term (default: digits/MNIST 0.01, "
                   "CelebA 0.003).")
flags.DEFINE_float("bido_lambda_xz", DEFAULTS["bido_lambda_xz"],
                   "BiDO: weight of HSIC(hidden, input).")
flags.DEFINE_float("bido_lambda_yz", DEFAULTS["bido_lambda_yz"],
                   "BiDO: weight of HSIC(hidden, label).")
flags.DEFINE_integer("seed", DEFAULTS["seed"], "Random seed.")
flags.DEFINE_integer("split_seed", None,
                     "Seed of the private/public split (default: --seed); training seeds "
                     "that share a split attack the same private data.")
flags.DEFINE_enum("strategy", DEFAULTS["strategy"], ["default", "mirrored", "multi_worker"],
                  "tf.distribute strategy; multi_worker reads the cluster from TF_CONFIG.")
flags.DEFINE_string("out", None, "Output folder.")
flags.DEFINE_string("backup_dir", None,
                    "Folder for an end-of-epoch backup of the whole training state (owner-only "
                    "files); a killed run restarted with the same command resumes from it. "
                    "Multi-worker: a folder every worker reads.")
flags.mark_flag_as_required("out")


def flag_settings():
    """`{name: value}` of this command's own flags: the settings of one training run."""
    return {flag.name: flag.value for flag in FLAGS.get_flags_for_module(sys.modules[__name__])}


def config_from_flags(**changes):
    """Resolves the settings given by the command-line flags, with `changes` applied.

    Raises:
        app.UsageError: for contradictory or out-of-range flags, or a missing --data_dir.
    """
    settings = dict(flag_settings(), **changes)
    try:
        return resolve_config(settings)
    except (ValueError, FileNotFoundError) as error:
        raise app.UsageError(console.flag_message(str(error))) from error


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = config_from_flags()
    console.start()
    try:
        results = train(config, verbose=console.fit_verbosity())
    except (FileNotFoundError, ValueError, NonFiniteLossError) as error:
        raise SystemExit(f"train_target: {console.flag_message(str(error))}") from error
    except TrapdoorNotFormedError as error:
        print_results(error.results)
        raise SystemExit(f"train_target: {console.flag_message(str(error))}") from error
    print_results(results)


def print_results(results):
    """Prints the results dict, the alpha line (`alpha_line`), if any, and the trapdoor line."""
    print(json.dumps(results, indent=2))
    line = alpha_line(results)
    if line:
        print(line)
    print(trapdoor_line(results))


def alpha_line(results):
    """The line stating a blend weight that `default_alpha` chose, from a results dict.

    Args:
        results: The dict written to `results.json`.

    Returns:
        The line, e.g. "alpha 0.1 (default for 32x32x1 images and 5 classes: ...; set --alpha
        to choose).", or None when alpha was given or the preset's (or the defense has none).
    """
    if results["alpha_source"] != "measured default":
        return None
    return f"alpha {results['alpha']} ({results['alpha_reason']}; set --alpha to choose)."


def run():
    """The console command `trapmid-train`."""
    console.run_command(main, sys.modules[__name__])


if __name__ == "__main__":
    run()
