"""Runs many command lines of one console command in one process, stopping before any work.

A console command checks its flags, then calls `console.start()` and works. The bad-flag
tests need only the first part, and one interpreter per command line (TensorFlow's import
each time) made them the slowest part of the suite. `python -m tests.cli_cases MODULE` reads
a JSON list of cases from standard input, each `{"argv": [...], "environment": {...},
"paths": [...]}`, runs the command's `main` on each in turn with its flags parsed afresh,
(MODULE may also be a recipe's path, `python -m tests.cli_cases recipes/benchmark.py
environment`: then the named function of the recipe marks the start of its work),
and prints a JSON list of outcomes: `{"message": ..., "started": bool, "written": [...]}`,
the error the command stopped with, whether it got as far as `console.start()` (so would
have worked), and which of `paths` exist afterwards. `command_outcomes` runs it from a test.
"""

import contextlib
import importlib
import importlib.util
import json
import os
import subprocess
import sys

from absl import app, flags

from trapmid_tf.cli import console


class _WorkStarted(Exception):
    """Raised in place of `console.start()`: the command accepted its flags."""


def _raise_work_started():
    raise _WorkStarted()


@contextlib.contextmanager
def _environment(changes):
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _outcome(main, case):
    """Runs one command line up to `console.start()`; returns its outcome dict."""
    flags.FLAGS.unparse_flags()
    message, started = "", False
    with _environment(case.get("environment", {})):
        try:
            flags.FLAGS(["command", *case["argv"]])
            main(["command"])
        except _WorkStarted:
            started = True
        except (app.UsageError, flags.Error, SystemExit) as error:
            message = str(error)
    return {
        "message": message,
        "started": started,
        "written": [path for path in case.get("paths", []) if os.path.exists(path)],
    }


def command_outcomes(module_name, cases, work_starts_at=None, timeout=300):
    """Runs `cases` of one command in one fresh interpreter (see the module docstring).

    Args:
        module_name: The command's module, e.g. "trapmid_tf.cli.train_target", or a recipe's
            path.
        cases: A list of `{"argv": [...], "environment": {...}, "paths": [...]}`.
        work_starts_at: The module's function whose call starts the work; None for
            `console.start`.
        timeout: Seconds for the whole interpreter.

    Returns:
        The list of outcome dicts, one per case.
    """
    environment = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.cli_cases", module_name, *filter(None, [work_starts_at])],
        input=json.dumps(cases),
        capture_output=True, text=True, timeout=timeout, env=environment,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    if result.returncode != 0:
        raise AssertionError(f"tests.cli_cases {module_name} failed:\n{result.stderr}")
    return json.loads(result.stdout.splitlines()[-1])


def _load(name):
    if not name.endswith(".py"):
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location("recipe_under_test", name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    module = _load(sys.argv[1])
    if hasattr(module, "define_flags"):  # defined when run as a command, not on import
        module.define_flags()
    if len(sys.argv) > 2:
        setattr(module, sys.argv[2], _raise_work_started)
    else:
        console.start = _raise_work_started
    cases = json.loads(sys.stdin.read())
    print(json.dumps([_outcome(module.main, case) for case in cases]))


if __name__ == "__main__":
    main()
