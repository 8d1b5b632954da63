"""Imports a recipe (a script under recipes/, not a package module) for its tests."""

import importlib.util
import pathlib

RECIPES = pathlib.Path(__file__).resolve().parents[2] / "recipes"


def load_recipe(name):
    """The module of `recipes/<name>.py`, executed afresh (its flags defined once per name)."""
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
