"""The console commands the package installs (pyproject's [project.scripts])."""

import importlib.metadata
import os
import subprocess
import sys

import pytest

COMMANDS = {
    "trapmid-train": ("trapmid_tf.cli.train_target", "--defense:"),
    "trapmid-prior": ("trapmid_tf.cli.train_prior", "--prior:"),
    "trapmid-attack": ("trapmid_tf.cli.attack", "--attacks:"),
    "trapmid-evaluate": ("trapmid_tf.cli.evaluate", "--attacks_dir:"),
    "trapmid-pipeline": ("trapmid_tf.cli.pipeline", "--preset:"),
    "trapmid-audit": ("trapmid_tf.cli.audit", "--private_dir:"),
}


def test_every_command_is_installed_and_points_at_its_module():
    installed = {
        entry.name: entry.value
        for entry in importlib.metadata.entry_points(group="console_scripts")
        if entry.name.startswith("trapmid-")
    }
    assert installed == {name: f"{module}:run" for name, (module, _) in COMMANDS.items()}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_the_commands_description_and_flags(command):
    module, own_flag = COMMANDS[command]
    script = os.path.join(os.path.dirname(sys.executable), command)
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=300)
    first_line = importlib.import_module(module).__doc__.splitlines()[0]
    assert result.stdout.startswith(first_line)
    assert own_flag in result.stdout and "--[no]verbose:" in result.stdout
    assert result.stderr == ""  # no TensorFlow start-up messages
