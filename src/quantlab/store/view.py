"""A loop's view of the Works it cares about, kept fresh by the change feed.

A full pass reads every Work once: at start, when the feed says lines were
lost, and every ``full_every`` seconds as a safety net (a writer killed
between its commit and its feed line). In between, ``refresh`` reads only the
Works that the feed names and the ``wants`` filter accepts, so a loop pays for
what changed, not for how many records there are.
"""

from __future__ import annotations

import time
from typing import Callable

import msgspec

from quantlab.errors import CorruptRecord
from quantlab.store.table import Change, Cursor
from quantlab.store.records import Work
from quantlab.store.store import Store

#: Seconds between safety-net full passes.
FULL_PASS_EVERY = 30.0


class Refresh(msgspec.Struct):
    changed: set[str]  #: ids of Works re-read (or gone: no longer in ``works``)
    others: list[Change]  #: feed lines about other kinds (resources, ...)
    full: bool  #: this refresh was a full pass


class WorkView:
    def __init__(
        self,
        store: Store,
        *,
        wants: Callable[[Change], bool] = lambda change: True,
        keeps: Callable[[Work], bool] = lambda work: True,
        full_every: float = FULL_PASS_EVERY,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.wants = wants
        self.keeps = keeps
        self.full_every = full_every
        self.mono = mono
        self.works: dict[str, Work] = {}
        self.cursor: Cursor | None = None
        self.next_full = 0.0

    def dirty(self) -> bool:
        """Cheap: has anything been committed since the last refresh (or is a full pass due)?"""
        return self.cursor is None or self.store.changes_end() != self.cursor or self.mono() >= self.next_full

    def refresh(self) -> Refresh:
        if self.cursor is None or self.mono() >= self.next_full:
            return self.full_pass()
        changes, self.cursor, lost = self.store.changes(self.cursor)
        if lost:
            return self.full_pass()
        wanted = {c.key for c in changes if c.kind == "works" and (c.key in self.works or self.wants(c))}
        for work_id in wanted:
            self.reread(work_id)
        return Refresh(changed=wanted, others=[c for c in changes if c.kind != "works"], full=False)

    def full_pass(self) -> Refresh:
        self.cursor = self.store.changes_end()  # first: whatever commits during the pass is read next time
        self.next_full = self.mono() + self.full_every
        fresh = {w.id: w for w in self.store.list_works() if self.keeps(w)}
        changed = set(fresh) ^ set(self.works) | {i for i, w in fresh.items() if self.works.get(i) != w}
        self.works = fresh
        return Refresh(changed=changed, others=[], full=True)

    def reread(self, work_id: str) -> Work | None:
        """Read one Work now (after our own write lost a race, say) and keep it in the view."""
        try:
            work = self.store.find_work(work_id)
        except CorruptRecord:
            work = None  # skipped until fixed; the full pass reports it as an event
        self._put(work_id, work)
        return work

    def _put(self, work_id: str, work: Work | None) -> None:
        if work is not None and self.keeps(work):
            self.works[work_id] = work
        else:
            self.works.pop(work_id, None)
