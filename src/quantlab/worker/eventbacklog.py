"""Events the store could not take, kept in order and written when it takes writes again."""

from __future__ import annotations

import collections

from quantlab.errors import QuantlabError
from quantlab.store.records import Event
from quantlab.store.store import Store

#: Events kept while the store is away; beyond it the oldest go (counted). A worker notes a few
#: events a strategy per fault: a thousand is minutes of a hundred strategies failing at once.
KEPT = 1000


class EventBacklog:
    def __init__(self, bound: int = KEPT) -> None:
        self.bound = bound
        self.events: collections.deque[Event] = collections.deque()
        self.dropped = 0  #: oldest events let go since the last flush, to keep within the bound

    def __bool__(self) -> bool:
        return bool(self.events)

    def keep(self, event: Event) -> None:
        if len(self.events) >= self.bound:
            self.events.popleft()
            self.dropped += 1
        self.events.append(event)

    def flush(self, store: Store) -> str:
        """Write what was kept, oldest first, each with its own time; what became of them, in words.

        Stops at the first write that fails: the rest stay, in order, for the next flush.
        """
        written = 0
        while self.events:
            try:
                store.append_event(self.events[0])
            except (OSError, QuantlabError):
                break
            self.events.popleft()
            written += 1
        said = f"{written} kept event(s) written"
        if self.dropped:
            said += f", {self.dropped} older one(s) dropped (at most {self.bound} are kept)"
        if self.events:
            said += f", {len(self.events)} still waiting"
        self.dropped = 0
        return said
