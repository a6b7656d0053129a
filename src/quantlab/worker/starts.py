"""What a Spawn goes through before its child exists: accounts reconciled, a turn to fork, the fork.

The machine's Spawning state, as the worker carries it out. A strategy with
accounts is first reconciled with the exchange (quantlab/exchange/reconcile.py,
on the API pool): what it left open there is handed to its next Init, and a
reconciliation that fails is tried again every STORE_RETRY pass, the child not
forked meanwhile. Then it waits for a pass with fork budget left, and the fork
is asked of the zygote; its answer comes on a later pass, the loop never waits
for it, and ends the Spawn: a child (Spawned), or a failure the machine backs
off from (SpawnFailed).
"""

from __future__ import annotations

import logging
import random
import secrets
from typing import Callable, Mapping

from quantlab.errors import JsRuntimeError
from quantlab.exchange import reconcile
from quantlab.exchange.reconcile import Reconciled
from quantlab.store.records import EventKind
from quantlab.worker import machine as m
from quantlab.worker.lease import Fencing
from quantlab.worker.peers import Peers
from quantlab.worker.publishing import Publisher
from quantlab.worker.report import Reporter
from quantlab.worker.slot import Slot
from quantlab.worker.timers import Timers
from quantlab.worker.transport import Transport
from quantlab.worker.zygote import Forked, ForkRequest
from quantlab.child.jsruntime import child_command

#: Seconds of a pass the loop may spend asking for forks before it looks at the other strategies'
#: deadlines. The fork runs in the zygote while the loop goes on, but each request and the handling
#: of its answer still cost the loop: a hundred asked for in one go would hold every running
#: strategy's next tick. Past this budget a pass asks on only while no deadline comes due
#: meanwhile, so a lone restart, or a mass start on an idle worker, still forks at once.
FORK_BUDGET = 0.002
#: Fork requests the zygote may owe answers to at once; the rest wait their turn in ``forks_due``
#: (its socket's buffer, not the loop, would otherwise hold them).
MAX_UNANSWERED = 16


