"""`qlab`'s commands made on first use (quantlab.cli.LATE_COMMANDS) are exactly those their modules define.

A command a module adds to its TOP_COMMANDS without a LATE_COMMANDS entry would be
neither listed nor run; an entry without its command would fail when typed.
"""

from __future__ import annotations

import importlib

import click

from quantlab import cli


def test_each_late_command_is_one_its_module_defines_and_none_is_left_out() -> None:
    for module in sorted(set(cli.LATE_COMMANDS.values())):
        defined = {command.name for command in importlib.import_module(module).TOP_COMMANDS}
        assert defined == {name for name, where in cli.LATE_COMMANDS.items() if where == module}, module


def test_the_group_lists_and_finds_every_late_command() -> None:
    ctx = click.Context(cli.qlab)
    assert set(cli.LATE_COMMANDS) <= set(cli.qlab.list_commands(ctx))
    for name in cli.LATE_COMMANDS:
        command = cli.qlab.get_command(ctx, name)
        assert command is not None and command.name == name
