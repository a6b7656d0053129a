"""The director: places Work on live workers, one leader per store.

Its lifecycle mirrors the other layers: `st_director_init`, then
`st_director_heartbeat` every ``heartbeat`` seconds (and whenever the store changes), then
`st_director_exit`. A heartbeat first renews (or claims) the leadership lease;
a leader then runs named steps: refresh its view of the Works from the change
feed, watch the workers' leases, expire the lost ones, release what lost
workers held, place what is unplaced, settle stopped works. It never moves a
running strategy on its own accord.

Every write is a compare-and-swap that re-checks its decision on the record it
lands on and stamps the leader's term; a write from an older term, or made
after our leadership ran out on our own clock, is refused.

DirectorLoop has more than 15 methods: the lifecycle's three, and a heartbeat's named steps over one view.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable, Hashable

from quantlab import heap
from quantlab.config import Paths
from quantlab.errors import StaleWriter
from quantlab.logsetup import LogSettings, process_logger
from quantlab.ops.metrics import DirectorMetrics
from quantlab.ops.notify import Notifier
from quantlab.director.leadership import Leadership
from quantlab.store.fenced import FencedStore
from quantlab.store.leases import LeaseWatch
from quantlab.store.open import open_store
from quantlab.director.placement import assigned_counts, choose_worker
from quantlab.store.records import Assignment, Director, EventKind, ExitReason, Resource, Work
from quantlab.store.stepguard import StepGuard
from quantlab.store.store import Store
from quantlab.store.tablestore import TableStore
from quantlab.store import workmachine as wm
from quantlab.store.view import WorkView
from quantlab.signals import StopRequest

#: Seconds between checks of the change feed while waiting for the next heartbeat.
CHANGE_POLL = 0.02


class NotLeading(StaleWriter):
    """Our leadership ran out (on our own clock) before this write: it is not made."""


class DirectorLoop:
    def __init__(
        self,
        store: Store,
        *,
        heartbeat: float = 1.0,
        lease_ttl: float = 10.0,
        log: logging.Logger | None = None,
        clock: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        director_id: str | None = None,
        host: str | None = None,
    ) -> None:
        self.store = store
        self.fenced_store = FencedStore(store, clock)
        self.heartbeat = heartbeat  #: seconds between heartbeats (renewals, reads of the workers)
        self.lease_ttl = lease_ttl
        self.log = log or logging.getLogger("quantlab.director")
        self.clock = clock
        self.mono = mono
        host = host or socket.gethostname()
        self.record = Director(
            id=director_id or f"{host}-{os.getpid()}",
            host=host,
            pid=os.getpid(),
            started=clock(),
        )
        self.lead = Leadership(store, self.record.id, lease_ttl, host=host, clock=clock, mono=mono)
        self.view = WorkView(store, mono=mono)
        self.resources: dict[str, Resource] = {}
        self.workers = LeaseWatch()
        self.directors = LeaseWatch()
        self.looking_at: list[str] = []  #: the Work ids this heartbeat's steps look at
        self.unplaced: set[str] = set()  #: Works that want a worker and have none

    @property
    def leading(self) -> bool:
        return self.record.role == "leader"

    # ---- lifecycle ----

    def st_director_init(self) -> None:
        self._lead_or_stand_by()
        self._publish(self.clock())
        self.log.info("director %s started as %s", self.record.id, self.record.role)

    def st_director_heartbeat(self, now: float, *, renew: bool = True) -> None:
        """One heartbeat: ``renew`` on the timer (lease and every Work looked at), False on a change."""
        if renew or not self.leading:
            self._lead_or_stand_by()
        if self.leading:
            try:
                self.refresh(workers=renew)
                self.expire_workers()
                self.release_orphans()
                self.place_works(now)
                self.settle_stopped(now)
                if renew:
                    self.forget_directors()
            except NotLeading:
                self.log.warning("leadership ran out during a heartbeat: standing by")
                self._lead_or_stand_by()
        if renew:
            self._publish(now)

    def st_director_exit(self, reason: ExitReason) -> None:
        self.log.info("director %s exiting: %s", self.record.id, reason.type)
        self.store.remove_director(self.record.id)
        if self.leading:
            self.lead.release()
            self.fenced_store.event(EventKind.DIRECTOR_STOPPED, detail=self.record.id)

    def report(self, metrics: DirectorMetrics) -> None:
        """The figures a scrape shows: what this director sees, as leader (a standby shows nothing)."""
        metrics.leading.set(1 if self.leading else 0)
        metrics.set_statuses(w.result.status for w in self.view.works.values() if self.leading)
        metrics.workers.labels(state="live").set(len(self.resources) if self.leading else 0)
        metrics.lease_left.set(max(0.0, self.lead.valid_until - self.mono()) if self.leading else 0.0)

    def status_line(self) -> str:
        """What `systemctl status` shows."""
        if not self.leading:
            return "standby"
        pending = sum(1 for w in self.view.works.values() if w.result.status == "pending")
        return (f"leading (term {self.lead.term}): {len(self.resources)} workers, "
                f"{len(self.view.works)} strategies, {pending} pending")

    def wants_heartbeat(self) -> bool:
        """Something changed in the store that a leader should look at now."""
        return self.leading and self.view.dirty()

    # ---- heartbeat steps ----

    def refresh(self, *, workers: bool) -> None:
        """Re-read the Works that changed; the workers on the timer, or when the feed announced one."""
        fresh = self.view.refresh()
        announced = any(c.kind == "resources" for c in fresh.others)
        joined_or_left = (workers or announced) and self._read_workers()
        if fresh.full or announced or joined_or_left:
            self.looking_at = list(self.view.works)
        else:
            self.looking_at = [i for i in fresh.changed if i in self.view.works]
        self._track_unplaced(fresh.full)

    def _read_workers(self) -> bool:
        """Every worker record (one per worker, few), renewals noted; whether one joined or left."""
        resources = {r.id: r for r in self.store.list_resources()}
        joined_or_left = set(resources) != set(self.resources)
        self.resources = resources
        mono = self.mono()
        for r in resources.values():
            self.workers.observe(r.id, _lease_token(r), mono)
        self.workers.keep_only(set(resources))
        if joined_or_left:
            self._warn_if_heartbeat_outlasts_a_lease()
        return joined_or_left

    def _warn_if_heartbeat_outlasts_a_lease(self) -> None:
        """The records are read on the timer: a lease shorter than a heartbeat ends long before its loss is seen."""
        shortest = min(self.resources.values(), key=lambda r: r.spec.lease_ttl, default=None)
        if shortest is not None and self.heartbeat > shortest.spec.lease_ttl:
            self.log.warning("heartbeat %gs is longer than worker %s's lease (%gs): a lost worker is noticed up to "
                             "two heartbeats after its lease runs out", self.heartbeat, shortest.id,
                             shortest.spec.lease_ttl)

    def _track_unplaced(self, full: bool) -> None:
        """Keep the set of Works waiting for a worker, so a freed place retries only those."""
        if full:
            self.unplaced = {i for i, w in self.view.works.items() if wm.wants_a_worker(w)}
            return
        freed = False
        for work_id in self.looking_at:
            work = self.view.works.get(work_id)
            if work is not None and wm.wants_a_worker(work):
                self.unplaced.add(work_id)
            else:
                freed |= work_id not in self.unplaced and (work is None or work.assignment is None)
                self.unplaced.discard(work_id)
        if freed:  # a place may have come free: everything waiting gets another look
            self.looking_at = list(dict.fromkeys([*self.looking_at, *self.unplaced]))

    def _looked_at(self) -> list[Work]:
        return [w for i in self.looking_at if (w := self.view.works.get(i)) is not None]

    def expire_workers(self) -> None:
        """Workers whose lease stopped moving for a lease plus the margin, on a read made now, are gone.

        The records are read on the timer, yet this runs on every heartbeat: by the timer's read
        alone, a worker that renewed since would look expired. So each candidate is read again
        before it is judged; live workers cost no read beyond the timer's.
        """
        mono = self.mono()
        for resource in list(self.resources.values()):
            if self.workers.expired(resource.id, resource.spec.lease_ttl, mono):
                token = self._expired_on_a_fresh_read(resource.id)
                if token is not None:
                    self.remove_lost(resource.id, token)

    def _expired_on_a_fresh_read(self, worker_id: str) -> Hashable | None:
        """Read a candidate's record again; the lease token it stood still at, or None when it is alive or gone."""
        before = self.mono()  # the token read below stood still at least until now
        current = self.store.find_resource(worker_id)
        if current is None:
            self._forget_worker(worker_id)  # it unregistered meanwhile: gone, with nothing to remove
            return None
        self.resources[worker_id] = current
        self.workers.observe(worker_id, _lease_token(current), self.mono())
        if not self.workers.expired(worker_id, current.spec.lease_ttl, before):
            return None
        return self.workers.token(worker_id)

    def remove_lost(self, worker_id: str, token: Hashable) -> bool:
        """Remove a worker whose lease stood still at ``token``; whether it was removed.

        The removal holds only while the record still carries ``token``: when it fails, the worker
        renewed (or restarted) since the read, so it stays, and so do its works.
        """
        self._check_lead()
        if not self.store.remove_resource(worker_id, lambda r: _lease_token(r) == token):
            return False
        self.fenced_store.event(EventKind.WORKER_LOST, worker=worker_id, detail="lease expired")
        self.log.warning("worker %s lost: lease expired", worker_id)
        self._forget_worker(worker_id)
        return True

    def _forget_worker(self, worker_id: str) -> None:
        self.resources.pop(worker_id, None)
        self.workers.forget(worker_id)
        self.looking_at = list(self.view.works)  # its works are orphans now

    def release_orphans(self) -> None:
        """Works assigned to a worker that is gone go back to placement at epoch + 1."""
        for work in self._looked_at():
            if work.assignment is not None and work.assignment.worker not in self.resources:
                self._unassign(work.id, work.assignment, f"worker {work.assignment.worker} lost")

    def place_works(self, now: float) -> None:
        works = [w for w in self._looked_at() if wm.wants_a_worker(w)]
        if not works:
            return
        resources = list(self.resources.values())
        counts = assigned_counts(list(self.view.works.values()))
        with self.fenced_store.durable_together():  # a hundred new strategies: one sync, not three fsyncs each
            for work in works:
                choice = choose_worker(work, resources, counts)
                if choice.worker is None:
                    self._mark_pending(work, choice.reason)
                    continue
                if self._assign(work.id, choice.worker):
                    counts[choice.worker] += 1
                    self.unplaced.discard(work.id)

    def settle_stopped(self, now: float) -> None:
        """A Work that does not want to run and that no worker took settles now: stopped, or gone."""
        for work in self._looked_at():
            if wm.needs_settling(work):
                self._apply(work.id, wm.settle(now))

    def forget_directors(self) -> None:
        """Drop the records of directors that stopped publishing (killed ones never say goodbye)."""
        mono = self.mono()
        directors = self.store.list_directors()
        for director in directors:
            self.directors.observe(director.id, director.last_seen, mono)
            if director.id != self.record.id and self.directors.expired(director.id, self.lease_ttl, mono):
                self.store.remove_director(director.id)
                self.directors.forget(director.id)
                self.fenced_store.event(EventKind.DIRECTOR_LOST, detail=director.id)
        self.directors.keep_only({d.id for d in directors})

    # ---- store writes: fenced by our term ----

    def _check_lead(self) -> None:
        if not self.lead.leading:
            raise NotLeading("leadership lease ran out")

    def _fenced(self, work: Work) -> Work:
        """Refuse to write over a newer leader's write; stamp ours."""
        self._check_lead()
        term = self.lead.term or 0
        if work.leader_epoch > term:
            raise NotLeading(f"work {work.id} was written by director term {work.leader_epoch}, ours is {term}")
        work.leader_epoch = term
        return work

    def _apply(self, work_id: str, transition: wm.Transition) -> wm.Change | None:
        """One transition, fenced by our term; None when the Work moved on. The view keeps what landed."""
        def fenced(work: Work) -> wm.Change:
            change = transition(work)
            if change.work is None:
                self._check_lead()
            else:
                self._fenced(change.work)
            return change

        change = wm.try_apply(self.store, work_id, fenced)
        if change is not None:
            if change.work is None:
                self.view.works.pop(work_id, None)
            else:
                self.view.works[work_id] = change.work
        return change

    def _assign(self, work_id: str, worker_id: str) -> bool:
        if self._apply(work_id, wm.place(worker_id, self.clock())) is None:
            return False
        self.log.info("assigned %s to %s", work_id, worker_id)
        return True

    def _unassign(self, work_id: str, assignment: Assignment, why: str) -> None:
        self._apply(work_id, wm.expire_worker(assignment.worker, why, self.clock()))

    def _mark_pending(self, work: Work, reason: str) -> None:
        if work.result.status != "pending" or work.result.reason != reason:
            self._apply(work.id, wm.mark_pending(reason, self.clock()))

    def _lead_or_stand_by(self) -> None:
        was = self.record.role
        self.record.role = "leader" if self.lead.heartbeat() else "standby"
        if self.record.role == was:
            return
        if self.leading:
            self.fenced_store.event(EventKind.DIRECTOR_LEADING, detail=f"{self.record.id} term {self.lead.term}")
            self.log.info("leading (term %s)", self.lead.term)
            self.view.next_full = 0.0  # a new leader starts from a full view
        else:
            self.log.warning("lost the leadership: standing by")
            self.fenced_store.event(EventKind.DIRECTOR_STANDBY, detail=self.record.id)

    def _publish(self, now: float) -> None:
        self.record.last_seen = now
        self.store.put_director(self.record)


