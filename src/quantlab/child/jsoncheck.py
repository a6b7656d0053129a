"""Is it JSON? ``ctx.state`` and ``ctx.send`` payloads are checked in the child.

A value the store cannot hold as it is (a tuple, None or bool key, a set, a
NaN, an object) must be the strategy's own error, raised where it runs and
naming the key path, never an exception in the worker, where it could take
the worker down with every strategy on it.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode


class NotJson(ValueError):
    """A value is not JSON; the message starts with its key path, e.g. ``state['a'][(1, 2)]``."""


def to_json(value: Any, name: str) -> bytes:
    """``value`` as JSON bytes, or NotJson naming the first value JSON cannot hold as it is."""
    try:
        data = _encode(value)
    except (TypeError, ValueError, RecursionError) as e:
        _find(value, name, 0)
        raise NotJson(f"{name}: {e}") from e
    # msgspec writes int keys as strings, sets as arrays and NaN as null; reading back shows it.
    if _decode(data) != value:
        _find(value, name, 0)
    return data


#: Nesting deeper than this is reported (and a value that contains itself).
MAX_DEPTH = 200


def _find(value: Any, path: str, depth: int) -> None:
    """Raise NotJson at the first value under ``path`` that is not JSON; tuples pass as arrays."""
    if depth > MAX_DEPTH:
        raise NotJson(f"{path[:100]}...: nested deeper than {MAX_DEPTH} levels (does it contain itself?)")
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJson(f"{path}: {value!r} is not a JSON number")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}[{key!r}]"
            if not isinstance(key, str):
                raise NotJson(f"{where}: key is not a string")
            _find(item, where, depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _find(item, f"{path}[{index}]", depth + 1)
        return
    raise NotJson(f"{path}: {type(value).__name__} is not JSON")
