"""What every console command shares: the `--verbose` flag and quiet defaults.

By default a command prints its result and, for the pipeline, one progress line over its
stages; TensorFlow's start-up messages (`trapmid_tf.startup`), absl INFO logs and Keras'
per-epoch logs appear only with `--verbose`.
"""

import sys

from absl import app, flags, logging

from trapmid_tf.startup import startup_log

flags.DEFINE_bool("verbose", False, "Show TensorFlow's start-up messages, INFO logs and "
                  "per-epoch training logs.")
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


def verbose():
    """Whether `--verbose` was given (False before the flags are parsed)."""
    return bool(FLAGS["verbose"].value)


def start():
    """Sets the command's logging: at `--verbose` replays the start-up messages and logs INFO."""
    if verbose():
        sys.stderr.write(startup_log())
        logging.set_verbosity(logging.INFO)
    else:
        logging.set_verbosity(logging.WARNING)


def fit_verbosity():
    """`verbose` for `keras.Model.fit`: one line per epoch at `--verbose`, else silent."""
    return 2 if verbose() else 0


def progress_verbosity():
    """`verbose` for the attacks' inversion loops: a progress bar at `--verbose`, else silent."""
    return 1 if verbose() else 0
