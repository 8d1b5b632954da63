"""What every console command shares: the `--verbose` and `--precision` flags, quiet defaults,
and library messages told in flags (`flag_message`).

By default a command prints its result and, for the pipeline, one progress line over its
stages; TensorFlow's start-up messages (`trapmid_tf.startup`), absl INFO logs and Keras'
per-epoch logs appear only with `--verbose`. `--precision=mixed_bfloat16` builds every model
of the command with float32 variables and bfloat16 computations (`trapmid_tf.precision`).
"""

import re
import sys

from absl import app, flags, logging

from trapmid_tf.precision import PRECISIONS, use_precision
from trapmid_tf.startup import startup_log

flags.DEFINE_bool("verbose", False, "Show TensorFlow's start-up messages, INFO logs and "
                  "per-epoch training logs.")
flags.DEFINE_enum("precision", "float32", list(PRECISIONS), "Precision of every model the "
                  "command builds: float32, or mixed_bfloat16 (float32 variables, bfloat16 "
                  "computations; fast on GPUs and CPUs with bfloat16 instructions, "
                  "docs/precision.md).")
FLAGS = flags.FLAGS


def run_command(main, *modules):
    """Runs `main` with absl, the first module's docstring and the modules' flags as its help.

    A console script's `__main__` is a generated stub: without this, `--help` would show
    neither the command's description nor its flags.

    Args:
        main: The command's `main(argv)`.
        *modules: The modules whose flags the command takes, its own first.
    """
    program = sys.argv[0]
    if modules[0].__name__ != "__main__":  # run as a console script, not `python -m`
        sys.modules["__main__"].__doc__ = modules[0].__doc__
        for module in (*modules, sys.modules[__name__]):
            for flag in FLAGS.get_flags_for_module(module.__name__):
                FLAGS.register_key_flag_for_module(program, flag)
    app.run(main)


def flag_message(message):
    """`message` with each setting it names (`` `gmi_steps` ``) written as its flag
    (--gmi_steps); a name that is no flag of the command stays as it is.

    Library errors name settings; a command turns them into its flags' names with this.
    """
    return re.sub(r"`(\w+)`", lambda name: f"--{name[1]}" if name[1] in FLAGS else name[0],
                  message)


def verbose():
    """Whether `--verbose` was given (False before the flags are parsed)."""
    return bool(FLAGS["verbose"].value)


def start():
    """Sets the command's logging and precision; every command calls it before building models.

    At `--verbose` replays the start-up messages and logs INFO; applies `--precision`.
    """
    if verbose():
        sys.stderr.write(startup_log())
        logging.set_verbosity(logging.INFO)
    else:
        logging.set_verbosity(logging.WARNING)
    use_precision(FLAGS.precision)


def fit_verbosity():
    """`verbose` for `keras.Model.fit`: one line per epoch at `--verbose`, else silent."""
    return 2 if verbose() else 0


def progress_verbosity():
    """`verbose` for the attacks' inversion loops: a progress bar at `--verbose`, else silent."""
    return 1 if verbose() else 0
