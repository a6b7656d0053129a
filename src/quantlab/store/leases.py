"""Leases judged by watching them change, on the watcher's own monotonic clock.

A lease record (a worker's registration, the director's leadership) carries a
renewal count that its holder bumps on every renewal. A watcher never compares
the record's wall-clock expiry with its own wall clock, since a clock step (NTP,
a resumed VM) would then expire every lease at once or none. It notes when it
first saw each renewal count, on ``time.monotonic``, and calls the lease
expired once the count has not moved for ``ttl + margin``. A new watcher
starts from scratch, so it waits out a full lease before it expires anything.

The holder in turn stops acting (self-fences) ``margin`` before ``ttl`` runs
out after the start of its last successful renewal, so the holder is done
before any watcher can take over.
"""

from __future__ import annotations

from typing import Hashable

#: The fraction of a lease kept as a safety margin between holder and watcher.
MARGIN_FRACTION = 0.2


def fence_margin(ttl: float) -> float:
    """Seconds between the holder giving up and a watcher taking over."""
    return ttl * MARGIN_FRACTION


def holder_deadline(renewal_started: float, ttl: float) -> float:
    """Monotonic time until which a holder whose renewal started at ``renewal_started`` may act."""
    return renewal_started + ttl - fence_margin(ttl)


class LeaseWatch:
    """When each watched lease last changed, by the watcher's monotonic clock."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[Hashable, float]] = {}

    def observe(self, key: str, token: Hashable, now: float) -> None:
        seen = self._seen.get(key)
        if seen is None or seen[0] != token:
            self._seen[key] = (token, now)

    def expired(self, key: str, ttl: float, now: float) -> bool:
        seen = self._seen.get(key)
        return seen is not None and now - seen[1] > ttl + fence_margin(ttl)

    def token(self, key: str) -> Hashable | None:
        seen = self._seen.get(key)
        return None if seen is None else seen[0]

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)

    def keep_only(self, keys: set[str]) -> None:
        for key in set(self._seen) - keys:
            del self._seen[key]
