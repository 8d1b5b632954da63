"""TensorFlow's start-up messages are kept (`trapmid_tf.startup_log`), not printed."""

import os
import platform
import subprocess
import sys

import pytest

from trapmid_tf.startup import X86_64_MACHINES, _captured_stderr


def _python(code, log_level=None, onednn=None):
    """Runs `code` in a fresh interpreter, with `TF_CPP_MIN_LOG_LEVEL` and
    `TF_ENABLE_ONEDNN_OPTS` unset or set to `log_level` and `onednn`."""
    given = {"TF_CPP_MIN_LOG_LEVEL": log_level, "TF_ENABLE_ONEDNN_OPTS": onednn}
    env = {k: v for k, v in os.environ.items() if k not in given}
    env.update({k: v for k, v in given.items() if v is not None})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300, check=True)


def _messages(text):
    """The message part of each absl log line ("I0000 00:00:... file.cc:12] message")."""
    return sorted(line.split("] ", 1)[1] for line in text.splitlines() if "] " in line)


def test_importing_the_package_prints_nothing_and_keeps_what_tensorflow_said():
    plain = _python("import tensorflow as tf; tf.config.list_physical_devices()", "3", "1")
    package = _python("import sys, trapmid_tf as tm; sys.stdout.write(tm.startup_log())",
                      onednn="1")
    assert package.stderr == ""
    # The same messages as TensorFlow's own start-up wrote to the terminal at the log level
    # the package sets (times differ).
    assert _messages(package.stdout) == _messages(plain.stderr)


@pytest.mark.parametrize("given, kept", [(None, "3"), ("0", "0")])
def test_the_runtime_log_level_defaults_to_errors_off_unless_set(given, kept):
    code = "import os, trapmid_tf; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    assert _python(code, given).stdout.strip() == kept


@pytest.mark.skipif(
    platform.machine().lower() not in X86_64_MACHINES, reason="oneDNN default is x86-64's"
)
@pytest.mark.parametrize("given, kept, enabled", [(None, "1", "True"), ("0", "0", "False")])
def test_onednn_kernels_default_to_on_unless_set(given, kept, enabled):
    code = (
        "import os, trapmid_tf\n"
        "from tensorflow.python.util import _pywrap_util_port\n"
        "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], _pywrap_util_port.IsMklEnabled())"
    )
    assert _python(code, onednn=given).stdout.split() == [kept, enabled]


def test_standard_error_comes_back_after_a_failure_inside(tmp_path):
    saved = os.dup(2)
    with open(tmp_path / "terminal", "wb") as terminal:
        os.dup2(terminal.fileno(), 2)  # stands for the terminal
        try:
            with pytest.raises(RuntimeError), _captured_stderr() as read:
                os.write(2, b"start-up noise\n")
                captured = read()
                raise RuntimeError("import failed")
            os.write(2, b"later message\n")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    assert captured == "start-up noise\n"
    assert (tmp_path / "terminal").read_bytes() == b"later message\n"
