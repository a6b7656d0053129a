"""Secret variables out of this process's environment, including the copy /proc/PID/environ shows.

``os.environ.pop`` unsets a variable for this process's later lookups and for
what it starts next, but /proc/PID/environ reads the environment block the
kernel laid out at exec, which unsetenv never touches: the value would stay
readable there by whoever may read that file. ``scrub`` also overwrites the
value in that block, so the file shows ``NAME=`` followed by zero bytes.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from pathlib import Path

#: Positions, counted from 1 as proc(5) does, of env_start and env_end in /proc/self/stat.
_ENV_START_FIELD = 50
#: Fields before the first one that follows the ")" closing the command's name.
_BEFORE_STATE = 2


def _environment_block() -> tuple[int, int]:
    """Where the kernel put this process's initial environment: start and end addresses."""
    # The name in parentheses may hold spaces and ")": the fields that follow come after the last one.
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    first = _ENV_START_FIELD - _BEFORE_STATE - 1
    return int(fields[first]), int(fields[first + 1])


def scrub(names: Iterable[str]) -> None:
    """Remove the variables ``names`` from this process's environment and overwrite their values in its block."""
    names = list(names)
    wanted = {name.encode() + b"=" for name in names}
    for name in names:
        os.environ.pop(name, None)
    start, end = _environment_block()
    if not wanted or end <= start:
        return
    offset = 0
    for entry in ctypes.string_at(start, end - start).split(b"\0"):
        prefix = next((p for p in wanted if entry.startswith(p)), None)
        if prefix is not None:
            ctypes.memset(start + offset + len(prefix), 0, len(entry) - len(prefix))
        offset += len(entry) + 1
