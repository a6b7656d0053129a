"""Messages from the children: whose they are, within their budget, turned into machine events.

A frame counts for a strategy only when its connection said Hello with the
incarnation's token (quantlab/worker/peers.py) and it is within the strategy's
budget (quantlab/worker/intake.py). What handling it raises is charged to that
strategy, never to the loop. The Init a child's Hello asks for is built here
too: it reads (and claims) the strategy's state.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

import msgspec

from quantlab.errors import ApiPermissionError, CorruptRecord, QuantlabError, StaleWriter
from quantlab.exchange.apipool import Caller
from quantlab.exchange.reconcile import Reconciled
from quantlab.exchange.risk import RiskLimits
from quantlab.logsetup import LogSettings
from quantlab.ops.metrics import WorkerMetrics
from quantlab.protocol import ApiCall, ApiResult, Error, Exited, Heartbeat, Hello, Init, Log, Ready, TickExpired, ToWorker
from quantlab.store.fenced import FencedStore
from quantlab.store.records import EventKind, ExitReason
from quantlab.worker import machine as m
from quantlab.worker.channel import Garbled
from quantlab.worker.intake import FAULT_AFTER, Burst
from quantlab.worker.lease import Fencing
from quantlab.worker.outbox import Outboxes
from quantlab.worker.peers import Peers
from quantlab.worker.report import Reporter
from quantlab.worker.slot import Slot
from quantlab.worker.statecommit import StateCommits
from quantlab.worker.transport import Transport

_json = msgspec.json.encode

Feed = Callable[[Slot, m.Event], list[m.Action]]


class Inbox:
    def __init__(
        self,
        *,
        feed: Feed,
        by_key: dict[bytes, Slot],
        peers: Peers,
        outboxes: Outboxes,
        fencing: Fencing,
        transport: Transport,
        fenced_store: FencedStore,
        states: StateCommits,
        reporter: Reporter,
        log: logging.Logger,
        clock: Callable[[], float],
        metrics: WorkerMetrics | None,
        log_settings: LogSettings,
    ) -> None:
        self.feed = feed  #: the manager steps the slot's machine and performs what it says
        self.by_key = by_key  #: the manager's forked incarnations by Slot.key, until their exit
        self.peers = peers
        self.outboxes = outboxes
        self.fencing = fencing
        self.transport = transport
        self.fenced_store = fenced_store
        self.states = states
        self.reporter = reporter
        self.log = log
        self.clock = clock
        self.metrics = metrics  #: when the worker serves --metrics-port
        self.log_settings = log_settings  #: how strategy logs rotate (the worker's --log-max-mb, --log-keep)

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
            self.outboxes.flush(slot)
        except Exception as e:
            # Whatever it was, it came from this strategy: charge it there, never to the loop.
            if (child := m.alive(slot.machine)) is not None and child.killed is None:  # once: a hostile child repeats
                self.log.exception("handling %s from %s failed", type(msg).__name__, slot.id)
            charge = m.Charge(EventKind.ERROR, f"worker could not handle its {type(msg).__name__}: {type(e).__name__}: {e}")
            self.feed(slot, m.Fault(charge))

    def deliver_api_result(self, key: bytes, result: ApiResult) -> None:
        """The answer to an API call of incarnation ``key`` (dropped when that child is gone)."""
        slot = self.by_key.get(key)
        if slot is None:
            return
        if result.kind == "risk":
            self.reporter.note(EventKind.RISK_REFUSED, slot, result.error)
        self.outboxes.send(slot, result)
        self.feed(slot, m.CallAnswered())

    def send_init(self, slot: Slot) -> None:
        """The child said Hello: its Init, with its state claimed for its epoch (tried again while the store fails)."""
        try:
            state = self.fenced_store.claim_state(slot.id, slot.assignment.epoch)
        except StaleWriter as e:
            self.feed(slot, m.StopWanted(ExitReason(type="reassigned", message=f"its state belongs to a newer epoch: {e}")))
            return
        except CorruptRecord as e:
            self.feed(slot, m.Fatal(f"its state is unreadable: {e}"))
            return
        except (OSError, QuantlabError) as e:
            self.feed(slot, m.InitWaits())  # the child waits; the manager's pass tries again
            self.reporter.store_failed(slot, "reading its state", e)
            return
        if m.init_waits(slot.machine):
            self.feed(slot, m.InitSent())
        spec = slot.work.spec
        found = slot.reconciled or Reconciled(ok=True)
        slot.reconciled = None  # the next start reconciles again
        settings = self.log_settings
        init = Init(id=slot.id, file=spec.file, params=spec.params, state=state, accounts=spec.accounts,
                    log_path=str(slot.log_path), log_max_bytes=int(settings.max_mb * 1_000_000),
                    log_keep=settings.keep, open_orders=found.open_orders, positions=found.positions,
                    pid=slot.pid or 0, worker_pid=os.getpid())
        self.outboxes.send(slot, init)

    def note_burst(self, slot: Slot, burst: Burst | None) -> None:
        """One event for a burst of messages over budget, once it ended."""
        if burst is not None:
            self.reporter.note(EventKind.OVER_BUDGET, slot, burst.describe())

    def _speaker(self, peer: bytes, msg: ToWorker | Garbled) -> Slot | None:
        """The strategy whose child speaks on ``peer``: bound by its Hello's token (quantlab/worker/peers.py).

        Anyone else's message is dropped and counted.
        """
        key = self.peers.key(peer)
        if key is None and isinstance(msg, Hello):
            key = self.peers.bind(peer, msg.token)
        elif key is None:
            self.peers.drop("a frame that is no message" if isinstance(msg, Garbled) else "a message before a good Hello")
        if key is None:
            metrics = self.metrics
            if metrics is not None:
                metrics.channel_dropped.labels(reason="stranger").inc()
            return None
        return self.by_key.get(key)

    def _within_budget(self, slot: Slot, msg: ToWorker) -> bool:
        """True when ``msg`` is within the strategy's budget (quantlab/worker/intake.py); else it is dropped."""
        if slot.intake.admit(msg, self.clock()):
            return True
        metrics = self.metrics
        if metrics is not None:
            metrics.channel_dropped.labels(reason="over_budget").inc()
        if isinstance(msg, ApiCall):  # answered, so the strategy's call returns
            self.outboxes.send(slot, ApiResult(call_id=msg.call_id, ok=False, kind="permission",
                                               error="over its budget of API calls a second: refused"))
        burst = slot.intake.overdue()
        if burst is not None:
            self.log.warning("%s is over its message budget: %s", slot.id, burst.describe())
            self.note_burst(slot, burst)
            self.feed(slot, m.Fault(m.Charge(EventKind.ERROR, f"over its message budget for {FAULT_AFTER:g}s")))
        return False

    def _dispatch(self, slot: Slot, msg: ToWorker) -> None:
        if isinstance(msg, Heartbeat):
            if any(isinstance(a, m.Beaten) for a in self.feed(slot, m.Beat(msg.seq))):
                self._save_state(slot, msg.state)
                metrics = self.metrics
                if metrics is not None and msg.hook_seconds is not None:
                    metrics.hook_duration.observe(msg.hook_seconds)
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

    def _on_api_call(self, slot: Slot, call: ApiCall) -> None:
        # Fencing: checked here, and again by the API pool as the request is signed.
        if not self.fencing.allows(slot):
            refused = ApiPermissionError("worker lease not valid for this strategy; call refused")
            self.outboxes.send(slot, ApiResult(call_id=call.call_id, ok=False, error=str(refused), kind="permission"))
            return
        caller = Caller(slot.id, slot.assignment.epoch, RiskLimits.of(slot.work.spec))
        self.feed(slot, m.CallAsked())  # first: a pool that answers at once answers a call the machine knows of
        self.transport.submit_api(slot.key, call, slot.work.spec.accounts, self.fencing.fence(slot), caller)

    def _save_state(self, slot: Slot, state: bytes | None) -> None:
        if state is None or slot.moved_away:
            return  # unchanged, or the strategy is someone else's now
        if not isinstance(msgspec.json.decode(state), dict):
            raise ValueError("its state is not a JSON object")  # charged to the strategy by on_message
        self.states.add(slot, state)  # written with the pass's group (quantlab/worker/statecommit.py)
