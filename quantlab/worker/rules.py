"""The supervision rules as small pure pieces, each tested on its own.

Restart backoff, the error window, and the tick schedule. No I/O and no clock
of their own: the caller passes ``now``.
"""

from __future__ import annotations

import collections

#: Seconds a child must run without error before its restart backoff resets.
STABLE_AFTER = 30.0
#: Fraction of a backoff delay added or taken at random, so restarts do not march in step.
JITTER = 0.1


def backoff_delay(base: float, cap: float, consecutive: int, rand: float) -> float:
    """Delay before restart number ``consecutive`` (1-based): base doubling, jittered, capped.

    ``rand`` is uniform in [0, 1).
    """
    if base <= 0 or consecutive <= 0:
        return 0.0
    delay = min(cap, base * 2 ** (consecutive - 1))
    return min(cap, delay * (1 - JITTER + 2 * JITTER * rand))


class ErrorWindow:
    """Error times within the last ``window`` seconds."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.times: collections.deque[float] = collections.deque()

    def add(self, now: float) -> int:
        """Record an error; the count within the window, this one included."""
        self.times.append(now)
        return self.count(now)

    def count(self, now: float) -> int:
        while self.times and self.times[0] <= now - self.window:
            self.times.popleft()
        return len(self.times)


class TickSchedule:
    """Ticks every ``interval``; a tick goes out only once the last one was answered.

    A tick that comes due while the last one is still running is an overrun:
    counted and skipped, so a slow strategy never builds a backlog.
    """

    def __init__(self, interval: float, now: float) -> None:
        self.interval = interval
        self.next_due = now
        self.seq = 0
        self.in_flight = False
        self.overruns = 0

    def restart(self, now: float) -> None:
        """A new child: numbering starts again at 1; the overrun count is the strategy's and stays."""
        self.next_due = now
        self.seq = 0
        self.in_flight = False

    def due(self, now: float) -> bool:
        """True when a tick should be sent now; counts an overrun when one is skipped."""
        if now < self.next_due:
            return False
        if self.in_flight:
            self.overruns += 1
            self._advance(now)
            return False
        return True

    def sent(self, now: float) -> int:
        self.seq += 1
        self.in_flight = True
        self._advance(now)
        return self.seq

    def answered(self, seq: int) -> bool:
        """True when ``seq`` answers the tick in flight."""
        if not self.in_flight or seq != self.seq:
            return False
        self.in_flight = False
        return True

    def _advance(self, now: float) -> None:
        self.next_due += self.interval
        if self.next_due <= now:  # fell behind (a long pause): skip ahead, never burst
            self.next_due = now + self.interval
