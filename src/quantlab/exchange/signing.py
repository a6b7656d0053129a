"""Fencing at send time: the lease is checked when a request is signed, and the exchange checks the rest.

Checking a lease just before sending does not make a send safe: the process
may pause between the check and the bytes reaching the exchange (Kleppmann,
"How to do distributed locking"). Bybit checks no fencing token, but it does
check time: it accepts a request only if ``server_time - recv_window <=
timestamp < server_time + 1000``. So a fenced call is signed with a
``recv_window`` no longer than the lease time left, minus a margin and the
uncertainty of the measured clock offset to the exchange: a request delayed past the lease
(a paused worker, a slow network) arrives outside its window and is refused
by the exchange itself.

Each request is signed with the exchange's time, not ours: our clock plus the
measured offset. An order is signed with the ``Stamp`` written into its intent
before it leaves (the timestamp and the recv_window), so any process on any
host knows, by the exchange's clock alone, when no copy of it can be taken any
more: once the exchange's time has passed ``signed + recv_window``.
"""

from __future__ import annotations

import math
import threading
from typing import Callable, NamedTuple

#: A fenced call's fence: the monotonic moment until which the caller may act (its worker's lease
#: end, already less the lease's own margin); -inf once it may not (the strategy moved away).
Fence = Callable[[], float]

SEND_MARGIN = 0.25  #: seconds of lease a fenced call must still have when it is signed
MIN_RECV_WINDOW_MS = 50  #: a shorter window than this is refused here: the request could not arrive in time
OFFSET_EVERY = 60.0  #: seconds between measurements of an account's clock offset to the exchange
#: seconds added to the end of a request's window (recv_window plus the offset's uncertainty) before
#: the request counts as unable to reach the exchange any more, and a lost order is looked for
WINDOW_SLACK = 1.0


#: milliseconds: pybit's recv_window, the longest quantlab signs with (a lease cuts it shorter)
MAX_RECV_WINDOW_MS = 5000


class Stamp(NamedTuple):
    """What an order is signed with, written into its intent before it leaves."""

    signed: int  #: X-BAPI-TIMESTAMP: the exchange's time (ms) when the intent was written
    recv_window: int  #: X-BAPI-RECV-WINDOW (ms): the exchange takes it while its time <= signed + this


class Fenced(Exception):
    """A fenced call may not leave now: the worker's lease or the strategy's epoch no longer holds."""


def time_left(fence: Fence, now: float) -> float:
    """Seconds a fenced call may still take, after the send margin; Fenced when none are left."""
    left = fence() - now - SEND_MARGIN
    if not left > 0:
        raise Fenced("worker lease not valid for this strategy (it ran out or the strategy moved); call refused")
    return left


def recv_window_ms(fence: Fence, now: float, slack: float, default_ms: int) -> int:
    """The recv_window to sign with: at most ``default_ms``, and over before the lease is.

    ``slack`` is how far our idea of the exchange's clock may be wrong (ClockOffset.slack).
    """
    budget = (time_left(fence, now) - slack) * 1000
    if budget < MIN_RECV_WINDOW_MS:
        raise Fenced(f"worker lease too close to its end to send ({budget:.0f} ms left after the clock's uncertainty)")
    return min(default_ms, math.floor(budget)) if math.isfinite(budget) else default_ms


class ClockOffset:
    """How far an exchange's clock is from ours, measured with /v5/market/time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.offset = 0.0  #: seconds the exchange's clock is ahead of ours (negative: behind)
        self.error = 0.0  #: seconds of uncertainty: half the round trip of the measurement
        self.measured = -math.inf  #: monotonic time of the last measurement
        self.suspect = False  #: a 10002 said the offset is wrong: measure before any signed request

    def stale(self, now: float) -> bool:
        return now - self.measured >= OFFSET_EVERY

    def update(self, offset: float, error: float, now: float) -> None:
        with self._lock:
            self.offset, self.error, self.measured, self.suspect = offset, error, now, False

    def slack(self) -> float:
        """Seconds our idea of the exchange's clock may be wrong: requests are signed with the
        exchange's time, so only the measurement's uncertainty counts, not the offset itself."""
        with self._lock:
            return self.error

    def exchange_ms(self, wall: float) -> int:
        """The exchange's time (ms) at our Unix time ``wall``, as best known: what a request is signed with."""
        with self._lock:
            return round((wall + self.offset) * 1000)

    def exchange_passed_ms(self, wall: float) -> int:
        """A time (ms) the exchange's clock has surely passed at our Unix time ``wall``."""
        with self._lock:
            return math.floor((wall + self.offset - self.error) * 1000)

    def invalidate(self) -> None:
        """Measure again before the next signed call (a 10002 says our idea of the offset is wrong)."""
        with self._lock:
            self.measured, self.suspect = -math.inf, True
