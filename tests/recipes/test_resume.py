"""trapmid-train --backup_dir: a run killed with SIGKILL resumes to the same result.

A real recipe process is killed once its first end-of-epoch backup exists, then started again
with the same command; its final state must equal that of an uninterrupted run with the same
seed, which ran alongside. The learning rate drops tenfold at the second epoch, so the
resumed run must also continue the schedule where it was.
"""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest

import trapmid_tf.models  # noqa: F401  (registers the layers that load_model needs)

from tests.recipes.test_train_target import COMMAND, load_recipe

EPOCHS = 2
# --verbose: the per-epoch logs show where the resumed run started.
FLAGS = [f"--epochs={EPOCHS}", "--lr_decay_epoch=1", "--width=4", "--batch_size=32", "--seed=3",
         "--verbose"]


def command(folder):
    return [*COMMAND, f"--out={folder}/out", f"--backup_dir={folder}/backup", *FLAGS]


def start(folder):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen(
        command(folder), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def kill_after_first_backup(process, state_path):
    """SIGKILLs `process` as soon as `state_path` exists; returns the backed-up epoch count."""
    while not state_path.exists():
        assert process.poll() is None, process.stdout.read()[-3000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL  # it was still running when killed
    return json.loads(state_path.read_text())["epoch"]


def h5_arrays(path):
    arrays = {}
    with h5py.File(path, "r") as stream:
        stream.visititems(
            lambda name, item: arrays.__setitem__(name, item[()])
            if isinstance(item, h5py.Dataset) else None
        )
    return arrays


@pytest.mark.large  # two real training runs in subprocesses, one killed (about 30 s)
def test_killed_run_restarted_with_the_same_command_ends_as_an_uninterrupted_run(tmp_path):
    reference = start(tmp_path / "reference")
    interrupted = start(tmp_path / "run")
    backup = tmp_path / "run" / "backup"
    killed_at = kill_after_first_backup(interrupted, backup / "state.json")
    assert 1 <= killed_at < EPOCHS

    resumed = subprocess.run(
        command(tmp_path / "run"), capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f"Epoch {killed_at + 1}/{EPOCHS}" in log and "Epoch 1/" not in log  # it resumed
    output, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, output[-3000:]

    # The final training state: classifier, discriminator, triggers, the three optimisers'
    # slots and iteration counts (the learning-rate schedule position), seed states.
    final = h5_arrays(backup / f"epoch{EPOCHS}.weights.h5")
    expected = h5_arrays(tmp_path / "reference" / "backup" / f"epoch{EPOCHS}.weights.h5")
    assert final.keys() == expected.keys() and len(final) > 30
    for name in final:
        np.testing.assert_allclose(final[name], expected[name], rtol=1e-6, atol=1e-7, err_msg=name)
    state = json.loads((backup / "state.json").read_text())
    expected_state = json.loads((tmp_path / "reference" / "backup" / "state.json").read_text())
    assert state["seed_states"] == expected_state["seed_states"]

    # The artefacts: best epoch's classifier and triggers, results (best-epoch bookkeeping).
    out, expected_out = tmp_path / "run" / "out", tmp_path / "reference" / "out"
    with np.load(out / "triggers.npz") as a, np.load(expected_out / "triggers.npz") as b:
        np.testing.assert_allclose(a["triggers"], b["triggers"], atol=1e-7)
    weights = keras.models.load_model(out / "classifier.keras").get_weights()
    expected_weights = keras.models.load_model(expected_out / "classifier.keras").get_weights()
    for a, b in zip(weights, expected_weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    results = json.loads((out / "results.json").read_text())
    expected_results = json.loads((expected_out / "results.json").read_text())
    for key in ("test_accuracy", "trapdoor_accuracy", "best_epoch", "epochs"):
        assert results[key] == pytest.approx(expected_results[key], abs=1e-7), key

    # Secret backup: owner-only folder and files; older epochs and temporary files removed.
    assert os.stat(backup).st_mode & 0o777 == 0o700
    assert sorted(os.listdir(backup)) == [f"epoch{EPOCHS}.weights.h5", "state.json"]
    for name in os.listdir(backup):
        assert os.stat(backup / name).st_mode & 0o777 == 0o600, name

    # The same command once more: the backup says the run is complete, so nothing trains
    # and the results are rewritten from the restored bookkeeping. Other settings are refused.
    recipe = load_recipe()
    config = json.loads((out / "flags.json").read_text())  # the command's settings
    classifier_bytes = (out / "classifier.keras").read_bytes()
    assert recipe.train(config) == results
    assert (out / "classifier.keras").read_bytes() == classifier_bytes
    with pytest.raises(ValueError, match=r"other settings \(seed: stored 3, now 4\)"):
        recipe.train(dict(config, seed=4))
