"""The supervision rules as small pure pieces, each tested on its own.

Restart backoff and the tick schedule. No I/O and no clock of their own: the
caller passes ``now`` (monotonic). The error window and the rest of a
strategy's supervision are in quantlab/worker/machine.py.
"""

from __future__ import annotations

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


def next_tick(due: float, interval: float, now: float) -> float:
    """When the tick after the one due at ``due`` is due: one interval on, never in the past.

    After a long pause (a stopped worker, a slow pass) the schedule skips ahead
    instead of sending a burst of ticks to catch up.
    """
    following = due + interval
    return following if following > now else now + interval
