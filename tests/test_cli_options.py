"""Every field of a stage's options dataclass has a flag on its command, and each
built-in recipe key is one of those fields: the CLI, the recipes and the API cannot drift."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import typer
from typer.testing import CliRunner

from onnxshrink.cli import app
from onnxshrink.cli.prune import prune_command
from onnxshrink.cli.quantize import quantize_command
from onnxshrink.pruning.options import PruneOptions
from onnxshrink.quantization.options import QuantizeOptions
from onnxshrink.recipes import builtin_recipes, load_recipe

COMMANDS = [(prune_command, PruneOptions), (quantize_command, QuantizeOptions)]


@pytest.mark.parametrize("command, options", COMMANDS, ids=lambda c: getattr(c, "__name__", ""))
def test_every_option_field_has_a_flag(command, options):
    parameters = inspect.signature(command).parameters
    missing = [f.name for f in dataclasses.fields(options) if f.name not in parameters]
    assert not missing, f"{command.__name__} has no flag for {missing}"


@pytest.mark.parametrize("command, options", COMMANDS, ids=lambda c: getattr(c, "__name__", ""))
def test_flag_defaults_are_the_dataclass_defaults(command, options):
    """Defaults live in one place: a flag's default is the dataclass field's default."""
    parameters = inspect.signature(command).parameters
    for field in dataclasses.fields(options):
        default = parameters[field.name].default
        if field.default is dataclasses.MISSING or isinstance(default, typer.models.OptionInfo):
            continue
        expected = field.default
        if isinstance(expected, tuple) and not expected:
            assert default in (None, (), []), field.name
        else:
            assert default == expected, f"--{field.name.replace('_', '-')}: {default!r} != {expected!r}"


def test_recipe_keys_are_option_fields():
    fields = {"prune": {f.name for f in dataclasses.fields(PruneOptions)},
              "quantize": {f.name for f in dataclasses.fields(QuantizeOptions)}}
    for name in builtin_recipes():
        recipe = load_recipe(name)
        for section in ("prune", "quantize"):
            assert set(getattr(recipe, section) or {}) <= fields[section], (name, section)


def test_every_command_has_help():
    runner = CliRunner()
    for command in ("inspect", "validate", "pack", "unpack", "quantize", "prune", "shrink", "recipes"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, (command, result.output)
