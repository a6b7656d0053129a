"""When each strategy next needs the worker's loop: a heap, so a pass visits the due ones, not all.

With ticks spread over their interval (rules.tick_phase) nearly every tick
and every heartbeat is a pass of its own; a pass that looked at every slot
twice (which is due, and which is due first) was a fifth of an idle worker's
time at 100 strategies. Setting a new time pushes an entry and leaves the old
one, which is skipped when it surfaces.
"""

from __future__ import annotations

import heapq
import itertools


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()  #: ties go first in, first out; keys never compared
        self._at: dict[str, float] = {}  #: each key's one live time

    def set(self, key: str, when: float | None) -> None:
        """``key`` is due at ``when`` (None: never), replacing the time it had."""
        if when is None:
            self._at.pop(key, None)
        elif self._at.get(key) != when:
            self._at[key] = when
            heapq.heappush(self._heap, (when, next(self._order), key))

    def pop_due(self, now: float) -> list[str]:
        """The keys due by ``now``, soonest first; each is then not due until set again."""
        due = []
        while self._heap and self._heap[0][0] <= now:
            when, _, key = heapq.heappop(self._heap)
            if self._at.get(key) == when:
                del self._at[key]
                due.append(key)
        return due

    def next(self) -> float | None:
        """The soonest live time, None when nothing is due ever."""
        while self._heap and self._at.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._at)
