"""Callbacks: the one-job parts (ValidationMetrics, BestEpochCheckpoint, TriggerCheckpoints),
TrapMIDCallback composing them, TrapMIDBackup (resuming fit) and StopOnNonFiniteLoss.

TensorBoardLogger's events are decoded in tests/test_tensorboard.py.
"""

import glob
import json
import logging
import os
import shutil
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from trapmid_tf.callbacks import (
    BestEpochCheckpoint,
    NonFiniteLossError,
    StopOnNonFiniteLoss,
    TrapdoorNotFormedWarning,
    TrapMIDBackup,
    TrapMIDCallback,
    TriggerCheckpoints,
    ValidationMetrics,
)
from trapmid_tf.defenses.negls import NegLSLoss
from trapmid_tf.defenses.trapmid import TrapMIDModel
from trapmid_tf.models.small_cnn import small_cnn

SHAPE, CLASSES = (16, 16, 1), 3


def data(seed, size=12):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(size, *SHAPE)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, rng.integers(0, CLASSES, size))).batch(6)


class ScriptedValidation(keras.callbacks.Callback):
    """Sets scripted validation accuracies before TrapMIDCallback reads them."""

    def __init__(self, clean, trapdoor):
        super().__init__()
        self.clean, self.trapdoor = clean, trapdoor

    def on_epoch_end(self, epoch, logs=None):
        logs["val_accuracy"] = self.clean[epoch]
        logs["val_trapdoor_accuracy"] = self.trapdoor[epoch]


