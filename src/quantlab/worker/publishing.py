"""What the store shows of each strategy: status changes written in batches, heartbeat counts a few a pass.

A status change waits PUBLISH_GATHER seconds for the strategy's next ones
(a start's ``starting``, START_GATHER) and is written with every other change
due by then; a first heartbeat goes out with its own pass. Heartbeat counts, times and usage figures make a slot
``dirty``: they are queued only every few worker heartbeats (``queue_counts``)
and written COUNTS_PER_PASS a pass. Nobody waits for these writes to be
durable: the sync thread syncs them later.

A slot's ``dirty`` is this module's alone: ``changed`` sets it (the manager, for
a heartbeat back), and ``write`` clears it when the store took the status, or
keeps it when the write failed, so the next queue tries again.
"""

from __future__ import annotations

import math
from typing import Mapping

from quantlab.store.fenced import FencedStore
from quantlab.worker.load import Usage
from quantlab.worker.report import Reporter
from quantlab.worker.slot import Slot
from quantlab.worker.syncer import Syncer

#: Heartbeat counts written per loop pass at most (each is a new file on the file store).
COUNTS_PER_PASS = 4
#: Seconds a status change waits for the strategy's next ones before it is written. A start is
#: spawned, starting, running and first beating within milliseconds: one write for them all, not
#: one each (one each would be a fifth of what starting 100 strategies costs the worker).
#: A first heartbeat is written at once, with whatever waits.
PUBLISH_GATHER = 0.05
#: Seconds a start's ``starting`` (with its pid) waits for its ``running`` and first heartbeat: in a
#: mass start each child takes longer than PUBLISH_GATHER to start, and one write each, not two,
#: is a third of what the worker does to start a thousand.
START_GATHER = 1.0


class Publisher:
    def __init__(self, fenced_store: FencedStore, reporter: Reporter, syncer: Syncer, slots: Mapping[str, Slot]) -> None:
        self.fenced_store = fenced_store
        self.reporter = reporter
        self.syncer = syncer
        self.slots = slots  #: the manager's strategies: counts of a slot gone meanwhile are not written
        #: Status changes waiting, each with when it is due (monotonic): those due are written together.
        self.to_publish: dict[str, tuple[Slot, float]] = {}
        self.publish_at = math.inf  #: when the first of ``to_publish`` is due (monotonic)
        #: Heartbeat counts to write, oldest first, a few a pass (``write_counts``).
        self.counts_due: dict[str, Slot] = {}

    def changed(self, slot: Slot) -> None:
        """The slot's counts or times changed: written with the next counts queued."""
        slot.dirty = True

    def write(self, slot: Slot) -> None:
        """Write the slot's status now; it stays dirty when the store refused it for a failure of its own."""
        slot.dirty = not self.reporter.flush_one(slot)

    def publish_by(self, slot: Slot, at: float) -> None:
        """Write the slot's status by ``at`` (with every other due then)."""
        waiting = self.to_publish.get(slot.id)
        at = at if waiting is None else min(at, waiting[1])
        self.to_publish[slot.id] = (slot, at)
        self.publish_at = min(self.publish_at, at)

    def drop(self, slot: Slot) -> None:
        """The slot settles: its last status is the settle's to write."""
        self.to_publish.pop(slot.id, None)

    def publish(self, now: float = math.inf) -> None:
        """Write the status changes due by ``now`` (all by default), made durable by the sync thread's next sync.

        Nobody waits for a status to be durable (a stop's last word is written apart, by
        ``Reporter.settle``, durably), and a sync here would stand between a restarted child's
        Hello and its Init.
        """
        slots = [slot for slot, at in self.to_publish.values() if at <= now]
        for slot in slots:
            del self.to_publish[slot.id]
        self.publish_at = min((at for _, at in self.to_publish.values()), default=math.inf)
        if not slots:
            return
        with self.fenced_store.durable_later():
            for slot in slots:
                self.write(slot)
        self.syncer.ask()

    def note_usage(self, usage: Mapping[int, Usage]) -> None:
        """Each strategy's child's CPU and memory (``usage`` by pid), written with its next heartbeat counts."""
        for slot in self.slots.values():
            figures = usage.get(slot.result.pid) if slot.result.pid else None
            cpu, memory = (None, None) if figures is None else (_rounded(figures.cpu), _rounded(figures.memory))
            if (slot.result.cpu, slot.result.memory) != (cpu, memory):
                slot.result.cpu, slot.result.memory = cpu, memory
                self.changed(slot)

    def queue_counts(self, counts: bool) -> None:
        """Queue the dirty slots' counts (``counts``), and those whose last write failed anyway."""
        for slot in self.slots.values():
            if slot.dirty and (counts or slot.store_failing):
                self.counts_due[slot.id] = slot

    def write_counts(self) -> None:
        """Write up to COUNTS_PER_PASS of the queued counts, synced later by the sync thread.

        All at once, 200 of them would hold the loop for ~60 ms every few seconds: the ticks
        due meanwhile would go out late. Nobody waits for a count to be durable.
        """
        if not self.counts_due:
            return
        with self.fenced_store.durable_later():
            for _ in range(min(COUNTS_PER_PASS, len(self.counts_due))):
                slot = self.counts_due.pop(next(iter(self.counts_due)))
                if slot.dirty and self.slots.get(slot.id) is slot:
                    self.write(slot)
        self.syncer.ask()


def _rounded(figure: float | None) -> float | None:
    return None if figure is None else round(figure, 1)
