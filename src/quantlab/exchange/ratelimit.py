"""A thread-safe token bucket: one per exchange account, shared by every strategy.

It is written as GCRA (the "virtual scheduling" form of a token bucket): the
bucket is one number, the theoretical arrival time of the next call. A caller
reserves the next free slot under the lock and then sleeps outside it, so
callers are served in the order they asked (first come, first served) and a
caller whose slot lies beyond its timeout reserves nothing and is refused at
once instead of sleeping in vain.

``AccountLimits`` keeps one bucket per account for the API pool, shared by
every strategy and thread on the worker, and pauses an account's bucket when
the exchange says its budget is spent (a 10006 reply, or
``X-Bapi-Limit-Status: 0``). pybit reads neither: left to it, only the thread
that hit the limit would back off, while the account's other threads kept
spending a budget that is already gone.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Mapping

log = logging.getLogger(__name__)

RATE_LIMITED = 10006  # Bybit's retCode for "too many visits"
DEFAULT_PAUSE = 1.0  #: seconds to pause an account after a 10006 that names no reset time
MAX_PAUSE = 60.0  #: seconds; a longer reset time from the exchange is taken as this


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


class AccountLimits:
    """One RateLimiter per account, paused when the exchange says the account's budget is spent."""

    def __init__(
        self, rates: Mapping[str, float], clock: Callable[[], float], sleep: Callable[[float], object],
        wait_observer: Callable[[str, float], None] | None = None,
    ) -> None:
        """``rates``: calls per second by account name; ``sleep`` waits for a turn (and may end early);
        ``wait_observer``: called on a pool thread with (account, seconds) after each rate-limit wait
        (a worker serving metrics counts them)."""
        self.wait_observer = wait_observer
        self._clock = clock
        self._limiters = {name: RateLimiter(rate, clock=clock, sleep=self._timed(name, sleep))
                          for name, rate in rates.items()}

    def acquire(self, account: str, timeout: float) -> bool:
        """Wait for a turn on ``account``, at most ``timeout`` seconds; False if none came."""
        return self._limiters[account].acquire(timeout)

    def note(self, account: str, headers: Mapping[str, str] | None, *, rate_limited: bool) -> None:
        """Pause the account when the exchange says its budget is spent (pybit ignores these headers)."""
        headers = headers or {}
        if not rate_limited and headers.get("X-Bapi-Limit-Status") != "0":
            return
        try:
            delay = int(headers["X-Bapi-Limit-Reset-Timestamp"]) / 1000 - time.time()
        except (KeyError, ValueError):
            delay = DEFAULT_PAUSE
        delay = min(max(delay, 0.0), MAX_PAUSE)
        log.warning("rate limit reached on %s: pausing its calls for %.2f s", account, delay)
        self._limiters[account].pause_until(self._clock() + delay)

    def _timed(self, account: str, sleep: Callable[[float], object]) -> Callable[[float], None]:
        """``sleep`` that reports how long it waited: the limiter calls it only when a call must wait."""

        def timed_sleep(seconds: float) -> None:
            started = self._clock()
            sleep(seconds)
            if self.wait_observer is not None:
                self.wait_observer(account, self._clock() - started)

        return timed_sleep
