"""What the worker writes about its strategies: statuses, events, and the last word on each.

Statuses go out with ``flush_one`` (fenced: a worker that lost the Work
writes nothing). A store failure (a full disk) is not a strategy's fault: it
is reported once per run of failures, as an event and a log line, and the
write is tried again; strategies keep running. A store that cannot be reached
at all is one outage (quantlab/worker/outage.py): its start and end are logged
once, not each write it fails. Events are never lost to either: one the store
cannot take is kept (quantlab/worker/eventbacklog.py) and written once a store
step works again.

The last write about a strategy that leaves this worker (stopped, failed,
handed back or released) is the Work machine's ``release``: the worker lets
go of the Work it holds, and what the Work shows then is the machine's rule,
not this module's. A write the store refuses for a failure of its own (a
full disk) is kept and tried again with the next flush.
"""

from __future__ import annotations

import logging
from typing import Callable

import msgspec

from quantlab.errors import NotFound, QuantlabError, StoreUnavailable
from quantlab.store import workmachine as wm
from quantlab.store.records import Event, EventKind
from quantlab.store.fenced import FencedStore
from quantlab.worker import machine as m
from quantlab.worker.eventbacklog import EventBacklog
from quantlab.worker.outage import StoreOutage
from quantlab.worker.slot import Slot

class Reporter:
    def __init__(self, worker_id: str, fenced_store: FencedStore, log: logging.Logger, wall: Callable[[], float]) -> None:
        self.worker_id = worker_id
        self.fenced_store = fenced_store
        self.log = log
        self.wall = wall
        self.unsettled: list[tuple[Slot, m.Settle]] = []
        self.outage = StoreOutage(log)
        self.backlog = EventBacklog()

    def through(self, step: Callable[[], None]) -> None:
        """Run one store step of the loop: a store out of reach is the outage's to report, not the
        step's (nothing to trace back); a step that works ends the outage and writes what was kept."""
        began = self.outage.clock()
        try:
            step()
        except StoreUnavailable as e:
            self.outage.failed(e, began)
            return
        if self.outage.ongoing or self.backlog:
            self.outage.ended(self.backlog.flush(self.fenced_store.store))

    def note(self, kind: EventKind, slot: Slot | None, detail: str = "") -> None:
        """An event for `qlab events`; one the store cannot take now is kept, never raised."""
        strategy = slot.id if slot else None
        if not self.backlog:  # else behind those still waiting: the events keep their order
            try:
                self.fenced_store.event(kind, strategy=strategy, worker=self.worker_id, detail=detail)
                return
            except (OSError, QuantlabError) as e:
                self.outage.failed(e)
        self.backlog.keep(Event(ts=self.wall(), kind=kind, strategy=strategy, worker=self.worker_id, detail=detail))

    def store_failed(self, slot: Slot | None, what: str, error: Exception) -> None:
        """A store write failed: reported once per run of failures (see ``recovered``), retried by the caller."""
        if slot is not None and slot.store_failing:
            return
        if slot is not None:
            slot.store_failing = True
            slot.marker(self.wall(), f"store write failed ({what}): {error}; retrying")
        if isinstance(error, StoreUnavailable):
            self.outage.failed(error)  # the outage's one line says it for every write it fails
        else:
            self.log.error("store write failed for %s (%s): %s; retrying", slot.id if slot else "-", what, error)
        self.note(EventKind.STORE_WRITE_FAILED, slot, f"{what}: {error}")

    def recovered(self, slot: Slot) -> None:
        if slot.store_failing:
            slot.store_failing = False
            self.log.info("store writes for %s work again", slot.id)

    def flush_one(self, slot: Slot) -> bool:
        """Write the slot's status, while its epoch is the Work's (a fenced-off write is dropped).

        True when the store has it, or the Work moved on; False when the write failed (reported).
        """
        transition = wm.report(self.worker_id, slot.assignment.epoch, slot.result, self.wall())
        try:
            self.fenced_store.apply(slot.id, transition)
        except (wm.Refused, NotFound):
            return True  # the Work moved on: what this worker knows of it is nobody's business now
        except (OSError, QuantlabError) as e:
            self.store_failed(slot, "writing its status", e)
            return False
        return True

    def settle(self, slot: Slot, settle: m.Settle) -> None:
        if not self._write(slot, settle):
            self.unsettled.append((slot, settle))

    def retry(self) -> None:
        pending, self.unsettled = self.unsettled, []
        for slot, settle in pending:
            if not self._write(slot, settle):
                self.unsettled.append((slot, settle))

    def holds_unsettled(self, work_id: str) -> bool:
        """A strategy whose last word waits to be written: only that write may let go of its Work."""
        return any(slot.id == work_id for slot, _ in self.unsettled)

    def _write(self, slot: Slot, settle: m.Settle) -> bool:
        """Let go of the Work with the last word on its child; True when written or no longer ours."""
        result = msgspec.structs.replace(slot.result, reason=settle.reason)
        transition = wm.release(self.worker_id, slot.assignment.epoch, settle.outcome, result, self.wall(),
                                by_strategy=settle.by_strategy, restart_seq=slot.work.spec.restart_seq)
        try:
            self.fenced_store.apply(slot.id, transition)
        except (wm.Refused, NotFound) as e:  # fenced off or removed: the store has moved on without us
            self.log.info("not recording %s for %s: %s", settle.outcome, slot.id, e)
            if settle.outcome == "released":
                self.note(EventKind.RELEASED, slot, settle.reason)
            return True
        except (OSError, QuantlabError) as e:
            self.store_failed(slot, f"recording that it {settle.outcome.replace('_', ' ')}", e)
            return False
        return True
