"""trapmid-train --strategy=multi_worker: two localhost workers train as one.

Two worker processes (one CPU replica each, global batch split between them) must end with
the state of one process training on the whole global batch, and only the chief may write.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.recipes.test_resume import h5_arrays

ROOT = pathlib.Path(__file__).resolve().parents[2]
HELPER = "tests.recipes.multi_worker_train"


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start(out, backup_dir, *worker, temp_dir):
    env = dict(os.environ, TMPDIR=str(temp_dir), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    temp_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", HELPER, str(out), str(backup_dir), *map(str, worker)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def finish(process):
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    return output


@pytest.mark.large  # two localhost worker processes and a one-worker run
def test_two_workers_train_as_one_worker_with_the_global_batch(tmp_path):
    ports = free_ports(2)
    # All three processes run at once: the single-process reference and the two workers.
    single = start(tmp_path / "one", tmp_path / "one_backup", temp_dir=tmp_path / "tmp_one")
    workers = [
        start(tmp_path / "multi", tmp_path / "multi_backup", index, *ports,
              temp_dir=tmp_path / f"tmp_worker{index}")
        for index in range(2)
    ]
    finish(single)
    for worker in workers:
        finish(worker)

    # The whole training state after the epoch: classifier, discriminator, triggers, the
    # three optimisers' slots and iteration counts, seed states.
    one = h5_arrays(tmp_path / "one_backup" / "epoch1.weights.h5")
    multi = h5_arrays(tmp_path / "multi_backup" / "epoch1.weights.h5")
    assert one.keys() == multi.keys() and len(one) > 30
    for name in one:
        np.testing.assert_allclose(multi[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
    iterations = [name for name in one if name.startswith("optimizer/") and one[name].ndim == 0]
    assert iterations and int(one[iterations[0]]) == 360 // 64  # every step ran
    with np.load(tmp_path / "one" / "triggers.npz") as a, np.load(
        tmp_path / "multi" / "triggers.npz"
    ) as b:
        np.testing.assert_allclose(b["triggers"], a["triggers"], atol=1e-6)
    results_one = json.loads((tmp_path / "one" / "results.json").read_text())
    results_multi = json.loads((tmp_path / "multi" / "results.json").read_text())
    for key in ("test_accuracy", "trapdoor_accuracy", "best_epoch"):
        assert results_multi[key] == pytest.approx(results_one[key], abs=1e-6), key

    # Only the chief wrote: the same files as one process; the other worker's temporary
    # output folder is gone.
    assert sorted(os.listdir(tmp_path / "multi")) == sorted(os.listdir(tmp_path / "one"))
    assert os.listdir(tmp_path / "tmp_worker1") == []
