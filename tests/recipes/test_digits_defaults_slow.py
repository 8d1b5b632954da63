"""The issue's acceptance bar for the digits defaults (slow: about 6 minutes on 2 cores).

Run with `make test-slow`.
"""

import pytest

from tests.recipes.test_train_target import config_for, load_recipe


@pytest.mark.slow
def test_digits_defaults_form_a_trapdoor_at_little_accuracy_cost(tmp_path):
    recipe = load_recipe()
    plain = recipe.train(config_for(recipe, "none", tmp_path / "none", epochs=None))
    trap = recipe.train(config_for(recipe, "trapmid", tmp_path / "trapmid", epochs=None))
    assert trap["trapdoor_accuracy"] >= 0.95
    assert trap["test_accuracy"] >= plain["test_accuracy"] - 0.03
