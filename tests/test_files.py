"""Atomic writes, owner-only folders and the stage reuse rule of `build_or_reuse`."""

import json
import os
import stat

import pytest

from trapmid_tf.files import STAGE_FILE, atomic_path, build_or_reuse, secret_folder, write_json


def test_atomic_path_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "results.json"
    write_json(path, {"accuracy": 1.0})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as temporary:
            with open(temporary, "w") as stream:
                stream.write('{"accur')
            raise RuntimeError("killed while writing")
    assert json.loads(path.read_text()) == {"accuracy": 1.0}
    assert os.listdir(tmp_path) == ["results.json"]


def test_atomic_path_secret_is_owner_only(tmp_path):
    with atomic_path(tmp_path / "triggers.npz", secret=True) as temporary:
        open(temporary, "wb").close()
    assert stat.S_IMODE(os.stat(tmp_path / "triggers.npz").st_mode) == 0o600


class Stage:
    """A stage writing one file; counts builds."""

    def __init__(self, directory):
        self.directory = directory
        self.builds = 0

    def build(self):
        self.builds += 1
        write_json(os.path.join(self.directory, "artefact.json"), {"build": self.builds})
        return self.load()

    def load(self):
        with open(os.path.join(self.directory, "artefact.json")) as stream:
            return json.load(stream)["build"]

    def run(self, settings, overwrite=False):
        return build_or_reuse(self.directory, settings, self.build, self.load, overwrite,
                              log=lambda message: None)


def test_secret_folder_is_created_or_made_owner_only(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o755)
    os.chmod(existing, 0o755)
    for folder in (tmp_path / "new" / "nested", existing):
        assert secret_folder(folder) == str(folder)
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700


def test_same_settings_reuse_other_settings_rebuild(tmp_path):
    stage = Stage(str(tmp_path / "stage"))
    assert stage.run({"epochs": 3}) == 1
    assert stage.run({"epochs": 3}) == 1
    assert stage.builds == 1
    assert stage.run({"epochs": 4}) == 2
    assert stage.run({"epochs": 4}, overwrite=True) == 3
    assert json.loads((tmp_path / "stage" / STAGE_FILE).read_text()) == {"epochs": 4}


def test_unusable_artefacts_are_rebuilt(tmp_path):
    stage = Stage(str(tmp_path / "stage"))
    stage.run({"epochs": 3})
    os.remove(tmp_path / "stage" / "artefact.json")
    assert stage.run({"epochs": 3}) == 2


def test_a_failed_build_leaves_no_stage_marker(tmp_path):
    stage = Stage(str(tmp_path / "stage"))
    stage.run({"epochs": 3})

    def crash():
        raise KeyboardInterrupt  # e.g. the user stops the run half-way

    with pytest.raises(KeyboardInterrupt):
        build_or_reuse(stage.directory, {"epochs": 5}, crash, stage.load, log=lambda m: None)
    assert not (tmp_path / "stage" / STAGE_FILE).exists()
    assert stage.run({"epochs": 3}) == 2  # the old marker is gone too: rebuilt


def test_a_stage_built_at_another_precision_is_rebuilt(tmp_path):
    import keras

    builds = []

    def build():
        builds.append(keras.config.dtype_policy().name)
        return len(builds)

    def stage():
        return build_or_reuse(str(tmp_path), {"a": 1}, build, lambda: len(builds), log=str)

    try:
        assert stage() == 1 and stage() == 1  # float32: built once, then reused
        keras.config.set_dtype_policy("mixed_bfloat16")
        assert stage() == 2 and stage() == 2
        stored = json.loads((tmp_path / STAGE_FILE).read_text())
        assert stored == {"a": 1, "precision": "mixed_bfloat16"}
    finally:
        keras.config.set_dtype_policy("float32")
    assert stage() == 3 and builds == ["float32", "mixed_bfloat16", "float32"]
    assert json.loads((tmp_path / STAGE_FILE).read_text()) == {"a": 1}
