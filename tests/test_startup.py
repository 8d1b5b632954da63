"""Importing trapmid_tf changes nothing; `import_tensorflow` keeps TensorFlow's start-up
messages (`trapmid_tf.startup_log`) out of the terminal and sets its options."""

import json
import os
import platform
import subprocess
import sys

import pytest

from trapmid_tf.startup import X86_64_MACHINES, _captured_stderr

X86_64 = platform.machine().lower() in X86_64_MACHINES
PLAIN_START = "import tensorflow as tf; tf.config.list_physical_devices()"
# Prints the two variables, whether oneDNN is on and the start-up log, after the call.
STARTED = (
    "import json, os\n"
    "from trapmid_tf.startup import import_tensorflow, startup_log\n"
    "import_tensorflow()\n"
    "from tensorflow.python.util import _pywrap_util_port\n"
    "print(json.dumps([os.environ.get('TF_CPP_MIN_LOG_LEVEL'),\n"
    "                  os.environ.get('TF_ENABLE_ONEDNN_OPTS'),\n"
    "                  _pywrap_util_port.IsMklEnabled(), startup_log()]))\n"
)


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


@pytest.mark.large  # two fresh TensorFlow start-ups: about 30 s
def test_importing_the_package_changes_nothing_in_the_process():
    code = (
        "import os, sys\n"
        "environ, stderr = dict(os.environ), os.fstat(2)\n"
        "import trapmid_tf as tm\n"
        "print('tensorflow' in sys.modules)\n"
        "tm.TrapMIDModel  # the first use of a name imports the API, TensorFlow with it\n"
        "import tensorflow as tf\n"
        "tf.config.list_physical_devices()\n"
        "print(dict(os.environ) == environ, os.path.samestat(os.fstat(2), stderr))\n"
    )
    package = _python(code)
    assert package.stdout.split() == ["False", "True", "True"]
    # TensorFlow's own start-up lines reach the terminal, as without the package.
    assert set(_messages(_python(PLAIN_START).stderr)) <= set(_messages(package.stderr))


@pytest.mark.large  # two fresh TensorFlow start-ups: about 30 s
def test_the_start_up_call_prints_nothing_keeps_what_tensorflow_said_and_sets_its_options():
    plain = _python(PLAIN_START, "3", "1" if X86_64 else None)
    started = _python(STARTED)
    log_level, onednn, onednn_on, log = json.loads(started.stdout)
    assert started.stderr == ""
    # The same messages as TensorFlow's own start-up wrote to the terminal with the options
    # the call sets (times differ).
    assert _messages(log) == _messages(plain.stderr)
    assert log_level == "3"  # the C++ runtime's messages after start-up: errors off
    if X86_64:
        assert (onednn, onednn_on) == ("1", True)
    else:
        assert onednn is None


def test_the_start_up_call_keeps_the_options_the_user_set():
    log_level, onednn, onednn_on, _ = json.loads(_python(STARTED, "0", "0").stdout)
    assert (log_level, onednn) == ("0", "0")
    if X86_64:
        assert not onednn_on


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
