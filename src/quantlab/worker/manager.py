"""The strategy manager: turns what happens into machine events, and performs the machine's actions.

What happens, each a named entry point: `reconcile` (what the store says
should run here), `on_message` (a child spoke), a child's exit (the
transport's ``on_exit`` callback) and `supervise` (one pass of the loop: the
lease, outboxes, timers, memory, retried writes). Decisions are made in
quantlab/worker/machine.py; this file does I/O only through the Transport
(processes and sockets) and the FencedStore (the store).

Timers run on ``clock`` (monotonic: a wall-clock step must not silence ticks,
hang detection or backoff); ``wall`` stamps only what people read.
"""

from __future__ import annotations

import logging
import math
import os
import random
import secrets
import time
from typing import Callable, Mapping

import msgspec

from quantlab.config import Paths
from quantlab.errors import ApiPermissionError, CorruptRecord, JsRuntimeError, NotFound, QuantlabError, StaleWriter
from quantlab.exchange import reconcile
from quantlab.exchange.apipool import Caller
from quantlab.exchange.halts import Halts
from quantlab.exchange.reconcile import Reconciled
from quantlab.exchange.risk import RiskLimits
from quantlab.exchange.signing import Fence
from quantlab.store.records import ErrorInfo, EventKind, ExitReason, TickInfo, Work
from quantlab.store import workmachine as wm
from quantlab.store.fenced import FencedStore
from quantlab.protocol import (
    ApiCall,
    ApiResult,
    Error,
    Exited,
    Heartbeat,
    Hello,
    Init,
    Log,
    Message,
    Ready,
    Stop,
    Tick,
    TickExpired,
    ToChild,
    ToWorker,
)
from quantlab.worker import machine as m
from quantlab.worker import procs
from quantlab.worker.channel import Garbled
from quantlab.worker.fenceguard import FenceGuard
from quantlab.worker.intake import FAULT_AFTER, Burst
from quantlab.worker.load import Usage
from quantlab.worker.peers import Peers
from quantlab.worker.report import Reporter
from quantlab.worker.rules import tick_phase
from quantlab.worker.slot import Slot
from quantlab.worker.statecommit import StateCommits
from quantlab.worker.timers import Timers
from quantlab.worker.transport import Transport
from quantlab.worker.zygote import Forked, ForkRequest
from quantlab.child.jsruntime import child_command
from quantlab.logsetup import LogSettings
from quantlab.ops.metrics import WorkerMetrics
from quantlab.files import private_dir


#: Seconds to wait for a self-exiting child's last message before judging its exit.
LAST_WORDS_WAIT = 0.05
#: Messages waiting for one child before it is declared hung (it does not read its socket).
OUTBOX_LIMIT = 1000
#: Seconds after this worker's lease ran out before the children still running are SIGKILLed.
#: Small on purpose: the lease deadline handed to set_lease already keeps a margin before the
#: store's lease expires, and this must fit inside that margin.
LEASE_KILL_GRACE = 0.5
#: Seconds between memory samples of a strategy with a memory limit.
MEMORY_EVERY = 2.0
#: Seconds between retries of a store write that failed (state, Init's state read).
STORE_RETRY = 1.0
#: Heartbeat counts written per loop pass at most (each is a new file on the file store).
COUNTS_PER_PASS = 4
#: Seconds a status change waits for the strategy's next ones before it is written. A start is
#: spawned, starting, running and first beating within milliseconds: one write for them all, not
#: one each (one each would be a fifth of what starting 100 strategies costs the worker).
#: A first heartbeat is written at once, with whatever waits.
PUBLISH_GATHER = 0.05
#: Seconds of a pass the loop may spend asking for forks before it looks at the other strategies'
#: deadlines. The fork runs in the zygote while the loop goes on, but each request and the handling
#: of its answer still cost the loop: a hundred asked for in one go would hold every running
#: strategy's next tick. Past this budget a pass asks on only while no deadline comes due
#: meanwhile, so a lone restart, or a mass start on an idle worker, still forks at once.
FORK_BUDGET = 0.002
#: Fork requests the zygote may owe answers to at once; the rest wait their turn in ``forks_due``
#: (its socket's buffer, not the loop, would otherwise hold them).
MAX_UNANSWERED = 16

