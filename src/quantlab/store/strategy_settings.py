"""Settings: declared once, on a record's fields, and read from there by everything else.

A setting is a field written ``Annotated[T, Setting(...)] = default``: its
name, type and default are the field's; its unit, range, help and option name
are the Setting's. The records that declare them: StrategySpec (a strategy's
settings), WorkerOptions and DirectorOptions (the daemons'). Made from these
declarations: the options of `qlab strategy assign`, `qlab worker start` and
`qlab director start` (quantlab.settings.setting_options), and through them
the keys of quantlab.toml, which are those options' names, and their checks;
the optional fields of control.AssignOptions and their range checks, and
through them a manifest's keys (quantlab.manifest); the keys of a worker
profile (quantlab.worker.options); and the settings table in docs/cli.md, which
``python scripts/settings_table.py`` rewrites and tests/unit/test_settings_table.py
compares with :func:`markdown_table`.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable

import msgspec

from quantlab import numbers
from quantlab.errors import ConfigError
from quantlab.numbers import Setting
from quantlab.store.records import StrategySpec


class FieldSetting(numbers.Field, frozen=True, kw_only=True):
    """One setting as read from its record's field."""

    declared: Setting

    @property
    def flag(self) -> str:
        return self.declared.flag or "--" + self.name.replace("_", "-")

    @property
    def alias_key(self) -> str:
        """The key an older file may still use for it ("tick"); "" when it has had no other name."""
        return self.declared.alias.lstrip("-").replace("-", "_")

    @property
    def allowed(self) -> str:
        """The range in words ("positive"), empty when any value of its type will do."""
        return self.declared.allowed

    @property
    def default_text(self) -> str:
        """The default as the option's help and the table show it: ``1``, ``no limit``, ``off``."""
        return _shown(self.default) if self.default is not None else self.declared.none


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


@functools.cache
def field_settings(cls: type) -> tuple[FieldSetting, ...]:
    """``cls``'s settings, in its field order: every field that declares a Setting."""
    found = []
    for field in numbers.fields(cls):
        if not isinstance(field.declared, Setting):
            continue
        if field.optional and not field.declared.none:
            raise TypeError(f"{cls.__name__}.{field.name} may be None: its Setting must say what None means")
        if field.keyed:
            raise TypeError(f"{cls.__name__}.{field.name}: a setting is one value, not a dict")
        found.append(FieldSetting(name=field.name, kind=field.kind, optional=field.optional, keyed=False,
                                  default=field.default, declared=field.declared))
    return tuple(found)


def spec_settings() -> tuple[FieldSetting, ...]:
    """StrategySpec's settings, in its field order."""
    return field_settings(StrategySpec)


def first_problem(record: msgspec.Struct) -> str | None:
    """The first setting of ``record`` outside its range, as one line naming its option; None if none is."""
    for setting in field_settings(type(record)):
        if (problem := setting.problem(getattr(record, setting.name))) is not None:
            return f"{setting.flag} {problem}"
    return None


def current_keys(values: dict[str, Any], settings: Iterable[FieldSetting], where: str) -> dict[str, Any]:
    """``values`` (a file's keys) with each setting's former key under its name; both at once is an error."""
    out = dict(values)
    for setting in settings:
        old = setting.alias_key
        if not old or old not in out:
            continue
        if setting.name in out:
            raise ConfigError(f"{where}: {old} and {setting.name} are one setting (its former name and its name): "
                              f"keep {setting.name}")
        out[setting.name] = out.pop(old)
    return out


def option_help(setting: FieldSetting) -> str:
    """The help of the setting's `qlab strategy assign` option: its phrase, and its default unless a flag."""
    if setting.kind is bool:
        return f"{setting.declared.help}."
    return f"{setting.declared.help} [{setting.default_text}]."


TABLE_BEGIN = "<!-- strategy settings: made from StrategySpec by scripts/settings_table.py; edit them there -->"
TABLE_END = "<!-- end of strategy settings -->"


def markdown_table() -> str:
    """The settings as docs/cli.md shows them, between its TABLE_BEGIN and TABLE_END lines."""
    rows = ["| Setting | Option | Default | Unit | Allowed | Meaning |",
            "|---|---|---|---|---|---|"]
    for s in spec_settings():
        rows.append(f"| `{s.name}` | `{s.flag}` | {s.default_text} | {s.declared.unit or '-'} "
                    f"| {s.allowed or '-'} | {s.declared.help} |")
    return "\n".join(rows)
