"""A strategy's own log: ctx.log and print() into one file, within a byte budget.

The file is the strategy's (`qlab strategy logs ID`), open on the child's fd 1
and 2: the zygote opens it before the child's sandbox (quantlab/worker/sandbox.py),
which grants no path under the home, so a strategy writes its log only through
that descriptor and can open no other. The worker rotates it by size
(quantlab/worker/logrotate.py); nothing of it passes through the worker. It still
shares the worker's disk, and the store's syncs with it, so what a strategy
writes there is held to Init.limits.log (characters a second, bursts): output
over it is dropped, and the next line that fits is preceded by one saying how
much was dropped.
"""

from __future__ import annotations

import functools
import io
import logging
import sys
import time
from typing import Callable, TextIO

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


class _Handler(logging.StreamHandler):
    """Records into the log, as far as the budget lets them through."""

    def __init__(self, out: TextIO, budget: LogBudget) -> None:
        super().__init__(out)
        self.budget = budget

    def emit(self, record: logging.LogRecord) -> None:
        if not self.budget.admit(record.getMessage()):
            return
        note = self.budget.note()
        if note:
            self.stream.write(note)
        super().emit(record)


class StrategyLog:
    """ctx.log, and print(), into the strategy's own log, ``out`` (the child's fd 1).

    The handler and the logger are made on first use: building them costs a child ~0.4 MB of
    private memory, which a strategy that never logs need not pay.
    """

    def __init__(self, init: Init, out: TextIO) -> None:
        self.init = init
        self.out = out
        self.budget = LogBudget(init.limits.log)

    @functools.cached_property
    def handler(self) -> logging.StreamHandler:
        handler = _Handler(self.out, self.budget)
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
        """print() goes through the same budget into the same file; output written straight to fd 1
        or 2 (a C extension, a subprocess) lands there too, outside the budget but rotated alike."""
        sys.stdout = sys.stderr = _Printed(self)


def log_file() -> TextIO:
    """The log the zygote opened on fd 1 (quantlab/worker/zygote.py): the interpreter's own stdout."""
    assert sys.__stdout__ is not None  # the zygote gives every child an fd 1
    return sys.__stdout__


class _Printed(io.TextIOBase):
    """sys.stdout for a strategy: text written into its log, under the handler's lock."""

    def __init__(self, log: StrategyLog) -> None:
        self.log = log

    def write(self, text: str) -> int:
        budget = self.log.budget
        if budget.admit(text):
            handler = self.log.handler
            handler.acquire()
            try:
                handler.stream.write(budget.note() + text)
                handler.flush()
            finally:
                handler.release()
        return len(text)

    def writable(self) -> bool:
        return True
