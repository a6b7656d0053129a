"""Every number that reaches a record or a daemon: a range declared on its field, checked where it comes in.

A number given to quantlab (an option, its environment variable, a key of
quantlab.toml, of a worker profile or of a manifest, a field of the accounts
file, a strategy's parameter) ends up in a msgspec record (the store, the pipe
to a daemon) or drives a daemon's timers. msgspec writes NaN and infinity to
JSON as null, which the record's float field cannot read back: one such value
stored leaves the record undecodable for every later reader (a Leader whose
ttl is null stops every director at start). So a number is refused unless it
is finite and within the range its field declares::

    timeout: Annotated[float, Range(at_least=MIN_SECONDS)] = 10.0

A Setting is a Range with the words an option needs (quantlab.store.strategy_settings
makes the options from them). The range is not a msgspec constraint: those are checked
whenever a record is decoded, and a reader must keep whatever a writer stored,
even under other ranges. It is checked where a value comes in, by
:meth:`Field.problem`, and the message names where: the option, or the file
and its line.
"""

from __future__ import annotations

import functools
import math
import re
import types
import typing
from typing import Any, Iterator

import msgspec

#: Seconds: the shortest interval or timeout taken. The loops wait in whole milliseconds
#: (zmq and epoll timeouts), so anything shorter is a busy loop, and 1e-300 is a typo.
MIN_SECONDS = 0.001


class Range(msgspec.Struct, frozen=True, kw_only=True):
    """The values a number may take besides being finite: one lower bound at most, and an upper one."""

    more_than: float | None = None  #: a value must be greater (one lower bound at most: this or at_least)
    at_least: float | None = None  #: a value must be greater or equal
    at_most: float | None = None  #: a value must be smaller or equal

    def __post_init__(self) -> None:
        if self.more_than is not None and self.at_least is not None:
            raise TypeError("a Range has one lower bound, more_than or at_least")

    @property
    def allowed(self) -> str:
        """The range in words ("positive", "at least 0.001", "1 to 65535"); empty when any finite value will do."""
        low = ""
        if self.more_than is not None:
            low = "positive" if self.more_than == 0 else f"more than {self.more_than:g}"
        elif self.at_least is not None:
            low = "zero or more" if self.at_least == 0 else f"at least {self.at_least:g}"
        if self.at_most is None:
            return low
        if self.at_least is not None:
            return f"{self.at_least:g} to {self.at_most:g}"
        return f"{low} and at most {self.at_most:g}" if low else f"at most {self.at_most:g}"

    def admits(self, value: float) -> bool:
        """Whether ``value`` is finite and within the range (NaN fails every comparison: checked first)."""
        return (
            (isinstance(value, int) or math.isfinite(value))  # an int is finite, and may be too large for a float
            and (self.more_than is None or value > self.more_than)
            and (self.at_least is None or value >= self.at_least)
            and (self.at_most is None or value <= self.at_most)
        )

    def problem(self, value: Any, kind: type = float) -> str | None:
        """Why ``value`` may not be given as a ``kind`` ("must be positive, got 0"); None when it may."""
        if kind is bool:
            return None if isinstance(value, bool) else f"must be true or false, got {shown(value)}"
        if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)):
            return f"must be {'a whole number' if kind is int else 'a number'}, got {shown(value)}"
        if self.admits(value):
            return None
        return f"must be {self.allowed or 'finite'}, got {shown(value)}"


class Setting(Range, frozen=True, kw_only=True):
    """What a field declares for the people who set it: its range and its words.

    Read from the records' fields by quantlab.store.strategy_settings, which makes
    the options, the keys and the table from them.

    The range is checked where a value comes in (an option as it is read, a
    file as it is loaded, quantlab.control for every way a strategy is
    assigned), with a message that names the option, or the file and the key.
    """

    help: str  #: what it does, one phrase: the option's help and the table's meaning
    unit: str = ""
    none: str = ""  #: what None means, in words ("no limit"); required of a field that may be None
    flag: str = ""  #: the option's name when it is not the field's (--max-memory for max_memory_mb)
    metavar: str | None = None  #: the option's value in its help; None: click's (FLOAT, INTEGER)
    #: A former name of the option ("--tick"): still taken, hidden from the help, on the command
    #: line, in the environment and (as ``tick``) as a key of quantlab.toml and of a profile.
    alias: str = ""


