"""TensorFlow's start-up: its messages kept out of the terminal, its fast CPU kernels on.

Importing trapmid_tf changes nothing in the process; the console commands, the recipes and the
notebooks call `import_tensorflow()` before anything imports TensorFlow, and so can you:

    from trapmid_tf.startup import import_tensorflow

    import_tensorflow()  # before `import keras` or `import tensorflow`

(`import trapmid_tf.startup` imports neither TensorFlow nor Keras.)

Importing TensorFlow and finding its devices prints lines from its C++ runtime ("oneDNN custom
operations are on", "Could not find cuda drivers", "failed call to cuInit") before any Python
setting can silence them (`TF_CPP_MIN_LOG_LEVEL` applies only after absl's logging starts).
`import_tensorflow` runs both with the process's standard error sent to a temporary file, keeps
what was written there (`startup_log()`, which the console commands print with `--verbose`), and
prints it after all if the import fails. It also sets `TF_CPP_MIN_LOG_LEVEL=3` unless it is
already set, which keeps the C++ runtime's later messages (e.g. grappler's "remapper failed",
harmless) out of the terminal; errors still raise Python exceptions with their messages. Set
`TF_CPP_MIN_LOG_LEVEL=0` beforehand to see every runtime message.

On x86-64 it also sets `TF_ENABLE_ONEDNN_OPTS=1` unless it is already set. TensorFlow runs
its CPU kernels through oneDNN by default on Linux only on CPUs with AVX-512 VNNI or BF16,
AVX-VNNI or AMX; on others (e.g. AVX2-only CPUs) its own kernels train the zoo's ResNets
markedly slower (docs/attack_speed.md). Both variables are read when TensorFlow is imported,
so `import_tensorflow` does nothing once TensorFlow is imported; set `TF_ENABLE_ONEDNN_OPTS=0`
to keep TensorFlow's own kernels.
"""

import contextlib
import os
import platform
import sys
import tempfile

_startup_log = ""
X86_64_MACHINES = ("x86_64", "amd64")  # `platform.machine()` of x86-64, lower-cased


def startup_log():
    """TensorFlow's start-up messages.

    Returns:
        What TensorFlow wrote to standard error while `import_tensorflow` ran ("" if nothing).
    """
    return _startup_log


@contextlib.contextmanager
def _captured_stderr():
    """Sends file descriptor 2 to a temporary file; yields a function reading it back."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)

        def read():
            capture.seek(0)
            return capture.read().decode("utf-8", errors="replace")

        try:
            yield read
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def import_tensorflow():
    """Imports TensorFlow and lists its devices quietly, with oneDNN on x86-64 (module docstring).

    Does nothing if TensorFlow is already imported: the options it sets apply only at import.
    """
    global _startup_log
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if platform.machine().lower() in X86_64_MACHINES:
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    try:
        with _captured_stderr() as read:
            try:
                import tensorflow as tf

                tf.config.list_physical_devices()
            finally:
                _startup_log = read()
    except BaseException:
        sys.stderr.write(_startup_log)
        raise
