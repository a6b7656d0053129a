"""The store away, as the worker's log tells it: one line when an outage starts, one when it ends.

While the store is away every store call of the loop fails, a few a pass: a
line (let alone a traceback) for each would bury the one thing the operator
needs, which is that the store went away, why, and when it came back. What
the outage does to the strategies is bounded by the lease (the fence kills
them when it runs out), and that is logged where it happens.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from quantlab.errors import StoreUnavailable


class StoreOutage:
    def __init__(self, log: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.clock = clock
        self.since: float | None = None  #: monotonic start of the outage under way, None when there is none
        self.cause = ""  #: the first failure's message, in one line
        self.unreachable = True  #: the store could not be reached (rather than refusing a write: a full disk)
        self.failures = 0  #: store calls failed in the outage under way
        #: The last outage in words, until a lease renewal works: the cause of a lease lost meanwhile.
        self.last = ""

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def failed(self, error: Exception, began: float | None = None) -> None:
        """A store call failed; the first of an outage says so, with its cause.

        ``began``: when the failed step began (monotonic). A silent network fails a call only
        after its timeout: the outage began when the call did.
        """
        self.failures += 1
        if self.since is not None:
            return
        self.since = self.clock() if began is None else began
        self.cause = " ".join(str(error).split()) or type(error).__name__
        self.unreachable = isinstance(error, StoreUnavailable)
        self.log.warning("store %s: %s; keeping this worker's events until it is back; "
                         "its strategies stop if the lease runs out first", self._state("unreachable"), self.cause)

    def describe(self) -> str:
        """The outage under way, or the last one since the lease was renewed, in words ("" when
        there is none): why a lease was lost."""
        if self.since is None:
            return self.last
        return f"the store was {self._state('unreachable')} for {self.clock() - self.since:.1f}s: {self.cause}"

    def renewed(self) -> None:
        """The lease was renewed: a lease lost from now on was not lost to an earlier outage."""
        if self.since is None:
            self.last = ""

    def ended(self, events: str) -> None:
        """A store step worked again; ``events``: what became of the events kept meanwhile."""
        if self.since is None:
            return
        self.last = self.describe()
        took = self.clock() - self.since
        self.log.warning("store %s again after %.1fs (%d failed call(s)); %s",
                         self._state("reachable"), took, self.failures, events)
        self.since, self.failures = None, 0

    def _state(self, reachable: str) -> str:
        return reachable if self.unreachable else reachable.replace("reachable", "writable")
