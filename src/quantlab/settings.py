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
naming the file, never a silent typo; so is a number outside its setting's
range (quantlab.numbers), named with the file and its line. A setting's
former key (``tick`` for the director's ``heartbeat``) is still read.

The numeric options are SettingOptions, made from the Setting declarations on
StrategySpec, WorkerOptions and DirectorOptions: each checks its value as it
is read, whichever the source.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import click
import msgspec
from click.core import ParameterSource

from quantlab import ENV_PREFIX, exits
from quantlab.errors import BadInput, ConfigError

if TYPE_CHECKING:
    from quantlab.store.strategy_settings import FieldSetting

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
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"config file {path}: {e}") from None
    for section, values in data.items():
        if section not in SECTIONS or not isinstance(values, dict):
            raise ConfigError(f"config file {path}: unknown table [{section}] (known: {', '.join(SECTIONS)})")
        known = _options(root, SECTIONS[section])
        for key in values:
            if key not in known:
                raise ConfigError(f"config file {path}: unknown setting {section}.{key} (known: {', '.join(sorted(known))})")
        _check_values(text, path, section, values, known)
        data[section] = _current_keys(values, known, f"config file {path}: [{section}]")
    return data


def _check_values(text: str, path: Path, section: str, values: dict[str, Any], known: dict[str, click.Parameter]) -> None:
    """Every number of the table within its setting's range: one error naming the file, its line and the key."""
    from quantlab import numbers

    for key, value in values.items():
        param = known[key]
        if isinstance(param, SettingOption) and (problem := param.setting.problem(value)) is not None:
            where = numbers.located(path, numbers.toml_line(text, section, key))
            raise ConfigError(f"{where}: {section}.{key} {problem}")


def _current_keys(values: dict[str, Any], known: dict[str, click.Parameter], where: str) -> dict[str, Any]:
    """The table with a setting's former key (``tick``) under the setting's name (``heartbeat``)."""
    from quantlab.store.strategy_settings import current_keys

    aliased = [p.setting for p in known.values() if isinstance(p, SettingOption) and p.alias]
    return current_keys(values, aliased, where) if aliased else values