def event_tags(folder):
    tags = {}
    for path in glob.glob(os.path.join(folder, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, set()).add(value.metadata.plugin_data.plugin_name)
    return tags


def linear_classifier():
    """Flatten + Dense: its logits are easy to compute with NumPy."""
    return keras.Sequential(
        [keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(CLASSES, name="logits")]
    )


def test_validation_metrics_adds_the_scores_of_the_validation_batches_to_the_logs():
    # Pixels, triggers and weights on grids of 1/4 and biases of 1/16 and 1/32: every logit
    # below is exact in float32, and no two classes tie.
    rng = np.random.default_rng(5)
    images = (rng.integers(0, 5, size=(30, *SHAPE)) / 4).astype("float32")
    labels = rng.integers(0, CLASSES, 30)
    trapdoor_labels = (labels + 1 + rng.integers(0, CLASSES - 1, 30)) % CLASSES  # never y
    validation = tf.data.Dataset.from_tensor_slices((images, labels, trapdoor_labels)).batch(6)
    model = TrapMIDModel(linear_classifier(), CLASSES, alpha=0.5, seed=0)
    model.compile()
    kernel = rng.integers(-3, 4, size=(np.prod(SHAPE), CLASSES)).astype("float32")
    bias = np.array([0.0, 1 / 16, 1 / 32], dtype="float32")
    model.classifier.get_layer("logits").set_weights([kernel, bias])
    triggers = (rng.integers(0, 5, size=model.triggers.shape) / 4).astype("float32")
    model.triggers.assign(triggers)

    def logits(batch):
        return batch.reshape(len(batch), -1).astype("float64") @ kernel + bias

    clean = logits(images)
    triggered = logits(0.5 * images + 0.5 * triggers[trapdoor_labels])
    log_softmax = clean - np.log(np.exp(clean).sum(axis=1, keepdims=True))

    callback = ValidationMetrics(validation)
    callback.set_model(model)
    logs = {"loss": 7.0}
    callback.on_epoch_end(0, logs)  # updates `logs` in place
    assert logs == pytest.approx({
        "loss": 7.0,
        "val_loss": -log_softmax[np.arange(30), labels].mean(),
        "val_accuracy": np.mean(clean.argmax(axis=1) == labels),
        # The third element is read as trapdoor labels, not as sample weights.
        "val_trapdoor_accuracy": np.mean(triggered.argmax(axis=1) == trapdoor_labels),
    }, rel=1e-5)
    with pytest.raises(ValueError, match="`validation_data` must be a dataset.*received None"):
        ValidationMetrics(None)


def test_best_epoch_checkpoint_ranks_epochs_by_clean_then_trapdoor_accuracy():
    def run(epoch_logs, **kwargs):
        checkpoint = BestEpochCheckpoint(**kwargs)
        checkpoint.on_train_begin()
        for epoch, logs in enumerate(epoch_logs):
            checkpoint.on_epoch_begin(epoch)
            checkpoint.on_epoch_end(epoch, dict(logs))
        return checkpoint

    def val(clean, trapdoor):
        return {"accuracy": 1.0, "trapdoor_accuracy": 1.0,  # training values: ignored
                "val_accuracy": clean, "val_trapdoor_accuracy": trapdoor}

    # Clean accuracy first; among the ties at 0.8, trapdoor accuracy; then the earlier epoch.
    ranked = run([val(0.7, 0.9), val(0.8, 0.3), val(0.8, 0.5), val(0.8, 0.5), val(0.6, 1.0)])
    assert ranked.best_epoch == 2
    assert ranked.best_logs == val(0.8, 0.5)
    assert ranked.trapdoor_formed is False  # 0.5 < 0.9, the default threshold
    # With the bar at 0.9, epochs 0 and 4 reach it; epoch 0 has the higher clean accuracy.
    barred = run([val(0.7, 0.9), val(0.8, 0.3), val(0.8, 0.5), val(0.6, 1.0)],
                 min_trapdoor_accuracy=0.9)
    assert barred.best_epoch == 0 and barred.trapdoor_formed is True
    # Training values when nothing is validated; no trapdoor accuracy: clean accuracy alone.
    training = run([{"accuracy": 0.4}, {"accuracy": 0.6}, {"accuracy": 0.5}])
    assert training.best_epoch == 1 and training.trapdoor_formed is None
    # No accuracy at all: no epoch is kept.
    assert run([{"loss": 1.0}]).best_epoch is None

    restored = BestEpochCheckpoint()
    restored.set_state(json.loads(json.dumps(ranked.get_state())))
    assert (restored.best_epoch, restored.best_logs) == (2, val(0.8, 0.5))
    assert restored.seconds == ranked.seconds


def test_trigger_checkpoints_save_the_triggers_of_every_nth_epoch(tmp_path):
    model = TrapMIDModel(small_cnn(SHAPE, CLASSES, width=4), CLASSES, alpha=0.1, seed=0)
    callback = TriggerCheckpoints(tmp_path / "triggers", every=2)
    callback.set_model(model)
    for epoch in range(5):
        model.triggers.assign(np.full(model.triggers.shape, epoch / 10, dtype="float32"))
        callback.on_epoch_end(epoch)
    # Epochs 2 and 4 counted from 1 are the 0-based epochs 1 and 3.
    assert sorted(os.listdir(tmp_path / "triggers")) == [
        "triggers_epoch2.npz", "triggers_epoch4.npz"
    ]
    for name, value in (("triggers_epoch2.npz", 0.1), ("triggers_epoch4.npz", 0.3)):
        assert os.stat(tmp_path / "triggers" / name).st_mode & 0o777 == 0o600
        with np.load(tmp_path / "triggers" / name) as saved:
            np.testing.assert_array_equal(saved["triggers"], np.float32(value))

    plain = TriggerCheckpoints(tmp_path / "plain", every=1)
    plain.set_model(linear_classifier())
    plain.on_epoch_end(0)
    assert not (tmp_path / "plain").exists()  # no triggers, no files
    with pytest.raises(ValueError, match="`every` must be >= 1; received 0"):
        TriggerCheckpoints(tmp_path, every=0)


def test_best_epoch_checkpoints_and_tensorboard(tmp_path):
    loss = NegLSLoss(num_epochs=5, start_epoch=1, full_epoch=3)
    model = TrapMIDModel(small_cnn(SHAPE, CLASSES, width=4), CLASSES, alpha=0.1, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    saved = {}

    class RecordTriggers(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            saved[epoch] = model.triggers.numpy()

    callback = TrapMIDCallback(
        log_dir=str(tmp_path / "logs"),
        trigger_path=str(tmp_path / "best" / "triggers.npz"),
        best_classifier_path=str(tmp_path / "best" / "classifier.keras"),
        every=2,
    )
    # Best clean accuracy at epochs 1-3; of these, epoch 2 has the best trapdoor accuracy
    # (epoch 3 ties it and loses to the earlier epoch).
    scripted = ScriptedValidation([0.5, 0.8, 0.8, 0.8, 0.7], [0.1, 0.2, 0.6, 0.6, 0.9])
    model.fit(data(0), epochs=5, verbose=0, callbacks=[scripted, callback, RecordTriggers()])
    assert callback.best_epoch == 2
    with np.load(tmp_path / "best" / "triggers.npz") as best:
        np.testing.assert_array_equal(best["triggers"], saved[2])
    assert sorted(os.listdir(tmp_path / "best")) == [
        "classifier.keras", "triggers.npz", "triggers_epoch2.npz", "triggers_epoch4.npz"
    ]
    with np.load(tmp_path / "best" / "triggers_epoch4.npz") as fourth:
        np.testing.assert_array_equal(fourth["triggers"], saved[3])
    assert loss.epoch == 4 and float(loss.current_smoothing.numpy()) == pytest.approx(-0.05)
    tags = event_tags(str(tmp_path / "logs"))
    assert tags["triggers"] == {"images"}
    assert os.stat(tmp_path / "logs" / "trapmid").st_mode & 0o777 == 0o700  # trigger images
    for name in ("triggers_epoch2.npz", "triggers_epoch4.npz", "triggers.npz"):
        assert os.stat(tmp_path / "best" / name).st_mode & 0o777 == 0o600
    for name in ("loss", "accuracy", "trapdoor_accuracy", "discriminator_loss", "val_accuracy"):
        assert tags[name] == {"scalars"}


def test_validation_data_adds_trapdoor_accuracy_to_the_logs(tmp_path):
    model = TrapMIDModel(small_cnn(SHAPE, CLASSES, width=4), CLASSES, alpha=0.1, seed=0)
    model.compile()
    history = model.fit(data(0), epochs=1, verbose=0, callbacks=[TrapMIDCallback(data(1))])
    expected = model.evaluate(data(1), verbose=0, return_dict=True)
    assert history.history["val_accuracy"][0] == pytest.approx(expected["accuracy"])
    assert 0.0 <= history.history["val_trapdoor_accuracy"][0] <= 1.0


@pytest.mark.parametrize("bar, expected_best", [(0.0, 1), (0.9, 3), (0.995, 1)])
def test_min_trapdoor_accuracy_sets_a_bar_for_the_best_epoch(bar, expected_best):
    model = TrapMIDModel(small_cnn(SHAPE, CLASSES, width=4), CLASSES, alpha=0.1, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    # Clean accuracy peaks at epoch 1, before the trapdoor forms (epochs 3-4 reach 0.95).
    scripted = ScriptedValidation([0.5, 0.99, 0.9, 0.98, 0.97], [0.1, 0.6, 0.8, 0.95, 0.99])
    callback = TrapMIDCallback(min_trapdoor_accuracy=bar)
    model.fit(data(0), epochs=5, verbose=0, callbacks=[scripted, callback])
    # 0: the clean peak; 0.9: the best clean accuracy among epochs 3-4; 0.995: no epoch
    # reaches the bar, so every epoch competes as without one.
    assert callback.best_epoch == expected_best


def test_min_trapdoor_accuracy_out_of_range_is_rejected():
    with pytest.raises(ValueError, match=r"`min_trapdoor_accuracy` must be in \[0, 1\]; received 1.5"):
        TrapMIDCallback(min_trapdoor_accuracy=1.5)


@pytest.mark.parametrize(
    "trapdoor, bar, expected_best, formed",
    [
        # The kept epoch is the clean peak (epoch index 1), whose trapdoor is at 0.3.
        ([0.1, 0.3, 0.95], 0.0, 1, False),
        # The bar moves the kept epoch to index 2, whose trapdoor is formed.
        ([0.1, 0.3, 0.95], 0.9, 2, True),
        # The threshold is inclusive: 0.8 at the kept epoch counts as formed.
        ([0.1, 0.8, 0.95], 0.0, 1, True),
    ],
)
def test_warning_when_the_kept_epochs_trapdoor_is_below_the_threshold(
    caplog, trapdoor, bar, expected_best, formed
):
    model = TrapMIDModel(small_cnn(SHAPE, CLASSES, width=4), CLASSES, alpha=0.1, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    scripted = ScriptedValidation([0.5, 0.99, 0.9], trapdoor)
    callback = TrapMIDCallback(min_trapdoor_accuracy=bar, trapdoor_warning_threshold=0.8)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        model.fit(data(0), epochs=3, verbose=0, callbacks=[scripted, callback])
    ours = [w for w in caught if issubclass(w.category, TrapdoorNotFormedWarning)]
    assert callback.best_epoch == expected_best
    assert callback.trapdoor_formed is formed
    if formed:
        assert ours == [] and "did not form" not in caplog.text
    else:
        expected = (
            "The Trap-MID trapdoor did not form: the kept epoch (2) has trapdoor accuracy "
            "0.300, below trapdoor_warning_threshold=0.8."
        )
        assert len(ours) == 1 and str(ours[0].message).startswith(expected)
        assert expected in caplog.text


def test_a_trapdoor_that_cannot_form_warns_at_the_end_of_fit():
    # alpha 1e-4 leaves the triggered images nearly clean, and one epoch of two steps is far
    # too short: the trapdoor stays near chance (1/3).
    keras.utils.set_random_seed(0)
    model = TrapMIDModel(small_cnn(SHAPE, CLASSES, width=4), CLASSES, alpha=1e-4, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    callback = TrapMIDCallback(data(1))
    with pytest.warns(TrapdoorNotFormedWarning) as caught:
        history = model.fit(data(0), epochs=1, verbose=0, callbacks=[callback])
    measured = history.history["val_trapdoor_accuracy"][0]
    assert measured < 0.9 and callback.trapdoor_formed is False
    [ours] = [w for w in caught if issubclass(w.category, TrapdoorNotFormedWarning)]
    expected = f"has trapdoor accuracy {measured:.3f}, below trapdoor_warning_threshold=0.9"
    assert expected in str(ours.message)


def test_trapdoor_warning_threshold_out_of_range_is_rejected():
    with pytest.raises(
        ValueError, match=r"`trapdoor_warning_threshold` must be in \[0, 1\]; received -0.1"
    ):
        TrapMIDCallback(trapdoor_warning_threshold=-0.1)


class ConstantClassWeights(keras.callbacks.Callback):
    """At each epoch's end, makes the linear classifier predict one scripted class everywhere."""

    def __init__(self, classes_by_epoch):
        super().__init__()
        self.classes_by_epoch = classes_by_epoch

    def on_epoch_end(self, epoch, logs=None):
        kernel, _ = self.model.get_layer("logits").get_weights()
        bias = np.eye(CLASSES, dtype="float32")[self.classes_by_epoch[epoch]]
        self.model.get_layer("logits").set_weights([np.zeros_like(kernel), bias])


def test_plain_classifier_keeps_its_best_epoch(tmp_path):
    # A classifier predicting class c everywhere scores the share of c among the validation
    # labels; script epochs predicting the rarest, the commonest, then the middle class.
    validation = data(1, size=30)
    labels = np.concatenate([y for _, y in validation.as_numpy_iterator()])
    by_share = np.argsort(np.bincount(labels, minlength=CLASSES))
    assert len(set(np.bincount(labels, minlength=CLASSES))) == CLASSES  # a unique best
    rarest, middle, commonest = (int(c) for c in by_share)
    classifier = linear_classifier()
    classifier.compile(optimizer="sgd", metrics=["accuracy"],
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    path = tmp_path / "plain.keras"
    callback = TrapMIDCallback(validation, best_classifier_path=str(path),
                               trigger_path=str(tmp_path / "t.npz"))
    script = ConstantClassWeights([rarest, commonest, middle])
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrapdoorNotFormedWarning)  # no trapdoor, no warning
        classifier.fit(data(0), epochs=3, verbose=0, callbacks=[script, callback])
    assert callback.best_epoch == 1
    np.testing.assert_array_equal(
        keras.models.load_model(path).get_layer("logits").get_weights()[1],
        np.eye(CLASSES)[commonest],
    )
    assert not (tmp_path / "t.npz").exists() and callback.trapdoor_formed is None


def trap_model(optimizer=None, **compile_args):
    keras.utils.set_random_seed(0)
    model = TrapMIDModel(small_cnn(SHAPE, CLASSES, width=4), CLASSES, alpha=0.1, seed=0)
    model.compile(optimizer=optimizer or keras.optimizers.Adam(1e-2), **compile_args)
    return model


def fit_with_backup(folder, epochs):
    """Fits a fresh model for `epochs` epochs with a tracker and a backup under `folder`."""
    model = trap_model()
    tracker = TrapMIDCallback(trigger_path=str(folder / "out" / "triggers.npz"))
    backup = TrapMIDBackup(folder / "backup", {"run": 1}, stateful=[tracker])
    history = model.fit(data(0), epochs=epochs, initial_epoch=backup.completed_epochs,
                        verbose=0, callbacks=[tracker, backup])
    return model, tracker, history


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """The folder of a run stopped after its first epoch (copy it before changing it)."""
    folder = tmp_path_factory.mktemp("one_epoch")
    fit_with_backup(folder, epochs=1)
    return folder


def test_backup_resumes_fit_from_the_last_completed_epoch(tmp_path, one_epoch_run):
    uninterrupted, tracker, _ = fit_with_backup(tmp_path / "a", epochs=3)
    shutil.copytree(one_epoch_run, tmp_path / "b")
    backup = tmp_path / "b" / "backup"
    # A kill between writing the next weights and the state, and one during the write,
    # leave files that the backup must not trust and later removes.
    (backup / "epoch2.weights.h5").write_bytes(b"truncated")
    (backup / ".epoch2.weights.h5.x1.tmp.weights.h5").write_bytes(b"truncated")
    assert TrapMIDBackup(backup, {"run": 1}).completed_epochs == 1

    resumed, resumed_tracker, history = fit_with_backup(tmp_path / "b", epochs=3)
    assert history.epoch == [1, 2]  # epochs 2 and 3 only
    for a, b in zip(resumed.weights, uninterrupted.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)
    for a, b in zip(resumed.discriminator_optimizer.variables,
                    uninterrupted.discriminator_optimizer.variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)
    assert int(resumed.optimizer.iterations) == int(uninterrupted.optimizer.iterations) == 6
    np.testing.assert_array_equal(resumed.label_seed.state.numpy(),
                                  uninterrupted.label_seed.state.numpy())
    assert resumed_tracker.best_epoch == tracker.best_epoch
    assert resumed_tracker.best_logs == pytest.approx(tracker.best_logs)
    assert sorted(os.listdir(backup)) == ["epoch3.weights.h5", "state.json"]
    assert os.stat(backup).st_mode & 0o777 == 0o700
    assert {os.stat(backup / name).st_mode & 0o777 for name in os.listdir(backup)} == {0o600}


def test_fit_starting_below_the_backed_up_epochs_is_refused(tmp_path, one_epoch_run):
    shutil.copytree(one_epoch_run, tmp_path / "run")
    before = {path: open(path, "rb").read() for path in all_files(tmp_path / "run")}
    model = trap_model()
    tracker = TrapMIDCallback(trigger_path=str(tmp_path / "run" / "out" / "triggers.npz"))
    backup = TrapMIDBackup(tmp_path / "run" / "backup", {"run": 1}, stateful=[tracker])
    with pytest.raises(ValueError, match=(
        r"`fit` started at epoch 0 \(its `initial_epoch`\), below the backup's completed "
        r"epochs \(1\) in .*\. Pass "
        r"`initial_epoch=backup\.completed_epochs`"
    )):
        model.fit(data(0), epochs=3, verbose=0, callbacks=[tracker, backup])
    # The backed-up epoch's two steps were restored and no step was trained after them...
    assert int(model.optimizer.iterations) == 2
    # ...and no file was written.
    assert {path: open(path, "rb").read() for path in all_files(tmp_path / "run")} == before


def test_backup_refuses_other_settings_and_names_bad_files(tmp_path, one_epoch_run):
    shutil.copytree(one_epoch_run / "backup", tmp_path / "backup")
    backup = tmp_path / "backup"
    with pytest.raises(ValueError, match=r"other settings \(run: stored 1, now 2\)"):
        TrapMIDBackup(backup, {"run": 2}).completed_epochs

    restorer = TrapMIDBackup(backup, {"run": 1})
    restorer.set_model(trap_model())
    weights = backup / "epoch1.weights.h5"
    kept = tmp_path / "kept.weights.h5"
    shutil.copy(weights, kept)
    weights.write_bytes(b"not an HDF5 file")
    with pytest.raises(ValueError, match=f"Backup weights '{weights}' cannot be loaded"):
        restorer.restore()
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=f"Backup weights '{weights}'.*missing"):
        restorer.restore()
    shutil.copy(kept, weights)
    (backup / "state.json").write_text("{")
    with pytest.raises(ValueError, match="state.json' is unreadable"):
        restorer.restore()
    with pytest.raises(ValueError, match="get_state"):
        TrapMIDBackup(backup, stateful=[keras.callbacks.History()])


class InfiniteFromStep(keras.losses.Loss):
    """Cross-entropy that becomes +inf once `iterations` reaches `step`."""

    def __init__(self, iterations, step):
        super().__init__(name="infinite_from_step")
        self.iterations, self.step = iterations, step

    def call(self, y_true, y_pred):
        loss = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
        blow_up = keras.ops.where(self.iterations >= self.step, np.inf, 1.0)
        return loss * blow_up


def test_non_finite_loss_stops_before_the_epoch_files_are_overwritten(tmp_path):
    optimizer = keras.optimizers.Adam(1e-2)
    # Two batches per epoch: classifier step 2 (counted from 0) is epoch 2, batch 1.
    model = trap_model(
        optimizer, loss=InfiniteFromStep(optimizer.iterations, 2),
        trapdoor_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    tracker = TrapMIDCallback(
        data(1), trigger_path=str(tmp_path / "out" / "triggers.npz"),
        best_classifier_path=str(tmp_path / "out" / "classifier.keras"),
    )
    backup = TrapMIDBackup(tmp_path / "backup", stateful=[tracker])

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.files = {path: open(path, "rb").read() for path in all_files(tmp_path)}

    snapshot = Snapshot()
    with pytest.raises(NonFiniteLossError) as error:
        model.fit(data(0), epochs=3, verbose=0,
                  callbacks=[StopOnNonFiniteLoss(), tracker, backup, snapshot])
    message = str(error.value)
    assert "epoch 2, batch 1 (counted from 1)" in message
    assert "loss=inf" in message and "main_loss=inf" in message
    assert "trapdoor_loss" not in message  # finite losses are not named
    assert not np.isfinite(model.classifier.get_weights()[0]).all()  # the bad state exists...
    # ...but no file was written after the first epoch.
    assert len(snapshot.files) == 4  # classifier, triggers, backup weights and state
    assert {path: open(path, "rb").read() for path in all_files(tmp_path)} == snapshot.files
    assert json.loads((tmp_path / "backup" / "state.json").read_text())["epoch"] == 1


def all_files(folder):
    return sorted(p for p in glob.glob(os.path.join(folder, "**"), recursive=True)
                  if os.path.isfile(p))


def test_non_finite_check_reads_only_losses():
    stop = StopOnNonFiniteLoss()
    stop.on_epoch_begin(4)
    stop.on_train_batch_end(0, {"loss": 1.5, "accuracy": float("nan")})
    with pytest.raises(NonFiniteLossError, match=r"epoch 5, batch 8 .*: val_loss=-inf\."):
        stop.on_train_batch_end(7, {"loss": 1.5, "val_loss": float("-inf")})
