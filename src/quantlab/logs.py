"""Read log files the way `tail [-F] -n N` does, for `qlab strategy logs` and `qlab logs`."""

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


class Tail:
    """One file read as ``tail -F`` reads it: what was appended since the last look, across truncation and rotation."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset  #: bytes of the current file already read
        self.inode: int | None = None  #: the file read from; None until it exists
        self.partial = b""  #: a half-written last line, held until its newline arrives
        try:
            self.inode = os.stat(path).st_ino
        except FileNotFoundError:
            self.offset = 0  # it comes later: all of it is new

    def step(self) -> list[str]:
        """The complete lines appended since the last step (none while the file is away)."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return []  # rotated away: the writer creates the file again
        if stat.st_ino != self.inode or stat.st_size < self.offset:
            self.inode, self.offset, self.partial = stat.st_ino, 0, b""  # a new file, or truncated: start over
        if stat.st_size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        self.offset += len(chunk)
        *complete, self.partial = (self.partial + chunk).split(b"\n")
        return [line.decode("utf-8", errors="replace") for line in complete]


def _follow(path: Path, offset: int, write: Callable[[str], None]) -> None:
    """Print what is appended from ``offset`` on, across truncation and rotation, forever."""
    tail = Tail(path, offset)
    while True:
        lines = tail.step()
        for line in lines:
            write(line)
        if not lines:
            time.sleep(POLL)


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


#: Seconds between looks for strategies that came or went, in `qlab logs -f` of every strategy.
RESCAN = 2.0


class Tails:
    """Many logs read together, each line written after its id ("grid-btc | ..."), as `pm2 logs` does."""

    def __init__(self, lines: int, write: Callable[[str], None]) -> None:
        self.lines = lines  #: the last lines a log shows when it joins
        self.write = write
        self.tails: dict[str, Tail] = {}
        self.width = 0  #: of the longest id so far: the lines stay aligned

    def join(self, found: dict[str, Path]) -> None:
        """Read ``found`` (id -> path) from now on: a log not read before shows its last lines first; one gone leaves."""
        self.width = max([self.width, *map(len, found)])
        tails = {}
        for work_id, path in sorted(found.items()):
            tail = self.tails.get(work_id)
            if tail is None:
                end = 0
                if path.exists():
                    last, end = last_lines(path, self.lines)
                    for line in last:
                        self._line(work_id, line)
                tail = Tail(path, end)
            tails[work_id] = tail
        self.tails = tails

    def step(self) -> bool:
        """Write every log's new lines; whether there were any."""
        wrote = False
        for work_id, tail in self.tails.items():
            for line in tail.step():
                wrote = True
                self._line(work_id, line)
        return wrote

    def _line(self, work_id: str, line: str) -> None:
        self.write(f"{work_id:<{self.width}} | {line}")


def tail_many(sources: Callable[[], dict[str, Path]], lines: int, follow: bool, write: Callable[[str], None]) -> None:
    """`qlab logs`: the last ``lines`` of each log of ``sources()`` (id -> path), each line after its id.

    With ``follow``, then every new line of each as it comes, until Ctrl-C; ``sources()`` is
    asked again every RESCAN seconds, so a strategy started meanwhile joins in.
    """
    tails = Tails(lines, write)
    try:
        tails.join(sources())
        rescan = time.monotonic() + RESCAN
        while follow:
            if time.monotonic() >= rescan:
                tails.join(sources())
                rescan = time.monotonic() + RESCAN
            if not tails.step():
                time.sleep(POLL)
    except KeyboardInterrupt:
        return  # Ctrl-C is how one ends `logs -f`: no traceback, no message
