"""Atomic, permission-aware file writing.

Every artefact the package writes (models, triggers, JSON results) goes through
`atomic_path`, so a crash while writing never leaves a truncated file behind: the data is
written to a temporary file in the destination folder and moved into place with `os.replace`.
"""

import contextlib
import json
import os
import tempfile

SECRET_MODE = 0o600


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
