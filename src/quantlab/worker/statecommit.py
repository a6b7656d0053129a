"""Group commit of the states heartbeats return: one store write for every strategy of a few passes.

A Heartbeat's state is not written when it arrives: it waits here, and every
state waiting is written as one group GATHER seconds after the first of them
came (strategies tick spread over their interval, so a group gathers the
heartbeats of several passes), then made durable by one sync
(quantlab/worker/syncer.py: the file store's syncfs, on its own thread;
PostgreSQL's statement is durable as it returns). The rule stays: the state
returned by heartbeat N is durable before tick N+1 reaches that strategy,
because a tick to a strategy whose state still waits commits the group
first, then waits for its sync (``before_send``). What each write says is
what it said alone: a StaleWriter stops that strategy, a failing store is
reported and the state written again on a later pass, the others go on.
"""

from __future__ import annotations

from typing import Callable, Iterable

from quantlab.errors import QuantlabError, StaleWriter
from quantlab.store.statewrites import StateWrite
from quantlab.store.fenced import FencedStore
from quantlab.worker.report import Reporter
from quantlab.worker.slot import Slot
from quantlab.worker.syncer import Syncer

#: How long a tick waits for its strategy's state to be synced before it is reported and sent anyway.
SYNC_WAIT = 2.0
#: Seconds the first state of a group waits for others before the group is written (its own
#: next tick is an interval away: a tick due sooner writes the group at once).
GATHER = 0.005


class StateCommits:
    def __init__(
        self,
        fenced_store: FencedStore,
        reporter: Reporter,
        on_stale: Callable[[Slot, StaleWriter], None],
        clock: Callable[[], float],
    ) -> None:
        self.fenced_store = fenced_store
        self.reporter = reporter
        self.on_stale = on_stale  #: a newer epoch holds the slot's state: the manager stops it
        self.clock = clock
        self.waiting: dict[str, Slot] = {}  #: slots whose newest state is not written yet
        self.since = 0.0  #: when the first of the waiting states came (monotonic)
        self.batches = 0  #: group commits made (figures and tests)
        self.syncer = Syncer(fenced_store.sync, reporter.log)
        #: Per strategy, the sync generation its last written state needs (Syncer.ask).
        self.generation: dict[str, int] = {}

    def add(self, slot: Slot, state: bytes) -> None:
        slot.unsaved = state
        self._wait(slot)

    def _wait(self, slot: Slot) -> None:
        if not self.waiting:
            self.since = self.clock()
        self.waiting[slot.id] = slot

    def due(self) -> float | None:
        """When the waiting states are to be written; None when none waits."""
        return self.since + GATHER if self.waiting else None

    def commit_due(self, now: float) -> None:
        """Write the group if its first state has waited GATHER seconds."""
        if self.waiting and now >= self.since + GATHER:
            self.commit()

    def before_send(self, slot: Slot) -> None:
        """A tick or Init is about to reach ``slot``: its waiting state must be durable first."""
        if slot.id in self.waiting:
            self.commit()
        generation = self.generation.get(slot.id, 0)
        if generation > self.syncer.done and not self.syncer.wait(generation, SYNC_WAIT):
            error = self.syncer.error or OSError(f"the store's sync took over {SYNC_WAIT:g} s")
            self.reporter.store_failed(slot, "making its state durable", error)

    def retry(self, slots: Iterable[Slot]) -> None:
        """States the store refused before join the next group."""
        for slot in slots:
            if slot.unsaved is not None:
                self._wait(slot)

    def settle(self, slot: Slot) -> None:
        """The slot is leaving: its last state is written and synced now (tried once more, then dropped)."""
        if slot.unsaved is not None:
            self.waiting[slot.id] = slot
            self.commit()
        self.waiting.pop(slot.id, None)
        generation = self.generation.pop(slot.id, 0)
        if generation > self.syncer.done:
            self.syncer.wait(generation, SYNC_WAIT)

    def close(self) -> None:
        self.syncer.close()

    def commit(self) -> None:
        """Write every waiting state; one sync, asked for here, makes them all durable."""
        slots = [s for s in self.waiting.values() if s.unsaved is not None and not s.moved_away]
        self.waiting.clear()
        if not slots:
            return
        writes = [StateWrite(s.id, s.assignment.epoch, s.unsaved) for s in slots if s.unsaved is not None]
        self.batches += 1
        try:
            with self.fenced_store.durable_later():
                outcomes = self.fenced_store.save_states(writes)
        except (OSError, QuantlabError) as e:
            for slot in slots:
                self.reporter.store_failed(slot, "saving its state", e)
            return
        generation = self.syncer.ask()
        for slot, outcome in zip(slots, outcomes):
            self.generation[slot.id] = generation
            if isinstance(outcome, StaleWriter):
                slot.unsaved = None
                self.on_stale(slot, outcome)
            elif outcome is not None:
                self.reporter.store_failed(slot, "saving its state", outcome)
            else:
                slot.unsaved = None
                self.reporter.recovered(slot)
