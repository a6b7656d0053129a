"""Group commit of the states heartbeats return: one store write for every strategy of a pass.

A Heartbeat's state is not written when it arrives: it waits here, and the
whole group is written as one durable step (one fsync, one statement) at the
start of the next supervision pass, before that pass sends any tick. The
rule stays: the state returned by heartbeat N is durable before tick N+1
reaches that strategy, because a tick to a strategy whose state still waits
commits the group first (``before_send``). What each write says is what it
said alone: a StaleWriter stops that strategy, a failing store is reported
and the state written again on a later pass, the others go on.
"""

from __future__ import annotations

from typing import Callable, Iterable

from quantlab.errors import QuantlabError, StaleWriter
from quantlab.pool.statewrites import StateWrite
from quantlab.pool.workpool import WorkPool
from quantlab.worker.report import Reporter
from quantlab.worker.slot import Slot


class StateCommits:
    def __init__(self, pool: WorkPool, reporter: Reporter, on_stale: Callable[[Slot, StaleWriter], None]) -> None:
        self.pool = pool
        self.reporter = reporter
        self.on_stale = on_stale  #: a newer epoch holds the slot's state: the manager stops it
        self.waiting: dict[str, Slot] = {}  #: slots whose newest state is not written yet
        self.batches = 0  #: group commits made (figures and tests)

    def add(self, slot: Slot, state: bytes) -> None:
        slot.unsaved = state
        self.waiting[slot.id] = slot

    def before_send(self, slot: Slot) -> None:
        """A tick or Init is about to reach ``slot``: its waiting state must be durable first."""
        if slot.id in self.waiting:
            self.commit()

    def retry(self, slots: Iterable[Slot]) -> None:
        """States the store refused before join the next group."""
        for slot in slots:
            if slot.unsaved is not None:
                self.waiting[slot.id] = slot

    def settle(self, slot: Slot) -> None:
        """The slot is leaving: its last state is written now (it is tried once more, then dropped)."""
        if slot.unsaved is not None:
            self.waiting[slot.id] = slot
            self.commit()
        self.waiting.pop(slot.id, None)

    def commit(self) -> None:
        """Write every waiting state as one durable step."""
        slots = [s for s in self.waiting.values() if s.unsaved is not None and not s.moved_away]
        self.waiting.clear()
        if not slots:
            return
        writes = [StateWrite(s.id, s.assignment.epoch, s.unsaved) for s in slots if s.unsaved is not None]
        self.batches += 1
        try:
            outcomes = self.pool.save_states(writes)
        except (OSError, QuantlabError) as e:
            for slot in slots:
                self.reporter.store_failed(slot, "saving its state", e)
            return
        for slot, outcome in zip(slots, outcomes):
            if isinstance(outcome, StaleWriter):
                slot.unsaved = None
                self.on_stale(slot, outcome)
            elif outcome is not None:
                self.reporter.store_failed(slot, "saving its state", outcome)
            else:
                slot.unsaved = None
                self.reporter.recovered(slot)
