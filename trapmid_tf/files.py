"""Atomic, permission-aware file writing.

Every artefact the package writes (models, triggers, JSON results) goes through
`atomic_path`, so a crash while writing never leaves a truncated file behind: the data is
written to a temporary file in the destination folder and moved into place with `os.replace`.
"""

import contextlib
import json
import os
import tempfile

import keras

SECRET_MODE = 0o600
SECRET_FOLDER_MODE = 0o700


def secret_folder(path):
    """Creates `path` (and missing parents) if needed and makes it owner-only (0700).

    For folders whose files other tools write with default permissions but which hold
    secrets, e.g. TensorBoard logs with trigger images.

    Args:
        path: Folder path.

    Returns:
        `path`, as a string.
    """
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    os.chmod(path, SECRET_FOLDER_MODE)
    return path


@contextlib.contextmanager
def atomic_path(path, secret=False):
    """Yields a temporary path that replaces `path` when the block exits without error.

    The temporary file sits in the same folder and keeps the suffix of `path` (Keras and
    NumPy choose the format from it). On error it is removed and `path` is left untouched.

    Args:
        path: Destination file path. Its folder is created if missing.
        secret: If true, the file is created with owner-only permissions (0600) before any
            byte is written, for trigger files and other secrets.

    Yields:
        The temporary path to write to.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    suffix = "".join(base.partition(".")[1:]) if "." in base else ""
    handle, temp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(handle)
    os.chmod(temp, SECRET_MODE if secret else 0o644)
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        raise


def write_json(path, data):
    """Writes `data` as indented JSON to `path` atomically.

    Args:
        path: Destination file path.
        data: A JSON-serialisable object.
    """
    with atomic_path(path) as temp:
        with open(temp, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=2, sort_keys=True)
            stream.write("\n")


STAGE_FILE = "stage.json"


def build_or_reuse(directory, settings, build, load, overwrite=False, log=print):
    """Returns a stage's artefacts, reusing those in `directory` when made with `settings`.

    A finished stage leaves `STAGE_FILE` (its settings) in `directory`, written last and
    atomically, so a stage killed half-way is never trusted. It is reused when that file
    holds the same settings and `load` succeeds; otherwise (or with `overwrite`) the stage
    marker is removed and `build` runs again. Under a dtype policy other than float32
    (`trapmid_tf.use_precision`) the policy's name is part of the settings: a stage built at
    another precision is another stage.

    Args:
        directory: The stage's folder.
        settings: JSON-serialisable dict of everything the artefacts depend on.
        build: Callable `() -> result` that makes the artefacts and writes them into
            `directory` (atomically).
        load: Callable `() -> result` that reads them back; raises if they are unusable.
        overwrite: Rebuild even if reusable.
        log: Callable taking a one-line message.

    Returns:
        The result of `load` or of `build`.
    """
    marker = os.path.join(directory, STAGE_FILE)
    precision = keras.config.dtype_policy().name
    if precision != "float32":
        settings = dict(settings, precision=precision)
    settings = json.loads(json.dumps(settings, sort_keys=True))
    if not overwrite and os.path.exists(marker):
        with open(marker, encoding="utf-8") as stream:
            stored = json.load(stream)
        if stored == settings:
            try:
                result = load()
            except (OSError, ValueError, KeyError) as error:
                log(f"{directory}: stored artefacts are unusable ({error}); rebuilding.")
            else:
                log(f"{directory}: reusing the stored artefacts.")
                return result
        else:
            log(f"{directory}: stored artefacts were made with other settings; rebuilding.")
    with contextlib.suppress(FileNotFoundError):
        os.remove(marker)
    os.makedirs(directory, exist_ok=True)
    result = build()
    write_json(marker, settings)
    return result
