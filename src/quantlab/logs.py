"""Read a log file the way `tail [-f] -n N` does, for `qlab strategy logs`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

_BLOCK = 8192
POLL = 0.2  #: seconds between checks for new lines in follow mode


def last_lines(path: Path, count: int) -> tuple[list[str], int]:
    """The last ``count`` lines of ``path`` and the byte offset of its end.

    Reads backwards in blocks, so a long-running strategy's large log costs
    only the tail.
    """
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        data = b""
        position = end
        while position > 0 and data.count(b"\n") <= count:
            step = min(_BLOCK, position)
            position -= step
            f.seek(position)
            data = f.read(step) + data
    lines = data.decode("utf-8", errors="replace").splitlines()
    return (lines[-count:] if count > 0 else []), end


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(POLL)


def _follow(path: Path, offset: int, write: Callable[[str], None]) -> None:
    """Print what is appended from ``offset`` on, across truncation and rotation, forever."""
    inode = os.stat(path).st_ino
    partial = b""
    while True:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            time.sleep(POLL)  # rotated away: the writer creates the file again
            continue
        if stat.st_ino != inode or stat.st_size < offset:
            inode, offset, partial = stat.st_ino, 0, b""  # a new file, or truncated: start over
        if stat.st_size == offset:
            time.sleep(POLL)
            continue
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
        offset += len(chunk)
        # Hold back a half-written last line until its newline arrives.
        *complete, partial = (partial + chunk).split(b"\n")
        for line in complete:
            write(line.decode("utf-8", errors="replace"))


def tail_log(path: Path, lines: int, follow: bool, write: Callable[[str], None]) -> None:
    """Write the last ``lines`` lines; with ``follow``, keep writing new ones until Ctrl-C."""
    try:
        if follow:
            _wait_for(path)
        end = 0
        if path.exists():
            tail, end = last_lines(path, lines)
            for line in tail:
                write(line)
        if follow:
            _follow(path, end, write)
    except KeyboardInterrupt:
        return  # Ctrl-C is how one ends `logs -f`: no traceback, no message