def _lease_token(resource: Resource) -> tuple[str, int]:
    """What moves on every renewal of a worker's lease, and on every restart under the same id."""
    return resource.spec.instance, resource.state.renewals


def run_director(
    paths: Paths, *, heartbeat: float = 1.0, lease_ttl: float = 10.0, logs: LogSettings = LogSettings(),
    metrics_port: int | None = None,
) -> int:
    """`qlab director start`: run in the foreground until SIGTERM/SIGINT."""
    stop = StopRequest().install()
    store = open_store(paths)
    log = process_logger("quantlab.director", paths.director_log(), logs)
    loop = DirectorLoop(store, heartbeat=heartbeat, lease_ttl=lease_ttl, log=log, host=paths.host_name)
    notifier = Notifier()
    # One record or feed line that trips a heartbeat must not end the director: reported once, it goes on.
    guard = StepGuard(store, log, who=f"director {loop.record.id}")
    if isinstance(store, TableStore):
        store.on_warning = log.warning  # a commit whose feed line or event was not written
    metrics = None
    if metrics_port is not None:
        metrics = DirectorMetrics()
        if isinstance(store, TableStore):  # the stores whose commits can be timed
            store.commit_observer = metrics.time_store(store.round_trips)
        metrics.serve(metrics_port)
    loop.st_director_init()
    heap.trim()  # start-up is over: what it freed goes back to the system
    next_beat = 0.0
    while not stop.requested:
        mono = time.monotonic()
        due = mono >= next_beat
        if due or loop.wants_heartbeat():
            guard.run("director heartbeat", lambda: loop.st_director_heartbeat(time.time(), renew=due))
            if due:
                next_beat = mono + heartbeat
                notifier.ready()
                notifier.status(loop.status_line())
                if metrics is not None:
                    loop.report(metrics)
        notifier.watchdog()  # only from the loop: a stuck loop must go quiet
        time.sleep(CHANGE_POLL)
    notifier.stopping("stopping")
    loop.st_director_exit(ExitReason(type="manual", message=f"signal {stop.signal_name}"))
    store.close()
    return 0
