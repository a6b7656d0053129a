"""Director leadership: a lease record with a term, claimed and renewed by compare-and-swap.

One ``Leader`` record names the leading director and its term (epoch). The
leader renews it on every heartbeat; a standby watches its renewal count and
claims it, with the term raised, once the count has not moved for a lease plus
a margin. A leader acts only while its last renewal is fresher than the lease
minus that margin (its own monotonic clock), and stamps its term on every Work
it writes, so a deposed leader's late writes are refused where the new one has
written.

A Leader record that does not decode names no holder anyone can see. It is
waited out like a lease that stopped moving (a holder that can read it, a
newer quantlab say, keeps it moving), then claimed over: the new term goes
above its version, which bounds every term handed out before it (each claim
is a version of the record).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Callable

from quantlab.errors import CorruptRecord
from quantlab.store.leases import LeaseWatch, holder_deadline
from quantlab.store.records import Leader
from quantlab.store.store import Store

_KEY = "director"


class Leadership:
    def __init__(
        self,
        store: Store,
        director_id: str,
        ttl: float,
        *,
        host: str | None = None,
        clock: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.director_id = director_id
        self.ttl = ttl
        self.host = host or socket.gethostname()
        self.clock = clock
        self.mono = mono
        self.term: int | None = None  #: our epoch while we lead
        self.valid_until = 0.0  #: monotonic: we may act until then
        self._watch = LeaseWatch()

    @property
    def leading(self) -> bool:
        return self.term is not None and self.mono() < self.valid_until

    def heartbeat(self) -> bool:
        """Renew if we lead, else claim if the lease is free or expired; whether we lead now."""
        started = self.mono()
        try:
            leader = self.store.find_leader()
        except CorruptRecord as e:
            return self._over_corrupt(e, started)
        if leader is not None and leader.director == self.director_id and leader.epoch == self.term:
            renewed = self.store.update_leader(self._renew)
            return self._settle(renewed, started)
        self.term = None
        if leader is not None and leader.director:  # "" is a lease given up: free to claim now
            self._watch.observe(_KEY, (leader.director, leader.epoch, leader.renewals), started)
            if not self._watch.expired(_KEY, leader.ttl, started):
                return False
        claimed = self.store.update_leader(lambda current: self._claim(current, leader))
        return self._settle(claimed, started)

    def release(self) -> None:
        """Give the lease up at once (a clean exit), so a standby need not wait it out."""
        if self.term is None:
            return
        term = self.term
        self.term = None
        self.store.update_leader(lambda current: _released(current, self.director_id, term))

    def _renew(self, current: Leader | None) -> Leader | None:
        if current is None or current.director != self.director_id or current.epoch != self.term:
            return None  # someone took over: we lost it
        current.renewals += 1
        current.renewed = self.clock()
        return current

    def _over_corrupt(self, error: CorruptRecord, started: float) -> bool:
        """The record does not decode: claim over it once it has stood still for a lease plus the margin."""
        self.term = None
        self._watch.observe(_KEY, ("undecodable", error.version), started)
        if not self._watch.expired(_KEY, self.ttl, started):
            return False
        claimed = self.store.update_leader(
            lambda current: self._claim(current, None, floor=error.version), over_corrupt=error.version
        )
        return self._settle(claimed, started)

    def _claim(self, current: Leader | None, seen: Leader | None, *, floor: int = 0) -> Leader | None:
        if current != seen:
            return None  # it moved since we judged it expired: not ours to take
        epoch = max(current.epoch if current else 0, floor) + 1
        return Leader(
            director=self.director_id, epoch=epoch, host=self.host, pid=os.getpid(),
            ttl=self.ttl, renewed=self.clock(),
        )

    def _settle(self, leader: Leader | None, started: float) -> bool:
        if leader is None or leader.director != self.director_id:
            self.term = None
            return False
        self.term = leader.epoch
        self.valid_until = holder_deadline(started, self.ttl)
        self._watch.forget(_KEY)
        return True


def _released(current: Leader | None, director_id: str, term: int) -> Leader | None:
    if current is None or current.director != director_id or current.epoch != term:
        return None
    current.renewals += 1
    current.director = ""  # nobody: a standby claims it on its next heartbeat
    return current
