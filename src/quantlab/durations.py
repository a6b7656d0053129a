"""Times as people type them on a command line: `--since 10m`, `--since 2h30m`, `--since 2024-05-01T09:30`."""

from __future__ import annotations

import re

from quantlab.errors import BadInput

#: Seconds per unit of a duration.
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = r"(\d+(?:\.\d+)?)([smhd])"
_DURATION = re.compile(rf"(?:{_PART})+")


def seconds(text: str) -> float | None:
    """``text`` as a duration in seconds ("30s", "10m", "2h30m", "1d"); None when it is not one."""
    text = text.strip().lower()
    if not _DURATION.fullmatch(text):
        return None
    return sum(float(number) * UNITS[unit] for number, unit in re.findall(_PART, text))


def since(text: str, now: float, *, option: str = "--since") -> float:
    """The Unix time ``text`` names: a duration back from ``now``, or an ISO time (local unless it has a zone)."""
    duration = seconds(text)
    if duration is not None:
        return now - duration
    from datetime import datetime  # only for an ISO time

    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadInput(f"{option} {text!r}: give a duration such as 30s, 10m, 2h or 1d, "
                       f"or an ISO time such as 2024-05-01T09:30") from None
    return moment.astimezone().timestamp() if moment.tzinfo is None else moment.timestamp()
