"""A thread-safe token bucket: one per exchange account, shared by every strategy.

It is written as GCRA (the "virtual scheduling" form of a token bucket): the
bucket is one number, the theoretical arrival time of the next call. A caller
reserves the next free slot under the lock and then sleeps outside it, so
callers are served in the order they asked (first come, first served) and a
caller whose slot lies beyond its timeout reserves nothing and is refused at
once instead of sleeping in vain.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class RateLimiter:
    """At most ``rate`` calls per second on average, ``burst`` of them back to back."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        burst = max(1.0, rate) if burst is None else burst  # default: one second's worth
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1.0) * self._interval  # how far ahead of schedule a burst may run
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tat = clock()  # theoretical arrival time: when the bucket would be exactly empty
        self._paused_until = float("-inf")

    def acquire(self, timeout: float) -> bool:
        """Wait for a turn, at most ``timeout`` seconds; False (nothing taken) if none came."""
        deadline = self._clock() + timeout
        while True:
            slot = self._reserve(deadline)
            if slot is None:
                return False
            wait = slot - self._clock()
            if wait > 0:
                self._sleep(wait)
            if not self._voided(slot):
                return True
            # The exchange paused the account while we slept: our slot is void, queue again.

    def pause_until(self, until: float) -> None:
        """Give no turns before ``until`` (this limiter's clock): the exchange said the budget is spent.

        After the pause the bucket counts as full again, as the exchange's window has reset.
        """
        with self._lock:
            self._paused_until = max(self._paused_until, until)

    def _reserve(self, deadline: float) -> float | None:
        """Take the next free slot if it comes before ``deadline``; the slot's time, or None."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._tat - self._tolerance, self._paused_until)
            if slot > deadline:
                return None
            self._tat = max(self._tat, slot) + self._interval
            return slot

    def _voided(self, slot: float) -> bool:
        """A pause that began after ``slot`` was reserved and covers it."""
        with self._lock:
            return self._paused_until > slot
