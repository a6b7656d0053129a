"""A strategy's settings: declared once, on StrategySpec's fields, and read from there by everything else.

A setting is a StrategySpec field written ``Annotated[T, Setting(...)] = default``:
its name, type and default are the field's; its unit, range, help and option
name are the Setting's. Made from these declarations: the options of `qlab
strategy assign` (quantlab.cli), and through them the ``[strategy]`` keys of
quantlab.toml, which are those options' names; the optional fields of
control.AssignOptions and their range checks, and through them a manifest's
keys (quantlab.manifest); and the settings table in README.md, which
``python scripts/settings_table.py`` rewrites and tests/unit/test_settings_table.py
compares with :func:`markdown_table`.
"""

from __future__ import annotations

import functools
import math
import types
import typing
from typing import Any

import msgspec


class Setting(msgspec.Struct, frozen=True, kw_only=True):
    """What a StrategySpec field declares for the people who set it.

    The range is not a msgspec constraint: those are checked whenever a stored
    spec is decoded, and a reader must keep whatever spec a writer stored, even
    one from a version whose ranges differ. It is checked where a value comes
    in (quantlab.control), with a message that names the option.
    """

    help: str  #: what it does, one phrase: the option's help and the table's meaning
    unit: str = ""
    more_than: float | None = None  #: a value must be greater (one bound at most: this or at_least)
    at_least: float | None = None  #: a value must be greater or equal
    none: str = ""  #: what None means, in words ("no limit"); required of a field that may be None
    flag: str = ""  #: the option's name when it is not the field's (--max-memory for max_memory_mb)
    metavar: str | None = None  #: the option's value in its help; None: click's (FLOAT, INTEGER)


class SpecSetting(msgspec.Struct, frozen=True, kw_only=True):
    """One setting as read from its StrategySpec field."""

    name: str  #: the field's name: also the manifest key and the quantlab.toml key
    kind: type  #: float, int or bool: a value given for it has this type (or is None)
    optional: bool  #: the field may be None, which means ``declared.none``
    default: Any
    declared: Setting

    @property
    def flag(self) -> str:
        return self.declared.flag or "--" + self.name.replace("_", "-")

    @property
    def allowed(self) -> str:
        """The range in words ("positive"), empty when any value of its type will do."""
        more_than, at_least = self.declared.more_than, self.declared.at_least
        if more_than is not None:
            return "positive" if more_than == 0 else f"more than {more_than:g}"
        if at_least is not None:
            return "zero or more" if at_least == 0 else f"at least {at_least:g}"
        return ""

    @property
    def default_text(self) -> str:
        """The default as the option's help and the table show it: ``1``, ``no limit``, ``off``."""
        return _shown(self.default) if self.default is not None else self.declared.none

    def problem(self, value: Any) -> str | None:
        """Why ``value`` may not be given ("must be positive, got 0"); None when it may.

        NaN and infinity are refused whatever the range: msgspec writes them to
        JSON as null, which the stored spec's float field could not read back.
        """
        if self.kind is bool:
            return None
        finite = not isinstance(value, float) or math.isfinite(value)
        more_than, at_least = self.declared.more_than, self.declared.at_least
        if finite and (more_than is None or value > more_than) and (at_least is None or value >= at_least):
            return None
        return f"must be {self.allowed or 'finite'}, got {_shown(value)}"


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


@functools.cache
def spec_settings() -> tuple[SpecSetting, ...]:
    """StrategySpec's settings, in its field order: every field that declares a Setting."""
    from quantlab.store.records import StrategySpec  # records imports Setting from here

    found = []
    for field in msgspec.structs.fields(StrategySpec):
        if typing.get_origin(field.type) is not typing.Annotated:
            continue
        declared = [m for m in field.type.__metadata__ if isinstance(m, Setting)]
        if not declared:
            continue
        kind, optional = _base(field.type.__origin__)
        if optional and not declared[0].none:
            raise TypeError(f"StrategySpec.{field.name} may be None: its Setting must say what None means")
        if declared[0].more_than is not None and declared[0].at_least is not None:
            raise TypeError(f"StrategySpec.{field.name}: a Setting has one bound, more_than or at_least")
        found.append(SpecSetting(name=field.name, kind=kind, optional=optional, default=field.default,
                                 declared=declared[0]))
    return tuple(found)


def _base(annotation: Any) -> tuple[type, bool]:
    """``float | None`` -> (float, True); ``int`` -> (int, False)."""
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    kinds = [a for a in args if a is not types.NoneType]
    if len(kinds) != 1 or kinds[0] not in (float, int, bool):
        raise TypeError(f"a setting is a float, int or bool, optionally None: not {annotation}")
    return kinds[0], len(kinds) < len(args)


def option_help(setting: SpecSetting) -> str:
    """The help of the setting's `qlab strategy assign` option: its phrase, and its default unless a flag."""
    if setting.kind is bool:
        return f"{setting.declared.help}."
    return f"{setting.declared.help} [{setting.default_text}]."


TABLE_BEGIN = "<!-- strategy settings: made from StrategySpec by scripts/settings_table.py; edit them there -->"
TABLE_END = "<!-- end of strategy settings -->"


def markdown_table() -> str:
    """The settings as README.md shows them, between its TABLE_BEGIN and TABLE_END lines."""
    rows = ["| Setting | Option | Default | Unit | Allowed | Meaning |",
            "|---|---|---|---|---|---|"]
    for s in spec_settings():
        rows.append(f"| `{s.name}` | `{s.flag}` | {s.default_text} | {s.declared.unit or '-'} "
                    f"| {s.allowed or '-'} | {s.declared.help} |")
    return "\n".join(rows)