_json = msgspec.json.encode


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
    ) -> None:
        self.worker_id = worker_id
        #: Where in its interval a strategy ticks (rules.tick_phase); None: from its start, exactly.
        self.phase = phase
        self.fenced_store = fenced_store
        self.transport = transport
        self.paths = paths
        self.log = log
        self.clock = clock
        self.wall = wall
        self.rng = rng or random.Random()
        self.slots: dict[str, Slot] = {}
        self.by_key: dict[bytes, Slot] = {}  #: forked incarnations by Slot.key, until their exit
        self.peers = Peers(log, clock)  #: which channel connection speaks for which incarnation
        self.lease_until = -math.inf  #: monotonic; nothing but Stop and API answers goes to a child after it
        self.lease_grace = LEASE_KILL_GRACE  #: seconds after lease_until when what is left is killed
        self.lease_lapsed = False
        self.store_retry_at = 0.0
        #: The halts in force, read every worker heartbeat (the API pool reads them again as it sends).
        self.halts = Halts()
        self.reporter = Reporter(worker_id, fenced_store, log, wall)
        self.states = StateCommits(fenced_store, self.reporter, self._state_taken, clock)
        #: Status changes of this pass, written together at its end (one sync for a hundred starting).
        self.to_publish: dict[str, Slot] = {}
        self.publish_at = math.inf  #: when the status changes in ``to_publish`` are written (monotonic)
        #: Heartbeat counts to write, oldest first, a few a pass (``write_counts``).
        self.counts_due: dict[str, Slot] = {}
        self.timers = Timers()  #: each slot's next deadline (its ``due``), soonest first
        self.backlogged: dict[str, Slot] = {}  #: slots with messages their child could not take yet
        #: Spawns waiting for a pass with fork budget left: slot id -> (slot, incarnation), oldest first.
        self.forks_due: dict[str, tuple[Slot, int]] = {}
        self.forked = 0.0  #: seconds this pass spent forking
        self.fork_took = 0.005  #: seconds the last fork request took the loop
        self.unanswered = 0  #: fork requests the zygote has not answered yet
        self.log_settings = LogSettings()  #: how strategy logs rotate (the worker's --log-max-mb, --log-keep)
        self.metrics: WorkerMetrics | None = None  #: set when the worker serves --metrics-port
        #: Told each new lease deadline (plus grace), to kill the children even while the loop is stuck.
        self.guard: FenceGuard | None = None

    # ---- the lease ----

    def set_lease(self, until: float, grace: float = LEASE_KILL_GRACE) -> None:
        """This worker holds its lease until ``until`` (monotonic): after it, it sends its children nothing.

        Children still there ``grace`` seconds later are killed: the caller keeps that inside the
        lease's own margin, so they are gone before anyone else may start their strategies.
        """
        now = self.clock()
        if self.slots and (now >= self.lease_until or now >= until):
            # The lease ran out (or was taken): what runs now ran under it, and may belong to
            # someone else already. Its calls stay fenced off even if a new lease comes before
            # the store tells us where its strategies went (they may be queued in the API pool).
            for slot in self.slots.values():
                slot.fenced_off = True
        self.lease_until = until
        self.lease_grace = grace
        if self.guard is not None:
            self.guard.arm(until + grace)
        if now < until and self.lease_lapsed:
            self.lease_lapsed = False
            self.log.warning("lease valid again: taking strategies again")

    def lease_ok(self) -> bool:
        return self.clock() < self.lease_until

    def _check_lease(self, now: float) -> None:
        """Every pass, before anything is sent: a lapsed lease stops every child, then kills them."""
        if now < self.lease_until:
            return
        for slot in self.slots.values():
            slot.fenced_off = True  # its queued calls must not leave, whatever lease comes next
        if not self.lease_lapsed and self.slots:
            self.log.error("lease ran out: stopping every strategy (lease_lost)")
            self.reporter.note(EventKind.LEASE_LOST, None, f"{len(self.slots)} strategies stopped")
        self.lease_lapsed = True
        lost = ExitReason(type="lease_lost", message="this worker's lease ran out")
        for slot in list(self.slots.values()):
            self.feed(slot, m.StopWanted(lost))
            if now >= self.lease_until + self.lease_grace and slot.alive:
                self.feed(slot, m.Fault(m.Charge(EventKind.LEASE_LOST, f"lease ran out {self.lease_grace:g}s ago")))

    # ---- reconcile with the store ----

    def reconcile(self, works: list[Work]) -> None:
        """Carry the store's Works over to this worker: follow what runs, adopt what is new, let go of the rest."""
        by_id = {w.id: w for w in works}
        for slot in list(self.slots.values()):
            self._follow(slot, by_id.get(slot.id))
        if not self.lease_ok():
            return  # take nothing new on a lapsed lease
        fresh = [w for w in works if w.id not in self.slots and wm.holds(w, self.worker_id)]
        if not fresh:
            return
        with self.fenced_store.durable_together():  # a hundred adopted at once: one sync
            for work in fresh:
                if wm.placed_on(work, self.worker_id):
                    self._adopt(work)
                elif not self.reporter.holds_unsettled(work.id):
                    self._let_go(work)

    def _follow(self, slot: Slot, work: Work | None) -> None:
        """Carry a store change over to a slot."""
        fenced = wm.exit_reason(work, self.worker_id, slot.assignment.epoch)
        if fenced is not None:
            self.feed(slot, m.StopWanted(fenced))
            return
        assert work is not None
        known_restart, slot.work = slot.work.spec.restart_seq, work  # the spec of its next start
        if work.desired == "stopped":
            slot.operator_stopped = True
            self.feed(slot, m.StopWanted(ExitReason(type="manual", message="stopped by operator")))
            return
        if slot.operator_stopped:  # `start` while the stop is under way: it ends running
            slot.operator_stopped = False
            self.feed(slot, m.StartWanted())
        if work.spec.restart_seq != known_restart:
            self.feed(slot, m.RestartWanted())

    def _adopt(self, work: Work) -> None:
        """Take a Work placed here (a write: until it lands, the director may still take it back), then start it."""
        assert work.assignment is not None
        try:
            adopted = self.fenced_store.apply(work.id, wm.adopt(self.worker_id, work.assignment.epoch, self.wall())).work
        except (wm.Refused, NotFound):
            return  # taken back or changed meanwhile: the next reconcile sees what it is now
        except (OSError, QuantlabError) as e:
            self.reporter.store_failed(None, f"taking {work.id}", e)
            return
        assert adopted is not None
        log_path = self.paths.strategy_log(work.id)
        private_dir(log_path.parent)
        slot = Slot(adopted, log_path, m.new_machine(self._supervision(adopted), self.clock()))
        self.slots[work.id] = slot
        self.reporter.note(EventKind.ACCEPTED, slot, f"epoch {slot.assignment.epoch}")
        self.feed(slot, m.Due())

    def _let_go(self, work: Work) -> None:
        """A Work this worker holds but runs no child of (stopped, removed or moved meanwhile): release it."""
        assert work.assignment is not None
        reason = wm.exit_reason(work, self.worker_id, work.assignment.epoch)
        why = reason.message if reason is not None else "stopped by operator"
        result = msgspec.structs.replace(work.result, reason=why)
        transition = wm.release(self.worker_id, work.assignment.epoch, "stopped", result, self.wall())
        try:
            self.fenced_store.apply(work.id, transition)
        except (wm.Refused, NotFound):
            pass
        except (OSError, QuantlabError) as e:
            self.reporter.store_failed(None, f"letting go of {work.id} ({why})", e)

    def _supervision(self, work: Work) -> m.Supervision:
        return m.Supervision.of(work.spec, self.phase(work.id))

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
            self._spawn(slot, action.incarnation)
        elif isinstance(action, m.SendInit):
            self.states.before_send(slot)
            self._send_init(slot)
        elif isinstance(action, m.SendTick):
            self.states.before_send(slot)
            slot.result.overruns = action.overruns
            info = TickInfo(seq=action.seq, ts=self.wall(), interval=slot.work.spec.interval, overruns=action.overruns)
            halted = self.halts.covering(self.worker_id, slot.id, slot.work.spec.accounts) is not None
            self.send_to(slot, Tick(tick=info, lease_until=self.lease_until, halted=halted))
        elif isinstance(action, m.SendStop):
            self.send_to(slot, Stop(reason=action.reason))
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
            slot.dirty = True
            if action.first:  # the first heartbeat of an incarnation shows with this pass, the rest with the next flush
                self._publish(slot, self.clock())
        elif isinstance(action, m.Publish):
            slot.result.status, slot.result.reason = m.status(slot.machine)
            slot.result.pid = slot.pid
            self._publish(slot, self.clock() + PUBLISH_GATHER)
        elif isinstance(action, m.Settle):
            self.to_publish.pop(slot.id, None)  # its last status is the settle's to write
            self._forget(slot)
            self.states.settle(slot)
            self.reporter.settle(slot, action)

    def _spawn(self, slot: Slot, incarnation: int) -> None:
        if slot.work.spec.accounts and slot.reconciled is None:
            self._reconcile(slot, incarnation)  # the child is forked once its accounts are known
        elif self._may_fork():
            self._fork(slot, incarnation)
        else:
            self.forks_due[slot.id] = (slot, incarnation)

    def _fork_due(self) -> None:
        """The waiting spawns this pass has budget for, oldest first."""
        while self.forks_due and self._may_fork():
            slot, incarnation = self.forks_due.pop(next(iter(self.forks_due)))
            if self._still_spawning(slot, incarnation):
                self._fork(slot, incarnation)

    def _may_fork(self) -> bool:
        """The zygote owes few enough answers, and within this pass's budget, or no other strategy's
        deadline comes before a fork would end."""
        if self.unanswered >= MAX_UNANSWERED:
            return False  # an answer wakes the loop, and this pass's _fork_due goes on
        if self.forked < FORK_BUDGET:
            return True
        due = self.timers.next()
        return due is None or due > self.clock() + self.fork_took

    def _still_spawning(self, slot: Slot, incarnation: int) -> bool:
        """False once the slot was stopped, moved or restarted since it asked for this spawn."""
        return self.slots.get(slot.id) is slot and slot.machine.incarnation == incarnation \
            and isinstance(slot.machine.state, m.Spawning)

    def _spawn_failed(self, slot: Slot, error: str) -> None:
        self.log.error("cannot spawn %s: %s", slot.id, error)
        slot.marker(self.wall(), f"spawn failed: {error}")
        self.feed(slot, m.SpawnFailed(error, self.rng.random()))

    def _fork(self, slot: Slot, incarnation: int) -> None:
        """Ask the zygote for the child; its answer comes on a later pass (`_forked`): the loop never waits for it."""
        started = self.clock()
        slot.outbox.clear()
        slot.init_pending = False
        key = slot.key
        token = secrets.token_bytes(16)  # its Hello's proof that it is this incarnation (quantlab/protocol.py)
        try:
            argv = child_command(slot.work.spec.file, self.transport.endpoint)  # Node for a .js file
            request = ForkRequest(endpoint=self.transport.endpoint, token=token, log_path=str(slot.log_path),
                                  argv=argv, title=f"qlab strategy {slot.id} [{self.worker_id}]")
        except JsRuntimeError as e:
            self._spawn_failed(slot, str(e))
            return
        self.unanswered += 1
        # Its Hello may come before the zygote's answer: it binds its connection now, and is
        # handled once the answer made it a child (_forked).
        self.peers.expect(key, token)
        try:
            self.transport.fork(request, lambda answer: self._forked(slot, incarnation, key, answer),
                                lambda status: self.on_exit(key, status))
        finally:
            self.fork_took = self.clock() - started
            self.forked += self.fork_took

    def _forked(self, slot: Slot, incarnation: int, key: bytes, answer: Forked) -> None:
        """The zygote's answer to a fork, on a later pass: step the machine with it."""
        self.unanswered -= 1
        if not self._still_spawning(slot, incarnation):
            self.peers.forget(key)
            if answer.pid:
                self.transport.kill(answer.pid)  # stopped or restarted meanwhile: this child serves nobody
            return
        if answer.error:
            self.peers.forget(key)
            self._spawn_failed(slot, answer.error)
            return
        pid = answer.pid
        self.by_key[key] = slot
        if incarnation > 1:
            slot.result.restarts += 1
            self.reporter.note(EventKind.RESTARTED, slot, f"pid {pid}")
        slot.marker(self.wall(), f"spawn pid={pid} incarnation={incarnation} epoch={slot.assignment.epoch}")
        self.feed(slot, m.Spawned(pid))
        if self.peers.peer(key) is not None:
            self.feed(slot, m.HelloCame())  # it said Hello before we heard from the zygote

    # ---- reconciliation: before each start, what the strategy left at the exchange ----

    def _reconcile(self, slot: Slot, incarnation: int) -> None:
        if slot.reconciling:
            return  # under way
        slot.reconciling, slot.reconcile_failed = True, False
        spec = slot.work.spec
        request = reconcile.Request(strategy=slot.id, epoch=slot.assignment.epoch, accounts=spec.accounts,
                                    cancel_stale=spec.cancel_stale_orders)
        self.transport.reconcile(request, self.fence(slot), lambda result: self._reconciled(slot, incarnation, result))

    def _reconciled(self, slot: Slot, incarnation: int, result: Reconciled) -> None:
        """On the loop thread: start the child, or wait and try again (the status says why)."""
        slot.reconciling = False
        if not self._still_spawning(slot, incarnation):
            return
        if result.settled:
            settled = ", ".join(f"{link} {status}" for link, status in result.settled.items())
            self.reporter.note(EventKind.ORDERS_SETTLED, slot, f"open order intents settled by query: {settled}")
        if result.stale:
            done = "cancelled" if result.cancelled else "left open (--cancel-stale-orders cancels them)"
            self.reporter.note(EventKind.STALE_ORDERS, slot, f"open orders from an older epoch, {done}: "
                                                             f"{', '.join(result.stale)}")
        if not result.ok:
            slot.reconcile_failed = True  # supervise tries again
            reason = f"waiting to start: {result.error}"
            if slot.result.reason != reason:
                self.log.warning("%s %s", slot.id, reason)
                slot.result.reason = reason
                self.flush_one(slot)
            return
        slot.reconciled = result
        self._spawn(slot, incarnation)

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
            self.backlogged.pop(slot.id, None)
            self.forks_due.pop(slot.id, None)
        self.by_key.pop(slot.key, None)
        self.peers.forget(slot.key)
        self._note_burst(slot, slot.intake.ended(self.clock(), anyway=True))

    # ---- messages from children ----

    def on_message(self, peer: bytes, msg: ToWorker | Garbled) -> None:
        """A frame from channel connection ``peer``: handled for the strategy it speaks for, charged to it if bad."""
        slot = self._speaker(peer, msg)
        if slot is None:
            return
        if isinstance(msg, Garbled):
            self.feed(slot, m.Fault(m.Charge(EventKind.ERROR, f"it sent {msg.why}")))
            return
        if not self._within_budget(slot, msg):
            return
        try:
            self._dispatch(slot, msg)
            self._flush_outbox(slot)
        except Exception as e:
            # Whatever it was, it came from this strategy: charge it there, never to the loop.
            if (child := m.alive(slot.machine)) is not None and child.killed is None:  # once: a hostile child repeats
                self.log.exception("handling %s from %s failed", type(msg).__name__, slot.id)
            charge = m.Charge(EventKind.ERROR, f"worker could not handle its {type(msg).__name__}: {type(e).__name__}: {e}")
            self.feed(slot, m.Fault(charge))

    def _speaker(self, peer: bytes, msg: ToWorker | Garbled) -> Slot | None:
        """The strategy whose child speaks on ``peer``: bound by its Hello's token (quantlab/worker/peers.py).

        Anyone else's message is dropped and counted.
        """
        key = self.peers.key(peer)
        if key is None and isinstance(msg, Hello):
            key = self.peers.bind(peer, msg.token)
        elif key is None:
            self.peers.drop("a frame that is no message" if isinstance(msg, Garbled) else "a message before a good Hello")
        if key is None and self.metrics is not None:
            self.metrics.channel_dropped.labels(reason="stranger").inc()
        return self.by_key.get(key) if key is not None else None

    def _within_budget(self, slot: Slot, msg: ToWorker) -> bool:
        """True when ``msg`` is within the strategy's budget (quantlab/worker/intake.py); else it is dropped."""
        if slot.intake.admit(msg, self.clock()):
            return True
        if self.metrics is not None:
            self.metrics.channel_dropped.labels(reason="over_budget").inc()
        if isinstance(msg, ApiCall):  # answered, so the strategy's call returns
            self.send_to(slot, ApiResult(call_id=msg.call_id, ok=False, kind="permission",
                                         error="over its budget of API calls a second: refused"))
        burst = slot.intake.overdue()
        if burst is not None:
            self.log.warning("%s is over its message budget: %s", slot.id, burst.describe())
            self._note_burst(slot, burst)
            self.feed(slot, m.Fault(m.Charge(EventKind.ERROR, f"over its message budget for {FAULT_AFTER:g}s")))
        return False

    def _note_burst(self, slot: Slot, burst: Burst | None) -> None:
        """One event for a burst of messages over budget, once it ended."""
        if burst is not None:
            self.reporter.note(EventKind.OVER_BUDGET, slot, burst.describe())

    def _dispatch(self, slot: Slot, msg: ToWorker) -> None:
        if isinstance(msg, Heartbeat):
            if any(isinstance(a, m.Beaten) for a in self.feed(slot, m.Beat(msg.seq))):
                self._save_state(slot, msg.state)
                if self.metrics is not None and msg.hook_seconds is not None:
                    self.metrics.hook_duration.observe(msg.hook_seconds)
        elif isinstance(msg, Hello):
            self.feed(slot, m.HelloCame())
        elif isinstance(msg, Ready):
            self.feed(slot, m.ReadyCame())
        elif isinstance(msg, TickExpired):
            self.feed(slot, m.TickRefused(msg.seq))
        elif isinstance(msg, ApiCall):
            self._on_api_call(slot, msg)
        elif isinstance(msg, Error):
            self.feed(slot, m.Reported(msg.message, msg.traceback))
        elif isinstance(msg, Exited):
            self._save_state(slot, msg.state)
            self.feed(slot, m.Confirmed(msg.reason))
        elif isinstance(msg, Log):
            self.reporter.note(EventKind.STRATEGY_MESSAGE, slot, _json(msg.data).decode())

    def _send_init(self, slot: Slot) -> None:
        try:
            state = self.fenced_store.claim_state(slot.id, slot.assignment.epoch)
        except StaleWriter as e:
            self.feed(slot, m.StopWanted(ExitReason(type="reassigned", message=f"its state belongs to a newer epoch: {e}")))
            return
        except CorruptRecord as e:
            self.feed(slot, m.Fatal(f"its state is unreadable: {e}"))
            return
        except (OSError, QuantlabError) as e:
            slot.init_pending = True  # the child waits; supervise tries again
            self.reporter.store_failed(slot, "reading its state", e)
            return
        slot.init_pending = False
        spec = slot.work.spec
        found = slot.reconciled or Reconciled(ok=True)
        slot.reconciled = None  # the next start reconciles again
        init = Init(id=slot.id, file=spec.file, params=spec.params, state=state, accounts=spec.accounts,
                    log_path=str(slot.log_path), log_max_bytes=int(self.log_settings.max_mb * 1_000_000),
                    log_keep=self.log_settings.keep, open_orders=found.open_orders, positions=found.positions)
        self.send_to(slot, init)

    def _on_api_call(self, slot: Slot, call: ApiCall) -> None:
        # Fencing: no exchange call once this worker's lease or the slot's epoch is in doubt
        # (st_exit of a manual or worker_exit stop may still cancel its orders). Checked here,
        # and again by the API pool as the request is signed: a call may wait in the account's queue.
        if not self.lease_ok() or slot.moved_away or slot.fenced_off:
            refused = ApiPermissionError("worker lease not valid for this strategy; call refused")
            self.send_to(slot, ApiResult(call_id=call.call_id, ok=False, error=str(refused), kind="permission"))
            return
        caller = Caller(slot.id, slot.assignment.epoch, RiskLimits.of(slot.work.spec))
        self.transport.submit_api(slot.key, call, slot.work.spec.accounts, self.fence(slot), caller)

    def fence(self, slot: Slot) -> Fence:
        """The fence of ``slot``'s calls, read on an API pool thread when a request is signed.

        It reads two references the loop thread replaces whole (the lease deadline, the slot's
        machine), so it needs no lock: the API pool sees the newest value or the one before.
        """

        def act_until() -> float:
            if slot.fenced_off or slot.moved_away or self.slots.get(slot.id) is not slot:
                return -math.inf  # the strategy is someone else's now, or gone from here
            if not self._current_in_store(slot):
                return -math.inf  # removed or moved a moment ago: the loop has not heard yet
            return self.lease_until

        return act_until

    def _current_in_store(self, slot: Slot) -> bool:
        """The store still names this worker and the slot's epoch: read as the call leaves, not as it came."""
        try:
            work = self.fenced_store.get_work(slot.id)
        except (OSError, QuantlabError):
            return False  # unknown is not current: an order waits for the store, never guesses
        return work is not None and wm.current(work, self.worker_id, slot.assignment.epoch)

    def deliver_api_result(self, key: bytes, result: ApiResult) -> None:
        """The answer to an API call of incarnation ``key`` (dropped when that child is gone)."""
        slot = self.by_key.get(key)
        if slot is None:
            return
        if result.kind == "risk":
            self.reporter.note(EventKind.RISK_REFUSED, slot, result.error)
        self.send_to(slot, result)

    def send_message(self, strategy_id: str, data: object) -> bool:
        """``data`` to the strategy's st_message hook; False when it does not run here now."""
        slot = self.slots.get(strategy_id)
        if slot is None or not slot.running or not self.lease_ok():
            return False
        self.send_to(slot, Message(data=data))
        return True

    # ---- sending ----

    def send_to(self, slot: Slot, msg: ToChild) -> None:
        """Queue ``msg`` for the child and send what it can take now; the rest goes on later passes."""
        if slot.pid is None:
            return
        if not self.lease_ok() and not isinstance(msg, (Stop, ApiResult)):
            # Past the lease only what ends the child goes out: a Stop, and answers to calls it waits on.
            self.log.info("lease ran out: not sending %s to %s", type(msg).__name__, slot.id)
            return
        slot.outbox.append(msg)
        self._flush_outbox(slot)

    def _flush_outbox(self, slot: Slot) -> None:
        peer = self.peers.peer(slot.key)  # None until its Hello: everything waits here
        while slot.outbox and peer is not None and self.transport.send(peer, slot.outbox[0]):
            slot.outbox.popleft()
        if slot.outbox:
            self.backlogged[slot.id] = slot
        else:
            self.backlogged.pop(slot.id, None)
        if len(slot.outbox) > OUTBOX_LIMIT:
            slot.outbox.clear()
            charge = m.Charge(EventKind.HEARTBEAT_TIMEOUT, f"hung: {OUTBOX_LIMIT} messages to it could not be delivered")
            self.feed(slot, m.Fault(charge))

    # ---- one pass ----

    def supervise(self) -> None:
        """One pass: the lease first (before anything is sent), then each strategy's outbox and timers."""
        now = self.clock()
        self.forked = 0.0
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
        self._fork_due()  # after the ticks due: they go out first
        if now >= self.publish_at:
            self.publish()
        self.write_counts()

    def _publish(self, slot: Slot, at: float) -> None:
        """Write the slot's status by ``at`` (with every other waiting then)."""
        self.to_publish[slot.id] = slot
        self.publish_at = min(self.publish_at, at)

    def publish(self) -> None:
        """Write the waiting status changes now, made durable by the sync thread's next sync.

        Nobody waits for a status to be durable (a stop's last word is written apart, by
        ``Reporter.settle``, durably), and a sync here would stand between a restarted child's
        Hello and its Init.
        """
        self.publish_at = math.inf
        if not self.to_publish:
            return
        slots = list(self.to_publish.values())
        self.to_publish.clear()
        with self.fenced_store.durable_later():
            for slot in slots:
                self.reporter.flush_one(slot)
        self.states.syncer.ask()

    def _to_supervise(self, now: float, everyone: bool) -> list[Slot]:
        """The slots a pass must look at: those due and those with messages waiting (``everyone``: all).

        Most passes touch one or two (a tick came due, an answer came in). Every STORE_RETRY
        a pass looks at all of them: retried writes, and memory limits.
        """
        due = self.timers.pop_due(now)
        if everyone:
            return list(self.slots.values())
        picked = {key: slot for key in due if (slot := self.slots.get(key)) is not None}
        picked.update(self.backlogged)
        return list(picked.values())

    def _supervise_one(self, slot: Slot, now: float, retry_store: bool) -> None:
        if slot.outbox:
            self._flush_outbox(slot)
        if retry_store:
            self._note_burst(slot, slot.intake.ended(now))
        if slot.due is not None and slot.due <= now:  # time changes nothing before a deadline
            self.feed(slot, m.Due())
        if retry_store and slot.init_pending:
            self._send_init(slot)
        if retry_store and slot.reconcile_failed:
            self._spawn(slot, slot.machine.incarnation)
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

    def next_deadline(self) -> float:
        """The next moment (monotonic) a pass has something to do; at most a second away."""
        if self.forks_due and self.unanswered < MAX_UNANSWERED:
            return 0.0  # overdue: a deadline a moment ahead would still be a millisecond's poll
        now = self.clock()
        deadlines = [now + 1.0]
        if self.slots:  # the lease's end, then the kill after it (each only while ahead)
            deadlines += [t for t in (self.lease_until, self.lease_until + self.lease_grace) if t > now]
        deadlines += [t for t in (self.timers.next(), self.states.due(), self.publish_at) if t is not None]
        return min(deadlines)

    # ---- stopping ----

    def stop_all(self, reason: ExitReason) -> None:
        for slot in list(self.slots.values()):
            self.feed(slot, m.StopWanted(reason))

    def kill_all(self, why: str) -> None:
        """The worker is going: whatever did not stop in time is killed."""
        for slot in list(self.slots.values()):
            self.feed(slot, m.Fault(m.Charge(EventKind.STOPPED, why)))

    # ---- the store ----

    def _save_state(self, slot: Slot, state: bytes | None) -> None:
        if state is None or slot.moved_away:
            return  # unchanged, or the strategy is someone else's now
        if not isinstance(msgspec.json.decode(state), dict):
            raise ValueError("its state is not a JSON object")  # charged to the strategy by on_message
        self.states.add(slot, state)  # written with the pass's group (quantlab/worker/statecommit.py)

    def _state_taken(self, slot: Slot, error: StaleWriter) -> None:
        self.feed(slot, m.StopWanted(ExitReason(type="reassigned", message=f"its state belongs to a newer epoch: {error}")))

    def flush_one(self, slot: Slot) -> None:
        self.reporter.flush_one(slot)

    def note_usage(self, usage: Mapping[int, Usage]) -> None:
        """Each strategy's child's CPU and memory (``usage`` by pid), written with its next heartbeat counts."""
        for slot in self.slots.values():
            figures = usage.get(slot.result.pid) if slot.result.pid else None
            cpu, memory = (None, None) if figures is None else (_rounded(figures.cpu), _rounded(figures.memory))
            if (slot.result.cpu, slot.result.memory) != (cpu, memory):
                slot.result.cpu, slot.result.memory = cpu, memory
                slot.dirty = True

    def flush(self, *, counts: bool = True) -> None:
        """Queue what changed since the last flush, and settle what the store refused before.

        A status change is written by the pass it is due in (``publish``); what is left dirty
        between those is heartbeat counts and times, queued only when ``counts`` (one write
        per strategy per heartbeat would cost the worker more than running its strategies)
        and written a few a pass (``write_counts``).
        """
        for slot in self.slots.values():
            if slot.dirty and (counts or slot.store_failing):
                self.counts_due[slot.id] = slot
        self.reporter.retry()

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
                    self.reporter.flush_one(slot)
        self.states.syncer.ask()


def _rounded(figure: float | None) -> float | None:
    return None if figure is None else round(figure, 1)


def _meter(metrics: WorkerMetrics, strategy: str, actions: list[m.Action]) -> None:
    """Tell the metrics what one machine step of ``strategy`` did (ops.metrics knows no machine)."""
    for action in actions:
        if isinstance(action, m.SendTick):
            metrics.tick_sent(strategy, action.overruns)
        elif isinstance(action, m.Beaten):
            metrics.heartbeat_back(strategy)
        elif isinstance(action, m.Note):
            metrics.noted(action.kind)
