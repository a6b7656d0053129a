"""The click classes some commands' options need beyond click's own.

LateOptionsCommand makes a command's options on first read (`qlab --help` lists
the commands without making them); Required marks an option a command checks
itself, because something other than the command line may give it.
"""

from __future__ import annotations

from typing import Any, Callable

import click


class LateOptionsCommand(click.Command):
    """A command with more options, made by ``late`` when its options are first read.

    The options made from declared settings (quantlab.settings.setting_options) are
    read from the records' fields, and reading those imports the records and msgspec,
    which listing the commands (`qlab --help`) must not (tests/integration/test_cli_imports.py).
    """

    def __init__(self, *args: Any, late: Callable[[], list[click.Parameter]], **kwargs: Any) -> None:
        self._late: Callable[[], list[click.Parameter]] | None = late
        super().__init__(*args, **kwargs)

    @property
    def params(self) -> list[click.Parameter]:
        if self._late is not None:
            late, self._late = self._late, None
            self._params.extend(late())
        return self._params

    @params.setter
    def params(self, params: list[click.Parameter]) -> None:
        self._params = params


class Required(click.Option):
    """An option a command cannot run without and that has no default; ``unless``: what may give it instead.

    Not click's ``required``, which would refuse the command before ``unless`` (a profile) is
    read: the command checks it. `config show` reads ``needed`` and shows the option as
    required, never with the default its record happens to have.
    """

    def __init__(self, *args: Any, unless: str = "", **kwargs: Any) -> None:
        self.unless = unless
        super().__init__(*args, **kwargs)

    @property
    def needed(self) -> str:
        """How to give it: "give --region, or a --profile that sets it"."""
        return f"give {self.opts[0]}" + (f", or {self.unless}" if self.unless else "")