def default_map(tables: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """click's default_map: nested by command path."""
    out: dict[str, Any] = {}
    for section, values in tables.items():
        node = out
        for part in SECTIONS[section][:-1]:
            node = node.setdefault(part, {})
        node[SECTIONS[section][-1]] = dict(values)
    return out


def given_by(ctx: click.Context, name: str) -> str:
    """Where the group option ``name`` (--home, --store, --config) came from, in `config show`'s words."""
    param = next(p for p in ctx.command.params if p.name == name)
    source = ctx.get_parameter_source(name)
    if source == ParameterSource.COMMANDLINE:
        return f"command line {param.opts[0]}"
    if source == ParameterSource.ENVIRONMENT and isinstance(param, click.Option) and isinstance(param.envvar, str):
        return f"environment {param.envvar}"
    return "default"


def places(home: tuple[Path, str], store: tuple[str, str], config: tuple[Path | None, str]) -> list[Setting]:
    """What `config show` starts with: the home, the store (shown without a password) and the settings file.

    Each is (value, where it came from, as ``given_by`` says it).
    """
    path, config_source = config
    if path is None:
        config_setting = Setting("config", None, f"none: no --config, no $QLAB_CONFIG, no {FILE_NAME} in the home")
    else:
        config_setting = Setting("config", str(path), f"the home's {FILE_NAME}" if config_source == "default"
                                 else config_source)
    return [Setting("home", str(home[0]), home[1]), Setting("store", store[0], store[1]), config_setting]


def effective(tables: dict[str, dict[str, Any]], path: Path | None, root: click.Group) -> list[Setting]:
    """Every setting of every configurable command, with its value and where that came from."""
    out = []
    for section, command_path in SECTIONS.items():
        options = _options(root, command_path)
        for name, param in sorted(options.items()):
            if isinstance(param, SettingOption) and param.alias:
                continue  # shown under the setting's own name
            env = next((e for e in _envvars(command_path, name, options) if e in os.environ), None)
            if env is not None:
                out.append(Setting(f"{section}.{name}", os.environ[env], f"environment {env}"))
            elif name in tables.get(section, {}):
                out.append(Setting(f"{section}.{name}", tables[section][name], f"file {path}"))
            elif isinstance(needed := getattr(param, "needed", None), str):  # cli_options.Required: no default to show
                out.append(Setting(f"{section}.{name}", None, f"required: {needed}"))
            else:
                out.append(Setting(f"{section}.{name}", _builtin_default(section, name, param), "default"))
    return out


def _builtin_default(section: str, name: str, param: click.Parameter) -> Any:
    """The default that applies: the option's own, else the record's (worker options, strategy spec)."""
    default = param.default
    if default is not None and type(default).__name__ != "Sentinel":
        return default
    # Imported here: the settings module is loaded by every command, these only by `config show`.
    from quantlab.director.options import DirectorOptions
    from quantlab.store.records import StrategySpec
    from quantlab.worker.options import WorkerOptions

    record: Any = {"director": DirectorOptions(), "worker": WorkerOptions(), "strategy": StrategySpec(file="")}.get(section)
    return getattr(record, name, None)


def _envvars(command_path: tuple[str, ...], name: str, options: dict[str, click.Parameter]) -> list[str]:
    """The variables click reads option ``name`` from (auto_envvar_prefix), its former name's second."""
    former = [p.name for p in options.values() if isinstance(p, SettingOption) and p.alias and p.setting.name == name]
    return ["_".join([ENV_PREFIX, *command_path, n]).upper() for n in [name, *former] if n]


def _options(root: click.Group, command_path: tuple[str, ...]) -> dict[str, click.Parameter]:
    command: click.Command = root
    for part in command_path:
        assert isinstance(command, click.Group)
        command = command.commands[part]
    return {p.name: p for p in command.params if isinstance(p, click.Option) and p.name}


# ---- options made from declared settings ----


class SettingOption(click.Option):
    """An option made from a declared setting (quantlab.store.strategy_settings); its value is checked as it is read.

    Whichever the source, a value outside the setting's range ends the command with
    one line naming the option, and the environment variable when that gave it (a
    value from quantlab.toml was checked when the file was loaded, with its line).
    With ``alias`` it is the option under the setting's former name: hidden from the
    help, still taken, with a warning, and its value goes to the setting (:func:`given`).
    """

    def __init__(self, setting: FieldSetting, *, alias: bool = False, help: str | None = None) -> None:
        from quantlab.store.strategy_settings import option_help

        self.setting = setting
        self.alias = alias
        flag, name = (setting.declared.alias, setting.alias_key) if alias else (setting.flag, setting.name)
        kind: dict[str, Any] = (
            {"is_flag": True} if setting.kind is bool else {"type": setting.kind, "metavar": setting.declared.metavar}
        )
        super().__init__([flag, name], hidden=alias, help=help or option_help(setting), **kind)

    def handle_parse_result(self, ctx: click.Context, opts: Any, args: list[str]) -> tuple[Any, list[str]]:
        value, args = super().handle_parse_result(ctx, opts, args)
        if self.setting.kind is bool or type(value) not in (int, float):
            return value, args  # not given (or a flag, which has no range)
        source = ctx.get_parameter_source(self.name) if self.name else None
        if (problem := self.setting.problem(value)) is not None:
            raise BadInput(f"{self.opts[0]}{self._from(ctx, source)} {problem}")
        if self.alias and source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            exits.warning(f"{self.opts[0]} is deprecated: use {self.setting.flag}")
        return value, args

    def _from(self, ctx: click.Context, source: ParameterSource | None) -> str:
        if source == ParameterSource.ENVIRONMENT:
            return f" (from {ctx.auto_envvar_prefix}_{(self.name or '').upper()})"
        return " (from the settings file)" if source == ParameterSource.DEFAULT_MAP else ""


def setting_options(settings: Iterable[FieldSetting]) -> list[click.Parameter]:
    """One option per setting, named by the setting (its key in quantlab.toml), and a hidden one per former name.

    No default of their own (None: the record's default), so that a profile or the
    record can tell a value given from one left out.
    """
    options: list[click.Parameter] = []
    for setting in settings:
        options.append(SettingOption(setting))
        if setting.declared.alias:
            options.append(SettingOption(setting, alias=True))
    return options


#: Nearest first: a value given in a nearer place wins over one for the same setting under its other name.
_NEARER = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.DEFAULT_MAP)


def given(ctx: click.Context, values: dict[str, Any]) -> dict[str, tuple[Any, ParameterSource | None]]:
    """The command's ``values`` with where each came from, a former name's under the setting's own.

    When a setting is given under both names, the nearer source wins (command line,
    environment, settings file), and at a tie its own name.
    """
    out = {name: (value, ctx.get_parameter_source(name)) for name, value in values.items()}
    for param in ctx.command.params:
        if not (isinstance(param, SettingOption) and param.alias and param.name in out):
            continue
        old = out.pop(param.name)
        current = out.get(param.setting.name, (None, None))
        if old[0] is not None and (current[0] is None or _rank(old[1]) < _rank(current[1])):
            out[param.setting.name] = old
    return out


def _rank(source: ParameterSource | None) -> int:
    return _NEARER.index(source) if source in _NEARER else len(_NEARER)
