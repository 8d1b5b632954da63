"""Imports a recipe (a script under recipes/, not a package module) for its tests."""

import contextlib
import importlib.util
import pathlib

from absl import flags

RECIPES = pathlib.Path(__file__).resolve().parents[2] / "recipes"


def load_recipe(name):
    """The module of `recipes/<name>.py`, executed afresh (its flags defined once per name)."""
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def recipe_apart(name):
    """`load_recipe(name)` for one test: the flags it defines are removed afterwards, so that
    a command module imported later in the same process may define flags of the same names
    (recipes/benchmark.py's --seed is also trapmid-train's)."""
    defined = set(flags.FLAGS)
    try:
        yield load_recipe(name)
    finally:
        for flag in set(flags.FLAGS) - defined:
            delattr(flags.FLAGS, flag)
