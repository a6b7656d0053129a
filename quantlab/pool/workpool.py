"""The seed's workerpool API over a Store: what workers and the director call.

Writes about a running strategy are fenced: they carry the (worker, epoch) of
the assignment they act under, and the store refuses them once the director
has moved the Work on (StaleWriter), so a worker that lost its lease can never
overwrite the new owner's record.
"""

from __future__ import annotations

import time
from typing import Callable

from quantlab.errors import NotFound, StaleWriter
from quantlab.pool.records import Assignment, Event, Resource, StrategyResult, Work, WorkerState
from quantlab.pool.store import Store


class WorkPool:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    # ---- the seed's names ----

    def register_resource(self, resource: Resource) -> None:
        self.store.put_resource(resource)

    def unregister_resource(self, worker_id: str) -> None:
        self.store.remove_resource(worker_id)

    def update_resource_state(self, resource: Resource, state: WorkerState) -> None:
        resource.state = state
        self.store.put_resource(resource)

    def get_assigned_works(self, worker_id: str) -> list[Work]:
        return [w for w in self.store.list_works() if w.assignment and w.assignment.worker == worker_id]

    def get_work(self, work_id: str) -> Work | None:
        return self.store.find_work(work_id)

    # ---- fenced reports from a worker ----

    def report(
        self, work_id: str, assignment: Assignment, update: Callable[[Work], None], *, notify: bool = False
    ) -> Work:
        """Apply ``update`` to the Work only while ``assignment`` is still its assignment."""

        def fenced(work: Work) -> Work:
            if work.assignment != assignment:
                raise StaleWriter(f"strategy {work_id!r} is no longer assigned to {assignment.worker} at epoch {assignment.epoch}")
            update(work)
            work.result.updated = self.clock()
            return work

        return self.store.update_work(work_id, fenced, notify=notify)

    def report_result(self, work_id: str, assignment: Assignment, result: StrategyResult) -> bool:
        """Write a strategy's result; False when the write was fenced off or the Work is gone."""

        def put(work: Work) -> None:
            work.result = result

        try:
            self.report(work_id, assignment, put)
        except (StaleWriter, NotFound):
            return False
        return True

    def event(self, kind: str, *, strategy: str | None = None, worker: str | None = None, detail: str = "") -> None:
        self.store.append_event(Event(ts=self.clock(), kind=kind, strategy=strategy, worker=worker, detail=detail))
