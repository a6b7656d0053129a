"""What the worker writes about its strategies: statuses, events, and the last word on each.

Statuses go out with ``flush_one`` (fenced: a worker that lost the Work
writes nothing). A store failure (a full disk) is not a strategy's fault: it
is reported once per run of failures, as an event and a log line, and the
write is tried again; strategies keep running.

The last write about a strategy that leaves this worker (stopped, failed,
handed back or released) is fenced like every write about a running strategy (the assignment it acted
under must still be the Work's), and conditional where a person may have
changed their mind meanwhile: a stop that completes never writes
``desired=stopped`` on its own; only a strategy that stopped itself
(ctx.stop()) does, and only while nobody asked for a start or a restart since.
A write the store refuses for a failure of its own (a full disk) is kept and
tried again with the next flush.
"""

from __future__ import annotations

import logging
from typing import Callable

import msgspec

from quantlab.errors import NotFound, QuantlabError, StaleWriter
from quantlab.store.records import EventKind, StrategyResult, Work
from quantlab.store.workpool import WorkPool
from quantlab.worker import machine as m
from quantlab.worker.slot import Slot

#: What a Work whose stop completed after someone asked to start it again shows until it is placed.
STARTED_AGAIN = "started again while stopping; waiting for the director to place it"


class Reporter:
    def __init__(self, worker_id: str, pool: WorkPool, log: logging.Logger, wall: Callable[[], float]) -> None:
        self.worker_id = worker_id
        self.pool = pool
        self.log = log
        self.wall = wall
        self.unsettled: list[tuple[Slot, m.Settle]] = []

    def note(self, kind: EventKind, slot: Slot | None, detail: str = "") -> None:
        """An event for `qlab events`; one that cannot be written is logged, never raised."""
        try:
            self.pool.event(kind, strategy=slot.id if slot else None, worker=self.worker_id, detail=detail)
        except (OSError, QuantlabError) as e:
            self.log.error("cannot record event %s: %s", kind, e)

    def store_failed(self, slot: Slot | None, what: str, error: Exception) -> None:
        """A store write failed: reported once per run of failures (see ``recovered``), retried by the caller."""
        if slot is not None and slot.store_failing:
            return
        if slot is not None:
            slot.store_failing = True
            slot.marker(self.wall(), f"store write failed ({what}): {error}; retrying")
        self.log.error("store write failed for %s (%s): %s; retrying", slot.id if slot else "-", what, error)
        self.note(EventKind.STORE_WRITE_FAILED, slot, f"{what}: {error}")

    def recovered(self, slot: Slot) -> None:
        if slot.store_failing:
            slot.store_failing = False
            self.log.info("store writes for %s work again", slot.id)

    def flush_one(self, slot: Slot) -> None:
        try:
            if self.pool.report_result(slot.id, slot.assignment, slot.result):
                slot.dirty = False
        except (OSError, QuantlabError) as e:
            slot.dirty = True
            self.store_failed(slot, "writing its status", e)

    def settle(self, slot: Slot, settle: m.Settle) -> None:
        if settle.outcome == "released":  # someone else's now: nothing to write
            self.note(EventKind.RELEASED, slot, settle.reason)
            return
        if not self._write(slot, settle):
            self.unsettled.append((slot, settle))

    def retry(self) -> None:
        pending, self.unsettled = self.unsettled, []
        for slot, settle in pending:
            if not self._write(slot, settle):
                self.unsettled.append((slot, settle))

    def _write(self, slot: Slot, settle: m.Settle) -> bool:
        """True when written (or no longer ours to write); False to try again later."""
        result = msgspec.structs.replace(slot.result, pid=None, reason=settle.reason)
        known_restart = slot.work.spec.restart_seq
        kind = EventKind.FAILED if settle.outcome == "failed" else EventKind.STOPPED

        def put(work: Work) -> None:
            work.assignment = None
            work.result = msgspec.structs.replace(result)
            if settle.outcome == "failed":
                work.result.status = "failed"
                return
            if settle.outcome == "handed_back":
                _waiting(work.result, f"worker {self.worker_id} stopped; waiting for placement")
                return
            if settle.by_strategy and work.desired == "running" and work.spec.restart_seq == known_restart:
                work.desired = "stopped"  # ctx.stop(): it stays stopped, unless a start came since
            if work.desired == "running":
                _waiting(work.result, STARTED_AGAIN)
            else:
                work.result.status = "stopped"

        try:
            self.pool.report(slot.id, slot.assignment, put)
        except (StaleWriter, NotFound) as e:  # fenced off or removed: the store has moved on without us
            self.log.info("not recording %s for %s: %s", settle.outcome, slot.id, e)
            return True
        except (OSError, QuantlabError) as e:
            self.store_failed(slot, f"recording that it {settle.outcome.replace('_', ' ')}", e)
            return False
        if settle.outcome == "handed_back":
            kind = EventKind.RELEASED
        self.note(kind, slot, settle.reason)
        return True


def _waiting(result: StrategyResult, reason: str) -> None:
    result.status = "pending"
    result.reason = reason
