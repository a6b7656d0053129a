"""The supervision rules as small pure pieces, each tested on its own.

Restart backoff and the tick schedule. No I/O and no clock of their own: the
caller passes ``now`` (monotonic). The error window and the rest of a
strategy's supervision are in quantlab/worker/machine.py.
"""

from __future__ import annotations

import math
import zlib

#: Seconds a child must run without error before its restart backoff resets.
STABLE_AFTER = 30.0
#: Fraction of a backoff delay added or taken at random, so restarts do not march in step.
JITTER = 0.1
#: Ticks whose phases fall in one slot this long are sent together, at the slot's start. Each
#: wakeup of a sleeping thread (the channel's I/O thread, the sync thread) costs tens of us on a
#: virtual machine; strategies ticking together share one, and share the group commit of their
#: states. Fine enough that 100 strategies at 10 Hz still tick two or so at a time.
TICK_GRID = 0.002


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
    instead of sending a burst of ticks to catch up: whole intervals, so the tick
    keeps its phase (``tick_phase``), to the first at least half an interval away.
    """
    following = due + interval
    return following if following > now else due + interval * math.ceil((now + interval / 2 - due) / interval)


def tick_phase(strategy_id: str) -> float:
    """Where in each interval a strategy's ticks fall, a fraction in [0, 1) from its id.

    Strategies started together (one `qlab apply`) would otherwise tick together: every
    interval a burst of ticks, and of heartbeats waiting on the worker's loop behind each
    other. Spread by a hash of the id, as Prometheus spreads its scrapes; stable across restarts.
    """
    return zlib.crc32(strategy_id.encode()) / 2**32


def second_tick(first: float, interval: float, phase: float) -> float:
    """The tick after a child's first (sent at once at ``first``): on its phase's slot of the
    grid (TICK_GRID), half an interval on at least."""
    offset = math.floor(phase * interval / TICK_GRID) * TICK_GRID
    return (math.floor((first - offset) / interval + 0.5) + 1) * interval + offset
