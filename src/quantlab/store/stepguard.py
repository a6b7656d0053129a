"""A daemon loop's steps: one that raises is reported once, and the loop goes on.

A director's or worker's loop acts on every record and every feed line it
reads. One that trips a step (a record no check foresaw, a bug, a full disk)
must not end the loop: the worker's strategy children would lose their
supervisor, and the director's placements would stop. So a step's exception
is caught here, whatever its type. The first failure of a step, and each new
kind of failure while it keeps failing, is logged with its traceback and
recorded as one ``loop_error`` event; repeats are only counted (a failure on
every pass would otherwise write an event every 20 ms). The step's next
success logs how many failures there were and clears them, so the next
outage is reported again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable

from quantlab.errors import StoreUnavailable
from quantlab.store.records import Event, EventKind
from quantlab.store.store import Store


class StepGuard:
    def __init__(
        self, store: Store, log: logging.Logger, *, who: str, worker: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.log = log
        self.who = who  #: names the process in the events (``director d1``, ``worker w1``)
        self.worker = worker
        self.clock = clock
        #: Per failing step: the kinds of error reported so far, and how many failures since it last worked.
        self.failing: dict[str, tuple[set[str], int]] = {}

    def run(self, what: str, step: Callable[[], object]) -> bool:
        """Run ``step``; False when it raised (reported, if it is a new failure)."""
        try:
            step()
        except Exception as e:  # noqa: BLE001 - any exception: the loop must go on
            self._failed(what, e)
            return False
        if what in self.failing:
            _, count = self.failing.pop(what)
            self.log.info("%s works again after %d failure(s)", what, count)
        return True

    def _failed(self, what: str, error: Exception) -> None:
        kinds, count = self.failing.get(what, (set(), 0))
        self.failing[what] = (kinds, count + 1)
        kind = type(error).__name__
        if kind in kinds:
            return
        kinds.add(kind)
        self.log.exception("%s failed; the loop goes on", what)
        detail = f"{self.who}: {what} failed: {kind}: {' '.join(str(error).split())}"
        # The store may be what fails (a full disk, a database away): then the log says it alone.
        with contextlib.suppress(OSError, StoreUnavailable):
            event = Event(ts=self.clock(), kind=EventKind.LOOP_ERROR, worker=self.worker, detail=detail)
            self.store.append_event(event)