def shown(value: Any) -> str:
    """A value as a message quotes it: ``nan``, ``1e-300``, ``3``, ``true``, ``'abc'``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if isinstance(value, int) else repr(value)


class Field(msgspec.Struct, frozen=True, kw_only=True):
    """A record's field that declares a Range: ``Annotated[T, Range(...)]``."""

    name: str  #: the field's name: also its key in a file
    kind: type  #: float, int or bool: a value given for it has this type (or is None)
    optional: bool  #: the field may be None
    keyed: bool  #: a ``dict[str, kind]``: the range holds for each value
    default: Any
    declared: Range

    def problem(self, value: Any) -> str | None:
        """Why ``value`` may not be given for this field; None when it may."""
        if value is None and self.optional:
            return None
        return self.declared.problem(value, self.kind)

    def values(self, record: Any) -> Iterator[tuple[str, Any]]:
        """The field's value in ``record`` by its path (``timeout``), or each of its values (``balances.USDT``)."""
        value = getattr(record, self.name)
        if self.keyed:
            yield from ((f"{self.name}.{key}", item) for key, item in value.items())
        else:
            yield self.name, value


@functools.cache
def fields(cls: type) -> tuple[Field, ...]:
    """``cls``'s fields that declare a Range (a Setting is one), in its field order."""
    found = []
    for field in msgspec.structs.fields(cls):
        if typing.get_origin(field.type) is not typing.Annotated:
            continue
        declared = [m for m in field.type.__metadata__ if isinstance(m, Range)]
        if declared:
            kind, optional, keyed = _base(field.type.__origin__, f"{cls.__name__}.{field.name}")
            found.append(Field(name=field.name, kind=kind, optional=optional, keyed=keyed, default=field.default,
                               declared=declared[0]))
    return tuple(found)


def _base(annotation: Any, where: str) -> tuple[type, bool, bool]:
    """``float | None`` -> (float, True, False); ``int`` -> (int, False, False); ``dict[str, float]`` -> (float, False, True)."""
    if typing.get_origin(annotation) is dict:
        kind, optional, _ = _base(typing.get_args(annotation)[1], where)
        return kind, optional, True
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    kinds = [a for a in args if a is not types.NoneType]
    if len(kinds) != 1 or kinds[0] not in (float, int, bool):
        raise TypeError(f"{where}: a Range is declared on a float, int or bool (optionally None, or a dict's values): "
                        f"not {annotation}")
    return kinds[0], len(kinds) < len(args), False


def problems(record: msgspec.Struct, only: typing.Container[str] | None = None) -> Iterator[tuple[str, str]]:
    """(path, problem) for each value of ``record`` outside its field's range; ``only``: these fields' alone."""
    for field in fields(type(record)):
        if only is not None and field.name not in only:
            continue
        for path, value in field.values(record):
            if (problem := field.problem(value)) is not None:
                yield path, problem


def non_finite(value: Any, path: str = "") -> tuple[str, float] | None:
    """The path (``levels[2]``, ``grid.step``) and value of the first NaN or infinity in a JSON value."""
    if isinstance(value, float) and not math.isfinite(value):
        return path, value
    items: Any = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = non_finite(item, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


_TABLE = re.compile(r"\s*\[\s*([A-Za-z0-9_.\-]+)\s*\]\s*(#.*)?$")


def toml_line(text: str, table: str, key: str) -> int | None:
    """The number of the line that sets ``key`` in ``[table]`` ("": before any table); None if none plainly does.

    Plain ``key = value`` lines only: a key set in an inline table or by a dotted key
    is reported by its path alone.
    """
    assignment = re.compile(rf"\s*{re.escape(key)}\s*=")
    current = ""
    for number, line in enumerate(text.splitlines(), start=1):
        if (header := _TABLE.match(line)) is not None:
            current = header.group(1)
        elif current == table and assignment.match(line):
            return number
    return None


def located(path: object, line: int | None) -> str:
    """``/x/quantlab.toml:7``, or the path alone when the line is not known."""
    return f"{path}:{line}" if line is not None else str(path)