class Starts:
    """Each strategy's Spawn, from its reconciliation to the zygote's answer, within the pass's fork budget."""

    def __init__(
        self,
        *,
        worker_id: str,
        transport: Transport,
        peers: Peers,
        timers: Timers,
        fencing: Fencing,
        reporter: Reporter,
        publisher: Publisher,
        log: logging.Logger,
        clock: Callable[[], float],
        wall: Callable[[], float],
        rng: random.Random,
        slots: Mapping[str, Slot],
        by_key: dict[bytes, Slot],
        feed: Callable[[Slot, m.Event], list[m.Action]],
        exited: Callable[[bytes, int], None],
    ) -> None:
        self.worker_id = worker_id
        self.transport = transport
        self.peers = peers
        self.timers = timers  #: the other strategies' deadlines, which a pass's forks must not overrun
        self.fencing = fencing
        self.reporter = reporter
        self.publisher = publisher  #: writes a start's waiting reason at once
        self.log = log
        self.clock = clock
        self.wall = wall
        self.rng = rng  #: the backoff's jitter after a failed spawn
        self.slots = slots  #: the manager's strategies: a spawn of a slot gone from them is dropped
        self.by_key = by_key  #: the manager's forked incarnations: a child joins them with its answer
        self.feed = feed  #: the manager steps the slot's machine and performs what it says
        self.exited = exited  #: the child was reaped (its incarnation's key, its wait status)
        #: Spawns waiting for a pass with fork budget left: slot id -> (slot, incarnation), oldest first.
        self.forks_due: dict[str, tuple[Slot, int]] = {}
        self.forked = 0.0  #: seconds this pass spent forking
        self.fork_took = 0.005  #: seconds the last fork request took the loop
        self.unanswered = 0  #: fork requests the zygote has not answered yet

    def spawn(self, slot: Slot, incarnation: int) -> None:
        """Carry the Spawn of ``incarnation`` on: reconcile its accounts first, then fork now or on a later pass."""
        if slot.work.spec.accounts and slot.reconciled is None:
            self._reconcile(slot, incarnation)  # the child is forked once its accounts are known
        elif self._may_fork():
            self._fork(slot, incarnation)
        else:
            self.forks_due[slot.id] = (slot, incarnation)

    def new_pass(self) -> None:
        self.forked = 0.0

    def fork_due(self) -> None:
        """The waiting spawns this pass has budget for, oldest first."""
        while self.forks_due and self._may_fork():
            slot, incarnation = self.forks_due.pop(next(iter(self.forks_due)))
            if self._still_spawning(slot, incarnation):
                self._fork(slot, incarnation)

    def overdue(self) -> bool:
        """Spawns wait and the zygote may take them: the next pass should come at once."""
        return bool(self.forks_due) and self.unanswered < MAX_UNANSWERED

    def forget(self, slot_id: str) -> None:
        self.forks_due.pop(slot_id, None)

    def _still_spawning(self, slot: Slot, incarnation: int) -> bool:
        """False once the slot was stopped, moved or restarted since it asked for this spawn."""
        return self.slots.get(slot.id) is slot and slot.machine.incarnation == incarnation \
            and isinstance(slot.machine.state, m.Spawning)

    def _may_fork(self) -> bool:
        """The zygote owes few enough answers, and within this pass's budget, or no other strategy's
        deadline comes before a fork would end."""
        if self.unanswered >= MAX_UNANSWERED:
            return False  # an answer wakes the loop, and this pass's fork_due goes on
        if self.forked < FORK_BUDGET:
            return True
        due = self.timers.next()
        return due is None or due > self.clock() + self.fork_took

    def _fork(self, slot: Slot, incarnation: int) -> None:
        """Ask the zygote for the child; its answer comes on a later pass (``answered``)."""
        started = self.clock()
        slot.outbox.clear()
        key = slot.key
        token = secrets.token_bytes(16)  # its Hello's proof that it is this incarnation (quantlab/protocol.py)
        try:
            argv = child_command(slot.work.spec.file, self.transport.endpoint)  # Node for a .js file
            request = ForkRequest(endpoint=self.transport.endpoint, token=token, log_path=str(slot.log_path),
                                  argv=argv, title=f"qlab strategy {slot.id} [{self.worker_id}]",
                                  file=slot.work.spec.file, strategy=slot.id)
        except JsRuntimeError as e:
            self._failed(slot, str(e))
            return
        self.unanswered += 1
        # Its Hello may come before the zygote's answer: it binds its connection now, and is
        # handled once the answer made it a child (_answer).
        self.peers.expect(key, token)
        try:
            self.transport.fork(request, lambda answer: self._answer(slot, incarnation, key, answer),
                                lambda status: self.exited(key, status))
        finally:
            self.fork_took = self.clock() - started
            self.forked += self.fork_took

    def _answer(self, slot: Slot, incarnation: int, key: bytes, answer: Forked) -> None:
        """The zygote's answer to a fork, on a later pass: step the machine with it."""
        self.unanswered -= 1
        if not self._still_spawning(slot, incarnation):
            self.peers.forget(key)
            if answer.pid:
                self.transport.kill(answer.pid)  # stopped or restarted meanwhile: this child serves nobody
            return
        if answer.error:
            self.peers.forget(key)
            self._failed(slot, answer.error)
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

    def _failed(self, slot: Slot, error: str) -> None:
        self.log.error("cannot spawn %s: %s", slot.id, error)
        slot.marker(self.wall(), f"spawn failed: {error}")
        self.feed(slot, m.SpawnFailed(error, self.rng.random()))

    # ---- reconciliation: before each start, what the strategy left at the exchange ----

    def _reconcile(self, slot: Slot, incarnation: int) -> None:
        if m.reconciling(slot.machine):
            return  # under way
        self.feed(slot, m.ReconcileStarted())
        spec = slot.work.spec
        request = reconcile.Request(strategy=slot.id, epoch=slot.assignment.epoch, accounts=spec.accounts,
                                    cancel_stale=spec.cancel_stale_orders)
        self.transport.reconcile(request, self.fencing.fence(slot), lambda result: self._reconciled(slot, incarnation, result))

    def _reconciled(self, slot: Slot, incarnation: int, result: Reconciled) -> None:
        """On the loop thread: start the child, or wait and try again (the status says why)."""
        if not self._still_spawning(slot, incarnation):
            return
        self.feed(slot, m.ReconcileEnded(result.ok))
        if result.settled:
            settled = ", ".join(f"{link} {status}" for link, status in result.settled.items())
            self.reporter.note(EventKind.ORDERS_SETTLED, slot, f"open order intents settled by query: {settled}")
        if result.stale:
            done = "cancelled" if result.cancelled else "left open (--cancel-stale-orders cancels them)"
            self.reporter.note(EventKind.STALE_ORDERS, slot, f"open orders from an older epoch, {done}: "
                                                             f"{', '.join(result.stale)}")
        if not result.ok:
            reason = f"waiting to start: {result.error}"
            if slot.result.reason != reason:
                self.log.warning("%s %s", slot.id, reason)
                slot.result.reason = reason
                self.publisher.write(slot)
            return
        slot.reconciled = result
        self.spawn(slot, incarnation)
