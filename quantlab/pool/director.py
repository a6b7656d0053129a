"""The director: places Work on live workers, one leader per store.

Its lifecycle mirrors the other layers: `st_director_init`, then
`st_director_heartbeat` every tick (and whenever the store changes), then
`st_director_exit`. A heartbeat is three named steps: expire workers whose
lease ran out, place what is unplaced, settle stopped works. It never moves a
running strategy on its own accord.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable

from quantlab.config import Paths
from quantlab.errors import QuantlabError
from quantlab.logsetup import process_logger
from quantlab.pool.open import open_store
from quantlab.pool.placement import assigned_counts, choose_worker
from quantlab.pool.records import Assignment, Director, ExitReason, Work
from quantlab.pool.store import Store
from quantlab.pool.workpool import WorkPool
from quantlab.signals import StopRequest

#: Seconds between checks of the store's change token while waiting for the next tick.
CHANGE_POLL = 0.02


class DirectorLoop:
    def __init__(
        self,
        store: Store,
        *,
        tick: float = 1.0,
        lease_ttl: float = 10.0,
        log: logging.Logger | None = None,
        clock: Callable[[], float] = time.time,
        director_id: str | None = None,
    ) -> None:
        self.store = store
        self.pool = WorkPool(store, clock)
        self.tick = tick
        self.lease_ttl = lease_ttl
        self.log = log or logging.getLogger("quantlab.director")
        self.clock = clock
        now = clock()
        self.record = Director(
            id=director_id or f"{socket.gethostname()}-{os.getpid()}",
            host=socket.gethostname(),
            pid=os.getpid(),
            started=now,
        )

    @property
    def leading(self) -> bool:
        return self.record.role == "leader"

    # ---- lifecycle ----

    def st_director_init(self) -> None:
        self._take_lead_if_free()
        self._publish(self.clock())
        self.log.info("director %s started as %s", self.record.id, self.record.role)

    def st_director_heartbeat(self, now: float) -> None:
        if not self.leading:
            self._take_lead_if_free()
        if self.leading:
            self.expire_workers(now)
            self.place_works(now)
            self.settle_stopped(now)
            self.forget_directors(now)
        self._publish(now)

    def st_director_exit(self, reason: ExitReason) -> None:
        self.log.info("director %s exiting: %s", self.record.id, reason.type)
        self.store.remove_director(self.record.id)
        if self.leading:
            self.store.release_lead()
            self.pool.event("director_stopped", detail=self.record.id)

    # ---- heartbeat steps ----

    def expire_workers(self, now: float) -> None:
        """Workers whose lease ran out are gone; their works go back to placement at epoch + 1."""
        resources = {r.id: r for r in self.store.list_resources()}
        for resource in list(resources.values()):
            if resource.state.lease_expires <= now:
                self.store.remove_resource(resource.id)
                del resources[resource.id]
                self.pool.event("worker_lost", worker=resource.id, detail="lease expired")
                self.log.warning("worker %s lost: lease expired", resource.id)
        for work in self.store.list_works():
            if work.assignment is not None and work.assignment.worker not in resources:
                self._unassign(work.id, work.assignment, f"worker {work.assignment.worker} lost")

    def place_works(self, now: float) -> None:
        works = self.store.list_works()
        resources = self.store.list_resources()
        counts = assigned_counts(works)
        for work in works:
            if work.desired != "running" or work.assignment is not None or work.result.status == "failed":
                continue
            choice = choose_worker(work, resources, counts, now)
            if choice.worker is None:
                self._mark_pending(work, choice.reason)
                continue
            counts[choice.worker] += 1
            self._assign(work.id, choice.worker)

    def settle_stopped(self, now: float) -> None:
        """A stop asked for a Work that no worker runs is done at once."""
        for work in self.store.list_works():
            if work.desired == "stopped" and work.assignment is None and work.result.status not in ("stopped", "failed"):
                self._set_status(work.id, "stopped", "stopped by operator")

    def forget_directors(self, now: float) -> None:
        """Drop the records of directors not seen for lease_ttl (killed ones never say goodbye)."""
        for director in self.store.list_directors():
            if director.id != self.record.id and director.last_seen < now - self.lease_ttl:
                self.store.remove_director(director.id)
                self.pool.event("director_lost", detail=director.id)

    # ---- store writes ----

    def _assign(self, work_id: str, worker_id: str) -> None:
        def assign(work: Work) -> Work | None:
            if work.assignment is not None or work.desired != "running":
                return None  # changed since we read it
            work.epoch += 1
            work.assignment = Assignment(worker=worker_id, epoch=work.epoch)
            work.result.status = "assigned"
            work.result.reason = ""
            work.result.updated = self.clock()
            return work

        work = self.store.update_work(work_id, assign)
        if work.assignment is not None and work.assignment.worker == worker_id:
            self.pool.event("assigned", strategy=work_id, worker=worker_id, detail=f"epoch {work.epoch}")
            self.log.info("assigned %s to %s (epoch %d)", work_id, worker_id, work.epoch)

    def _unassign(self, work_id: str, assignment: Assignment, why: str) -> None:
        def unassign(work: Work) -> Work | None:
            if work.assignment != assignment:
                return None
            work.assignment = None
            work.epoch += 1  # fences off the lost worker's late writes
            if work.result.status not in ("stopped", "failed"):
                work.result.status = "pending"
                work.result.pid = None
                work.result.reason = f"{why}; waiting for placement"
            return work

        self.store.update_work(work_id, unassign)
        self.pool.event("reassigned", strategy=work_id, worker=assignment.worker, detail=why)

    def _mark_pending(self, work: Work, reason: str) -> None:
        if work.result.status == "pending" and work.result.reason == reason:
            return
        self._set_status(work.id, "pending", reason)
        self.pool.event("pending", strategy=work.id, detail=reason)

    def _set_status(self, work_id: str, status: str, reason: str) -> None:
        def put(work: Work) -> Work:
            work.result.status = status  # type: ignore[assignment]
            work.result.reason = reason
            work.result.updated = self.clock()
            return work

        self.store.update_work(work_id, put, notify=False)

    def _take_lead_if_free(self) -> None:
        if self.store.try_lead():
            self.record.role = "leader"
            self.pool.event("director_leading", detail=self.record.id)

    def _publish(self, now: float) -> None:
        self.record.last_seen = now
        self.store.put_director(self.record)


def run_director(paths: Paths, *, tick: float = 1.0, lease_ttl: float = 10.0) -> int:
    """`qlab director start`: run in the foreground until SIGTERM/SIGINT."""
    stop = StopRequest().install()
    store = open_store(paths)
    loop = DirectorLoop(store, tick=tick, lease_ttl=lease_ttl, log=process_logger("quantlab.director", paths.director_log()))
    loop.st_director_init()
    token = store.change_token()
    next_beat = 0.0
    while not stop.requested:
        now = time.time()
        changed = store.change_token() != token
        if changed or now >= next_beat:
            token = store.change_token()
            try:
                loop.st_director_heartbeat(now)
            except (OSError, QuantlabError):
                loop.log.exception("director heartbeat failed; trying again at the next one")
            next_beat = now + tick
        time.sleep(CHANGE_POLL)
    loop.st_director_exit(ExitReason(type="manual", message=f"signal {stop.signal_name}"))
    store.close()
    return 0
