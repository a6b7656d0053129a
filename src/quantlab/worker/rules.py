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
#: Ticks whose phases fall in one slot of the grid are sent together, at the slot's start. Each
#: pass of the worker's loop, and each wakeup of a sleeping thread (the channel's I/O thread, the
#: sync thread), costs tens of us on a virtual machine; strategies ticking together share one, and
#: share the group commit of their states. The slot is a share of the interval, within bounds: fine
#: enough that 100 strategies at 10 Hz still tick two or so at a time, coarse enough that 1,000 at
#: 1 Hz make a hundred passes a second rather than a thousand. Seconds.
TICK_GRID = (0.002, 0.01)
GRID_SHARE = 0.01


def tick_grid(interval: float) -> float:
    """The slot of the tick grid for strategies ticking every ``interval`` seconds."""
    return min(max(interval * GRID_SHARE, TICK_GRID[0]), TICK_GRID[1])


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
    grid (``tick_grid``), half an interval on at least."""
    grid = tick_grid(interval)
    offset = math.floor(phase * interval / grid) * grid
    return (math.floor((first - offset) / interval + 0.5) + 1) * interval + offset
