"""One configuration file that is read: quantlab.toml, as defaults for the commands' options.

Where it comes from: `--config FILE`, else `$QLAB_CONFIG`, else `quantlab.toml`
in the home if there is one. Each table sets the options of one command, by
their names with `_` for `-`::

    [director]   # qlab director start      [worker]   # qlab worker start
    [strategy]   # qlab strategy assign     [up]       # qlab up

One precedence rule for every setting: the command line, then the
environment (`QLAB_<COMMAND>_<OPTION>`, e.g. `QLAB_WORKER_START_HEARTBEAT`), then
this file, then the built-in default (click's own order for `default_map` and
`auto_envvar_prefix`). For `qlab worker start --profile`, the profile sits
between the environment and this file. An unknown table or key is an error
naming the file, never a silent typo.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
import msgspec

from quantlab import ENV_PREFIX
from quantlab.errors import ConfigError

#: Table name -> the command path under `qlab` whose options it sets.
SECTIONS: dict[str, tuple[str, ...]] = {
    "director": ("director", "start"),
    "worker": ("worker", "start"),
    "strategy": ("strategy", "assign"),
    "up": ("up",),
}
FILE_NAME = "quantlab.toml"


class Setting(msgspec.Struct, frozen=True):
    name: str  #: "worker.heartbeat"
    value: Any
    source: str  #: "command line", "environment QLAB_...", "file PATH", "default"


def find(given: str | None, home: Path) -> Path | None:
    """The config file in force: the one named (which must exist), else the home's if present."""
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    default = home / FILE_NAME
    return default if default.is_file() else None


def load(path: Path | None, root: click.Group) -> dict[str, dict[str, Any]]:
    """The file's tables, checked against the commands' options; {} without a file."""
    if path is None:
        return {}
    import tomllib  # only with a settings file: most homes have none, and every command comes here

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"config file {path}: {e}") from None
    for section, values in data.items():
        if section not in SECTIONS or not isinstance(values, dict):
            raise ConfigError(f"config file {path}: unknown table [{section}] (known: {', '.join(SECTIONS)})")
        known = _options(root, SECTIONS[section])
        for key in values:
            if key not in known:
                raise ConfigError(f"config file {path}: unknown setting {section}.{key} (known: {', '.join(sorted(known))})")
    return data


def default_map(tables: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """click's default_map: nested by command path."""
    out: dict[str, Any] = {}
    for section, values in tables.items():
        node = out
        for part in SECTIONS[section][:-1]:
            node = node.setdefault(part, {})
        node[SECTIONS[section][-1]] = dict(values)
    return out


def effective(tables: dict[str, dict[str, Any]], path: Path | None, root: click.Group) -> list[Setting]:
    """Every setting of every configurable command, with its value and where that came from."""
    out = []
    for section, command_path in SECTIONS.items():
        for name, param in sorted(_options(root, command_path).items()):
            env = "_".join([ENV_PREFIX, *command_path, name]).upper()
            if env in os.environ:
                out.append(Setting(f"{section}.{name}", os.environ[env], f"environment {env}"))
            elif name in tables.get(section, {}):
                out.append(Setting(f"{section}.{name}", tables[section][name], f"file {path}"))
            else:
                out.append(Setting(f"{section}.{name}", _builtin_default(section, name, param), "default"))
    return out


def _builtin_default(section: str, name: str, param: click.Parameter) -> Any:
    """The default that applies: the option's own, else the record's (worker options, strategy spec)."""
    default = param.default
    if default is not None and type(default).__name__ != "Sentinel":
        return default
    # Imported here: the settings module is loaded by every command, these only by `config show`.
    from quantlab.store.records import StrategySpec
    from quantlab.worker.options import WorkerOptions

    record: Any = {"worker": WorkerOptions(), "strategy": StrategySpec(file="")}.get(section)
    return getattr(record, name, None)


def _options(root: click.Group, command_path: tuple[str, ...]) -> dict[str, click.Parameter]:
    command: click.Command = root
    for part in command_path:
        assert isinstance(command, click.Group)
        command = command.commands[part]
    return {p.name: p for p in command.params if isinstance(p, click.Option) and p.name}
