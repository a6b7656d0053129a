"""The strategy manager: turns what happens into machine events, and performs the machine's actions.

What happens, each a named entry point: `reconcile` (what the store says
should run here), `on_message` (a child spoke), a child's exit (the
transport's ``on_exit`` callback) and `supervise` (one pass of the loop: the
lease, outboxes, timers, memory, retried writes). Decisions are made in
quantlab/worker/machine.py; this file does I/O only through the Transport
(processes and sockets) and the FencedStore (the store), by way of the modules
it hands each part to: lease.py (the lease and the calls' fence), following.py
(the store's Works), starts.py (reconciliation and forks), inbox.py (messages
from children), outbox.py (messages to them), publishing.py (statuses and
counts) and statecommit.py (states).

StrategyManager has more than 15 methods: half are the doors the loop, the
lifecycle and the hooks call (most one line long); the rest are one pass and
the performing of the machine's actions.

Timers run on ``clock`` (monotonic: a wall-clock step must not silence ticks,
hang detection or backoff); ``wall`` stamps only what people read.
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Callable, Mapping

import msgspec

from quantlab.config import Paths
from quantlab.errors import StaleWriter
from quantlab.exchange.halts import Halts
from quantlab.logsetup import LogSettings
from quantlab.ops.metrics import WorkerMetrics
from quantlab.protocol import ApiResult, Message, Stop, Tick, ToWorker
from quantlab.store.fenced import FencedStore
from quantlab.store.records import ErrorInfo, EventKind, ExitReason, TickInfo, Work
from quantlab.worker import machine as m
from quantlab.worker import procs
from quantlab.worker.channel import Garbled
from quantlab.worker.fenceguard import FenceGuard
from quantlab.worker.following import Following
from quantlab.worker.inbox import Inbox
from quantlab.worker.lease import LEASE_KILL_GRACE, Fencing, Lease
from quantlab.worker.load import Usage
from quantlab.worker.outbox import Outboxes
from quantlab.worker.peers import Peers
from quantlab.worker.publishing import PUBLISH_GATHER, START_GATHER, Publisher
from quantlab.worker.report import Reporter
from quantlab.worker.rules import tick_phase
from quantlab.worker import logrotate
from quantlab.worker.slot import Slot, statuses_now
from quantlab.worker.starts import Starts
from quantlab.worker.statecommit import StateCommits
from quantlab.worker.timers import Timers
from quantlab.worker.transport import Transport

#: Seconds to wait for a self-exiting child's last message before judging its exit.
LAST_WORDS_WAIT = 0.05
#: Seconds between memory samples of a strategy with a memory limit.
MEMORY_EVERY = 2.0
#: Seconds between retries of a store write that failed (state, Init's state read).
STORE_RETRY = 1.0


class StrategyManager:
    def __init__(
        self,
        *,
        worker_id: str,
        fenced_store: FencedStore,
        transport: Transport,
        paths: Paths,
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        phase: Callable[[str], float | None] = tick_phase,
        guard: FenceGuard | None = None,
        metrics: WorkerMetrics | None = None,
        log_settings: LogSettings | None = None,
    ) -> None:
        self.worker_id = worker_id
        #: Where in its interval a strategy ticks (rules.tick_phase); None: from its start, exactly.
        self.phase = phase
        self.fenced_store = fenced_store
        self.transport = transport
        self.log = log
        self.clock = clock
        self.wall = wall
        self.rng = rng or random.Random()
        self.slots: dict[str, Slot] = {}
        #: Forked incarnations by Slot.key, from the zygote's answer (starts.py) until their exit.
        self.by_key: dict[bytes, Slot] = {}
        self.store_retry_at = 0.0
        #: The halts in force, read every worker heartbeat (the API pool reads them again as it sends).
        self.halts = Halts()
        self.log_settings = log_settings or LogSettings()  #: how strategy logs rotate (the worker's --log-max-mb, --log-keep)
        self.metrics = metrics  #: when the worker serves --metrics-port
        #: Told each new lease deadline (plus grace), to kill the children even while the loop is stuck.
        self.guard = guard
        self.timers = Timers()  #: each slot's next deadline (its ``due``), soonest first
        self.peers = Peers(log, clock)  #: which channel connection speaks for which incarnation
        self.lease = Lease(clock, log)
        self.reporter = Reporter(worker_id, fenced_store, log, wall)
        self.states = StateCommits(fenced_store, self.reporter, self._state_taken, clock)
        self.publisher = Publisher(fenced_store, self.reporter, self.states.syncer, self.slots)
        self.fencing = Fencing(self.lease, self.slots, fenced_store, worker_id)
        self.outboxes = Outboxes(transport, self.peers, self.lease, log, lambda slot, charge: self.feed(slot, m.Fault(charge)))
        self.following = Following(
            worker_id=worker_id, slots=self.slots, feed=self.feed, supervision=self._supervision, fenced_store=fenced_store,
            reporter=self.reporter, lease=self.lease, paths=paths, clock=clock, wall=wall,
        )
        self.starts = Starts(
            worker_id=worker_id, transport=transport, peers=self.peers, timers=self.timers, fencing=self.fencing,
            reporter=self.reporter, publisher=self.publisher, log=log, clock=clock, wall=wall, rng=self.rng,
            slots=self.slots, by_key=self.by_key, feed=self.feed, exited=self.on_exit,
        )
        self.inbox = Inbox(
            feed=self.feed, by_key=self.by_key, peers=self.peers, outboxes=self.outboxes, fencing=self.fencing,
            transport=transport, fenced_store=fenced_store, states=self.states, reporter=self.reporter, log=log,
            clock=clock, metrics=metrics, log_settings=self.log_settings,
        )
        if metrics is not None:  # read at each scrape, on the metrics server's thread
            metrics.follow(lambda: self.lease.until, lambda: statuses_now(self.slots))

    # ---- the doors: what the loop, the lifecycle and the hooks call ----

    @property
    def lease_until(self) -> float:
        """Until when (monotonic) this worker holds its lease."""
        return self.lease.until

    def set_lease(self, until: float, grace: float = LEASE_KILL_GRACE) -> None:
        """This worker holds its lease until ``until`` (monotonic): after it, it sends its children nothing.

        Children still there ``grace`` seconds later are killed: the caller keeps that inside the
        lease's own margin, so they are gone before anyone else may start their strategies.
        """
        if self.slots and self.lease.ran_out(until):
            # The lease ran out (or was taken): what runs now ran under it, and may belong to
            # someone else already. Its calls stay fenced off even if a new lease comes before
            # the store tells us where its strategies went (they may be queued in the API pool).
            # Fenced before the new deadline is set: a call signed under it sees the fence first.
            for slot in list(self.slots.values()):
                self.feed(slot, m.LeaseLapsed())
        self.lease.renew(until, grace)
        if self.guard is not None:
            self.guard.arm(until + grace)

    def lease_ok(self) -> bool:
        return self.lease.ok()

    def reconcile(self, works: list[Work]) -> None:
        """Carry the store's Works over to this worker: follow what runs, adopt what is new, let go of the rest."""
        self.following.reconcile(works)
        self.states.syncer.pace(min((slot.work.spec.interval for slot in self.slots.values()), default=None))

    def on_message(self, peer: bytes, msg: ToWorker | Garbled) -> None:
        """A frame from channel connection ``peer``: handled for the strategy it speaks for, charged to it if bad."""
        self.inbox.on_message(peer, msg)

    def deliver_api_result(self, key: bytes, result: ApiResult) -> None:
        """The answer to an API call of incarnation ``key`` (dropped when that child is gone)."""
        self.inbox.deliver_api_result(key, result)

    def send_message(self, strategy_id: str, data: object) -> bool:
        """``data`` to the strategy's st_message hook; False when it does not run here now."""
        slot = self.slots.get(strategy_id)
        if slot is None or not slot.running or not self.lease.ok():
            return False
        self.outboxes.send(slot, Message(data=data))
        return True

    def note_usage(self, usage: Mapping[int, Usage]) -> None:
        """Each strategy's child's CPU and memory (``usage`` by pid), written with its next heartbeat counts."""
        self.publisher.note_usage(usage)

    def flush(self, *, counts: bool = True) -> None:
        """Queue what changed since the last flush, and settle what the store refused before.

        A status change is written by the pass it is due in (``Publisher.publish``); what is
        left dirty between those is heartbeat counts and times, queued only when ``counts``
        (one write per strategy per heartbeat would cost the worker more than running its
        strategies) and written a few a pass (``Publisher.write_counts``).
        """
        self.publisher.queue_counts(counts)
        self.reporter.retry()

    def stop_all(self, reason: ExitReason) -> None:
        for slot in list(self.slots.values()):
            self.feed(slot, m.StopWanted(reason))

    def kill_all(self, why: str) -> None:
        """The worker is going: whatever did not stop in time is killed."""
        for slot in list(self.slots.values()):
            self.feed(slot, m.Fault(m.Charge(EventKind.STOPPED, why)))

    # ---- one pass ----

    def supervise(self) -> None:
        """One pass: the lease first (before anything is sent), then each strategy's outbox and timers."""
        now = self.clock()
        self.starts.new_pass()
        self._check_lease(now)
        retry_store = now >= self.store_retry_at
        if retry_store:
            self.store_retry_at = now + STORE_RETRY
            self.states.retry(self.slots.values())
        self.states.commit_due(now)  # a tick to a strategy whose state waits writes the group first
        for slot in self._to_supervise(now, retry_store):
            try:
                self._supervise_one(slot, now, retry_store)
            except Exception as e:
                self.log.exception("supervising %s failed", slot.id)
                self.feed(slot, m.Fault(m.Charge(EventKind.ERROR, f"worker could not supervise it: {type(e).__name__}: {e}")))
        self.starts.fork_due()  # after the ticks due: they go out first
        if now >= self.publisher.publish_at:
            self.publisher.publish(now)
        self.publisher.write_counts()

    def next_deadline(self) -> float:
        """The next moment (monotonic) a pass has something to do; at most a second away."""
        if self.starts.overdue():
            return 0.0  # overdue: a deadline a moment ahead would still be a millisecond's poll
        now = self.clock()
        deadlines = [now + 1.0]
        if self.slots:
            deadlines += self.lease.deadlines(now)
        deadlines += [t for t in (self.timers.next(), self.states.due(), self.publisher.publish_at) if t is not None]
        return min(deadlines)

    def _check_lease(self, now: float) -> None:
        """Every pass, before anything is sent: a lapsed lease stops every child, then kills them."""
        if now < self.lease.until:
            return
        for slot in list(self.slots.values()):
            self.feed(slot, m.LeaseLapsed())  # its queued calls must not leave, whatever lease comes next
        if self.lease.lapse() and self.slots:
            self.log.error("lease ran out: stopping every strategy (lease_lost)")
            self.reporter.note(EventKind.LEASE_LOST, None, f"{len(self.slots)} strategies stopped")
        lost = ExitReason(type="lease_lost", message="this worker's lease ran out")
        for slot in list(self.slots.values()):
            self.feed(slot, m.StopWanted(lost))
            if self.lease.kill_due(now) and slot.alive:
                self.feed(slot, m.Fault(m.Charge(EventKind.LEASE_LOST, f"lease ran out {self.lease.grace:g}s ago")))

    def _to_supervise(self, now: float, everyone: bool) -> list[Slot]:
        """The slots a pass must look at: those due and those with messages waiting (``everyone``: all).

        Most passes touch one or two (a tick came due, an answer came in). Every STORE_RETRY
        a pass looks at all of them: retried writes, and memory limits.
        """
        due = self.timers.pop_due(now)
        if everyone:
            return list(self.slots.values())
        picked = {key: slot for key in due if (slot := self.slots.get(key)) is not None}
        picked.update(self.outboxes.backlogged)
        return list(picked.values())

    def _supervise_one(self, slot: Slot, now: float, retry_store: bool) -> None:
        if slot.outbox:
            self.outboxes.flush(slot)
        if retry_store:
            self.inbox.note_burst(slot, slot.intake.ended(now))
        if slot.due is not None and slot.due <= now:  # time changes nothing before a deadline
            self.feed(slot, m.Due())
        if retry_store and m.init_waits(slot.machine):
            self.inbox.send_init(slot)
        if retry_store and m.reconcile_failed(slot.machine):
            self.starts.spawn(slot, slot.machine.incarnation)
        if slot.alive and now >= slot.log_checked + logrotate.EVERY:  # it cannot rotate its log itself
            slot.log_checked = now
            logrotate.rotate(slot.log_path, int(self.log_settings.max_mb * 1_000_000), self.log_settings.keep)
        limit = slot.work.spec.max_memory_mb
        if limit is None or now < slot.memory_checked + MEMORY_EVERY:
            return
        pid = slot.pid
        if pid is not None:
            slot.memory_checked = now
            used = self.transport.memory_mb(pid)
            if used > limit:
                charge = m.Charge(EventKind.MEMORY_LIMIT, f"over its memory limit: {used:.0f} MB > {limit:g} MB (max-memory)")
                self.feed(slot, m.Fault(charge))

    # ---- the machine ----

    def feed(self, slot: Slot, event: m.Event) -> list[m.Action]:
        """Step the slot's machine with ``event`` and perform what it says; the actions performed."""
        slot.machine, actions = m.step(slot.machine, event, self.clock())
        for action in actions:
            self._perform(slot, action)
        slot.due = m.deadline(slot.machine)  # only a step changes it: passes compare, not recompute
        self.timers.set(slot.id, slot.due)
        if self.metrics is not None:
            _meter(self.metrics, slot.id, actions)
        return actions

    def _perform(self, slot: Slot, action: m.Action) -> None:
        if isinstance(action, m.Spawn):
            # Every start runs under the settings of the Work as it is now (`qlab apply` changes them).
            slot.machine = msgspec.structs.replace(slot.machine, supervision=self._supervision(slot.work))
            self.starts.spawn(slot, action.incarnation)
        elif isinstance(action, m.SendInit):
            self.states.before_send(slot)
            self.inbox.send_init(slot)
        elif isinstance(action, m.SendTick):
            self.states.before_send(slot)
            slot.result.overruns = action.overruns
            info = TickInfo(seq=action.seq, ts=self.wall(), interval=slot.work.spec.interval, overruns=action.overruns)
            halted = self.halts.covering(self.worker_id, slot.id, slot.work.spec.accounts) is not None
            self.outboxes.send(slot, Tick(tick=info, lease_until=self.lease.until, halted=halted))
        elif isinstance(action, m.SendStop):
            self.outboxes.send(slot, Stop(reason=action.reason))
        elif isinstance(action, m.Kill):
            slot.marker(self.wall(), f"kill pid={action.pid}: {action.why}")
            self.transport.kill(action.pid)
        elif isinstance(action, m.Note):
            self.reporter.note(action.kind, slot, action.detail)
        elif isinstance(action, m.Mark):
            slot.marker(self.wall(), action.text)
        elif isinstance(action, m.Counted):
            slot.result.error_count = action.count
            if action.error is not None:
                error = action.error
                slot.result.last_error = ErrorInfo(message=error.message, traceback=error.traceback, ts=self.wall())
        elif isinstance(action, m.Beaten):
            slot.result.heartbeats += 1
            slot.result.last_heartbeat = self.wall()
            self.publisher.changed(slot)
            if action.first:  # the first heartbeat of an incarnation shows with this pass, the rest with the next flush
                self.publisher.publish_by(slot, self.clock())
        elif isinstance(action, m.Publish):
            slot.result.status, slot.result.reason = m.status(slot.machine)
            slot.result.pid = slot.pid
            gather = START_GATHER if isinstance(slot.machine.state, m.Starting) else PUBLISH_GATHER
            self.publisher.publish_by(slot, self.clock() + gather)
        elif isinstance(action, m.Settle):
            self.publisher.drop(slot)  # its last status is the settle's to write
            self._forget(slot)
            self.states.settle(slot)
            self.reporter.settle(slot, action)

    def _supervision(self, work: Work) -> m.Supervision:
        return m.Supervision.of(work.spec, self.phase(work.id))

    # ---- a child's end, a strategy's leaving ----

    def on_exit(self, key: bytes, status: int) -> None:
        """The child of incarnation ``key`` was reaped: judge its exit (after its last words, if it left by itself)."""
        slot = self.by_key.get(key)
        if slot is None:
            return
        child = m.alive(slot.machine)
        if os.WIFEXITED(status) and child is not None and child.error is None and child.exited is None:
            # A child that exits by itself said why first (Error, Exited); the pidfd can beat
            # those last words through the socket, so give them a moment to arrive.
            self.transport.drain(LAST_WORDS_WAIT)
        how = procs.describe_status(status)
        self.by_key.pop(key, None)
        self.peers.forget(key)
        slot.outbox.clear()
        slot.marker(self.wall(), f"exit pid={child.pid if child else '?'} {how}")
        self.feed(slot, m.Gone(how, self.rng.random()))

    def _forget(self, slot: Slot) -> None:
        if self.slots.get(slot.id) is slot:
            del self.slots[slot.id]
            self.timers.set(slot.id, None)
            self.outboxes.forget(slot.id)
            self.starts.forget(slot.id)
        self.by_key.pop(slot.key, None)
        self.peers.forget(slot.key)
        self.inbox.note_burst(slot, slot.intake.ended(self.clock(), anyway=True))

    def _state_taken(self, slot: Slot, error: StaleWriter) -> None:
        self.feed(slot, m.StopWanted(ExitReason(type="reassigned", message=f"its state belongs to a newer epoch: {error}")))


def _meter(metrics: WorkerMetrics, strategy: str, actions: list[m.Action]) -> None:
    """Tell the metrics what one machine step of ``strategy`` did (ops.metrics knows no machine)."""
    for action in actions:
        if isinstance(action, m.SendTick):
            metrics.tick_sent(strategy, action.overruns)
        elif isinstance(action, m.Beaten):
            metrics.heartbeat_back(strategy)
        elif isinstance(action, m.Note):
            metrics.noted(action.kind)
