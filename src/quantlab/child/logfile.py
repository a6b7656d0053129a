"""A strategy's own log: ctx.log and print() into one file, rotated by size, within a byte budget.

The file is the strategy's (`qlab strategy logs ID`), written by its own child;
nothing of it passes through the worker. It still shares the worker's disk, and
the store's syncs with it, so what a strategy writes there is held to
Init.limits.log (characters a second, bursts): output over it is dropped, and the
next line that fits is preceded by one saying how much was dropped.
"""

from __future__ import annotations

import functools
import io
import logging
import logging.handlers
import sys
import time
from typing import Callable

from quantlab.protocol import Budget, Init, TokenBucket


class LogBudget:
    """The strategy's budget of log output; counts what it dropped until it is said."""

    def __init__(self, budget: Budget, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self.clock = clock
        self.bucket = TokenBucket(budget, clock())
        self.dropped = 0  #: characters dropped since the last line written

    def admit(self, text: str) -> bool:
        if self.bucket.take(self.clock(), len(text)):
            return True
        self.dropped += len(text)
        return False

    def note(self) -> str:
        """The line saying what was dropped since the last one written ("" when nothing was)."""
        if not self.dropped:
            return ""
        note = (f"quantlab: dropped {self.dropped:,} characters of ctx.log and print() output: over the log budget "
                f"of {self.budget.rate:,.0f} a second (bursts of {self.budget.burst:,})\n")
        self.dropped = 0
        return note


class _Handler(logging.handlers.RotatingFileHandler):
    """The rotating handler, writing only what the budget lets through."""

    def __init__(self, init: Init, budget: LogBudget) -> None:
        super().__init__(init.log_path, maxBytes=init.log_max_bytes, backupCount=init.log_keep)
        self.budget = budget

    def emit(self, record: logging.LogRecord) -> None:
        if not self.budget.admit(record.getMessage()):
            return
        note = self.budget.note()
        if note:
            write(self, note)
        super().emit(record)


def write(handler: logging.handlers.RotatingFileHandler, text: str) -> None:
    """``text`` as it is into the handler's current file, rolling it over first when it would pass its size."""
    handler.acquire()
    try:
        if handler.stream is None:
            handler.stream = handler._open()
        if handler.maxBytes and handler.stream.tell() + len(text) >= handler.maxBytes:
            handler.doRollover()
        handler.stream.write(text)
        handler.stream.flush()
    finally:
        handler.release()


class StrategyLog:
    """ctx.log, and print(), into the strategy's own log, which rotates by size.

    The handler and the logger are made on first use: building them costs a child ~0.4 MB of
    private memory, which a strategy that never logs need not pay.
    """

    def __init__(self, init: Init) -> None:
        self.init = init
        self.budget = LogBudget(init.limits.log)

    @functools.cached_property
    def handler(self) -> logging.handlers.RotatingFileHandler:
        handler = _Handler(self.init, self.budget)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        return handler

    @functools.cached_property
    def logger(self) -> logging.Logger:
        log = logging.getLogger(f"strategy.{self.init.id}")
        log.addHandler(self.handler)
        log.setLevel(logging.INFO)
        log.propagate = False
        return log

    def capture_print(self) -> None:
        """print() goes through the same handler, so it rotates with it; output written straight to
        fd 1 or 2 (a C extension, a subprocess) still lands in the file the zygote opened."""
        sys.stdout = sys.stderr = _Printed(self)


class _Printed(io.TextIOBase):
    """sys.stdout for a strategy: text written to its rotating log handler's current file."""

    def __init__(self, log: StrategyLog) -> None:
        self.log = log

    def write(self, text: str) -> int:
        budget = self.log.budget
        if budget.admit(text):
            write(self.log.handler, budget.note() + text)
        return len(text)

    def writable(self) -> bool:
        return True
