"""The strategy manager: starts, watches, restarts and stops strategy children.

Everything here reacts to one of four things, each a named method:
`reconcile` (what the store says should run here), `on_message` (a child
spoke), `on_exit` (a child's pidfd became readable) and `supervise` (time
passed: ticks, hung children, restarts after backoff, stop deadlines).
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any, Callable, Protocol

import msgspec

from quantlab.config import Paths
from quantlab.errors import ApiPermissionError, NotFound, StaleWriter
from quantlab.pool.records import ErrorInfo, ExitReason, TickInfo, Work
from quantlab.pool.workpool import WorkPool
from quantlab.protocol import (
    ApiCall,
    ApiResult,
    Error,
    Exited,
    Heartbeat,
    Hello,
    Init,
    Log,
    Ready,
    Stop,
    Tick,
    ToChild,
    ToWorker,
)
from quantlab.worker import procs
from quantlab.worker.rules import STABLE_AFTER, backoff_delay
from quantlab.worker.slot import Slot
from quantlab.worker.zygote import Spawn


class Transport(Protocol):
    """How the manager reaches processes: the worker loop provides it."""

    endpoint: str

    def spawn(self, request: Spawn) -> int: ...
    def send(self, routing_id: bytes, msg: ToChild) -> None: ...
    def watch(self, fd: int, handler: Callable[[], None]) -> None: ...
    def unwatch(self, fd: int) -> None: ...
    def submit_api(self, slot_key: bytes, call: ApiCall, allowed: list[str]) -> None: ...
    def drain(self, timeout: float) -> None:
        """Handle the children's messages that arrive within ``timeout`` seconds."""
        ...


#: Seconds to wait for a self-exiting child's last message before judging its exit.
LAST_WORDS_WAIT = 0.05

_json = msgspec.json.encode
_from_msgpack = msgspec.msgpack.decode


class StrategyManager:
    def __init__(
        self,
        *,
        worker_id: str,
        pool: WorkPool,
        transport: Transport,
        paths: Paths,
        log: logging.Logger,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.pool = pool
        self.transport = transport
        self.paths = paths
        self.log = log
        self.clock = clock
        self.rng = rng or random.Random()
        self.slots: dict[str, Slot] = {}
        self.by_routing_id: dict[bytes, Slot] = {}
        self.lease_valid_until = 0.0

    # ---- reconcile with the store ----

    def reconcile(self, works: list[Work], now: float) -> None:
        by_id = {w.id: w for w in works}
        for slot in list(self.slots.values()):
            self._follow(slot, by_id.get(slot.id), now)
        for work in works:
            mine = work.assignment is not None and work.assignment.worker == self.worker_id
            if mine and work.desired == "running" and work.id not in self.slots:
                self._adopt(work, now)

    def _follow(self, slot: Slot, work: Work | None, now: float) -> None:
        """Carry a store change over to a running slot."""
        if work is None or work.created != slot.work.created:  # removed (and perhaps assigned anew)
            return self.request_stop(slot, ExitReason(type="manual", message="strategy removed"), now)
        if work.assignment != slot.assignment:
            moved = ExitReason(type="lease_lost", message="assignment dropped: this worker's lease ran out")
            if work.assignment is not None:
                moved = ExitReason(type="reassigned", message=f"assigned to {work.assignment.worker} now")
            return self.request_stop(slot, moved, now)
        if work.desired == "stopped":
            return self.request_stop(slot, ExitReason(type="manual", message="stopped by operator"), now)
        if work.spec.restart_seq != slot.work.spec.restart_seq:
            slot.work = work
            self._restart_now(slot, now)
        return None

    def _adopt(self, work: Work, now: float) -> None:
        log_path = self.paths.strategy_log(work.id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        slot = Slot(work, log_path)
        self.slots[work.id] = slot
        self.pool.event("accepted", strategy=work.id, worker=self.worker_id, detail=f"epoch {slot.assignment.epoch}")
        self.spawn(slot, now)

    # ---- processes ----

    def spawn(self, slot: Slot, now: float) -> None:
        slot.incarnation += 1
        slot.error_reported = slot.exited = None
        slot.killed_for = None
        slot.ready_at = None
        request = Spawn(endpoint=self.transport.endpoint, routing_id=slot.routing_id, log_path=str(slot.log_path))
        try:
            pid = self.transport.spawn(request)
        except OSError as e:
            self.log.error("cannot spawn %s: %s", slot.id, e)
            slot.marker(now, f"spawn failed: {e}")
            return self._count_error(slot, ErrorInfo(message=f"spawn failed: {e}", ts=now), now)
        slot.pid = pid
        slot.pidfd = os.pidfd_open(pid)
        slot.started_at = now
        slot.ticks.restart(now)
        self.by_routing_id[slot.routing_id] = slot
        self.transport.watch(slot.pidfd, lambda: self.on_exit(slot, self.clock()))
        slot.result.pid = pid
        if slot.incarnation > 1:
            slot.result.restarts += 1
        slot.set_phase("starting")
        slot.marker(now, f"spawn pid={pid} incarnation={slot.incarnation} epoch={slot.assignment.epoch}")
        self.flush_one(slot)
        return None

    def on_exit(self, slot: Slot, now: float) -> None:
        """The child's pidfd is readable: reap it, then decide what comes next."""
        assert slot.pid is not None and slot.pidfd is not None
        pid = slot.pid
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) and slot.error_reported is None and slot.exited is None:
            # A child that exits by itself said why first (Error, Exited); the pidfd can beat
            # those last words through the socket, so give them a moment to arrive.
            self.transport.drain(LAST_WORDS_WAIT)
        how = procs.describe_status(status)
        self.transport.unwatch(slot.pidfd)
        os.close(slot.pidfd)
        self.by_routing_id.pop(slot.routing_id, None)
        slot.pid = slot.pidfd = slot.result.pid = None
        slot.marker(now, f"exit pid={pid} {how}")
        if slot.stop_reason is not None or slot.exited is not None:
            return self._stopped(slot, now)
        error = slot.error_reported or ErrorInfo(
            message=f"hung: {slot.killed_for}" if slot.killed_for else f"crashed: {how}", ts=now
        )
        kind = "heartbeat_timeout" if slot.killed_for else ("error" if slot.error_reported else "crashed")
        self.pool.event(kind, strategy=slot.id, worker=self.worker_id, detail=error.message)
        return self._count_error(slot, error, now)

    def kill(self, slot: Slot, why: str, now: float) -> None:
        if slot.pid is None:
            return
        slot.killed_for = why
        slot.marker(now, f"kill pid={slot.pid}: {why}")
        procs.kill_group(slot.pid)

    # ---- messages from children ----

    def on_message(self, routing_id: bytes, msg: ToWorker, now: float) -> None:
        slot = self.by_routing_id.get(routing_id)
        if slot is None:
            return  # an older incarnation, already written off
        if isinstance(msg, Heartbeat):
            self._on_heartbeat(slot, msg, now)
        elif isinstance(msg, Hello):
            self._send_init(slot)
        elif isinstance(msg, Ready):
            slot.ready_at = now
            slot.set_phase("running")
            self.flush_one(slot)
            self.pool.event("started", strategy=slot.id, worker=self.worker_id, detail=f"pid {slot.pid}")
            self._tick(slot, now)
        elif isinstance(msg, ApiCall):
            self._on_api_call(slot, msg, now)
        elif isinstance(msg, Error):
            slot.error_reported = ErrorInfo(message=msg.message, traceback=msg.traceback, ts=now)
        elif isinstance(msg, Exited):
            slot.exited = msg.reason
            self._save_state(slot, msg.state)
        elif isinstance(msg, Log):
            self.pool.event("strategy_message", strategy=slot.id, worker=self.worker_id, detail=_json(msg.data).decode())

    def _send_init(self, slot: Slot) -> None:
        spec = slot.work.spec
        init = Init(
            id=slot.id,
            file=spec.file,
            params=spec.params,
            state=self.pool.store.load_state(slot.id),
            accounts=spec.accounts,
            log_path=str(slot.log_path),
        )
        self.send_to(slot, init)

    def _on_heartbeat(self, slot: Slot, msg: Heartbeat, now: float) -> None:
        if not slot.ticks.answered(msg.seq):
            return
        first = slot.result.last_heartbeat is None or slot.result.last_heartbeat < slot.started_at
        slot.result.heartbeats += 1
        slot.result.last_heartbeat = now
        slot.dirty = True
        self._save_state(slot, msg.state)
        if first:  # the first heartbeat of an incarnation shows at once, the rest with the next flush
            self.flush_one(slot)
        if slot.ready_at is not None and now - slot.ready_at >= STABLE_AFTER:
            slot.consecutive_failures = 0

    def _on_api_call(self, slot: Slot, call: ApiCall, now: float) -> None:
        # Fencing: no exchange call once this worker's lease or the slot's epoch is in doubt
        # (st_exit of a manual or worker_exit stop may still cancel its orders).
        if now >= self.lease_valid_until or slot.moved_away:
            refused = ApiPermissionError("worker lease not valid for this strategy; call refused")
            self.send_to(slot, ApiResult(call_id=call.call_id, ok=False, error=str(refused), kind="permission"))
            return
        self.transport.submit_api(slot.routing_id, call, slot.work.spec.accounts)

    def deliver_api_result(self, routing_id: bytes, result: ApiResult) -> None:
        slot = self.by_routing_id.get(routing_id)
        if slot is not None:
            self.send_to(slot, result)

    def _save_state(self, slot: Slot, state: bytes | None) -> None:
        if state is None or slot.moved_away:
            return  # unchanged, or the strategy is someone else's now
        self.pool.store.save_state(slot.id, _json(_from_msgpack(state)))

    def send_to(self, slot: Slot, msg: ToChild) -> None:
        if slot.pid is not None:
            self.transport.send(slot.routing_id, msg)

    # ---- time passes ----

    def supervise(self, now: float) -> None:
        for slot in list(self.slots.values()):
            if slot.phase == "running" and slot.ticks.due(now):
                self._tick(slot, now)
            if slot.phase in ("starting", "running"):
                timeout = slot.work.spec.heartbeat_timeout
                if slot.hung_for(now) > timeout and slot.killed_for is None:
                    self.kill(slot, f"no heartbeat for {timeout:g}s", now)
            elif slot.phase == "stopping" and now >= slot.stop_deadline and slot.killed_for is None:
                self.kill(slot, f"st_exit took longer than {slot.work.spec.stop_timeout:g}s", now)
            elif slot.phase == "backoff" and now >= slot.restart_at:
                self.pool.event("restarted", strategy=slot.id, worker=self.worker_id)
                self.spawn(slot, now)

    def next_deadline(self, now: float) -> float:
        deadlines = [now + 1.0]
        for slot in self.slots.values():
            if slot.phase == "running":
                deadlines.append(slot.ticks.next_due)
            if slot.phase in ("starting", "running"):
                deadlines.append(max(slot.started_at, slot.result.last_heartbeat or 0) + slot.work.spec.heartbeat_timeout)
            elif slot.phase == "stopping":
                deadlines.append(slot.stop_deadline)
            elif slot.phase == "backoff":
                deadlines.append(slot.restart_at)
        return min(deadlines)

    def _tick(self, slot: Slot, now: float) -> None:
        seq = slot.ticks.sent(now)
        slot.result.overruns = slot.ticks.overruns
        tick = TickInfo(seq=seq, ts=now, interval=slot.work.spec.interval, overruns=slot.ticks.overruns)
        self.send_to(slot, Tick(tick=tick))

    # ---- stopping ----

    def request_stop(self, slot: Slot, reason: ExitReason, now: float) -> None:
        if slot.stop_reason is not None:
            return
        slot.stop_reason = reason
        if slot.pid is None:
            return self._stopped(slot, now)
        slot.stop_deadline = now + slot.work.spec.stop_timeout
        slot.set_phase("stopping", reason.message)
        self.send_to(slot, Stop(reason=reason))
        self.flush_one(slot)
        return None

    def stop_all(self, reason: ExitReason, now: float) -> None:
        for slot in list(self.slots.values()):
            self.request_stop(slot, reason, now)

    def _restart_now(self, slot: Slot, now: float) -> None:
        """`qlab strategy restart`: a clean stop, then a fresh start with a fresh error count."""
        slot.marker(now, "restart requested by operator")
        slot.restart_requested = True
        self.request_stop(slot, ExitReason(type="manual", message="restart requested"), now)

    def _stopped(self, slot: Slot, now: float) -> None:
        reason = slot.stop_reason or slot.exited or ExitReason(type="manual")
        del self.slots[slot.id]
        if reason.type in ("reassigned", "lease_lost"):
            self.pool.event("released", strategy=slot.id, worker=self.worker_id, detail=reason.type)
            return
        if slot.restart_requested:
            slot.result.error_count = 0
            self._write_back(slot, now, lambda w: None, "restart")
            return
        if reason.type == "worker_exit":
            slot.result.status = "pending"
            slot.result.reason = f"worker {self.worker_id} stopped; waiting for placement"
            self._write_back(slot, now, lambda w: setattr(w, "assignment", None), "released")
            return
        slot.result.status = "stopped"
        slot.result.reason = reason.message or "stopped"

        def settle(work: Work) -> None:
            work.assignment = None
            work.desired = "stopped"  # also when the strategy called ctx.stop() itself

        self._write_back(slot, now, settle, "stopped")

    def _count_error(self, slot: Slot, error: ErrorInfo, now: float) -> None:
        slot.result.last_error = error
        slot.result.error_count = slot.errors.add(now)
        spec = slot.work.spec
        if slot.result.error_count > spec.max_errors:
            del self.slots[slot.id]
            slot.result.status = "failed"
            slot.result.reason = f"{slot.result.error_count} errors within {spec.error_window:g}s (max {spec.max_errors}): {error.message}"
            slot.marker(now, f"failed: {slot.result.reason}")
            self._write_back(slot, now, lambda w: setattr(w, "assignment", None), "failed")
            return
        slot.consecutive_failures += 1
        delay = backoff_delay(spec.backoff, spec.backoff_max, slot.consecutive_failures, self.rng.random())
        slot.restart_at = now + delay
        slot.set_phase("backoff", f"{error.message}; restarting in {delay:.1f}s")
        slot.marker(now, f"restart in {delay:.2f}s after: {error.message}")
        self.flush_one(slot)

    # ---- results to the store ----

    def _write_back(self, slot: Slot, now: float, change: Callable[[Work], Any], event: str) -> None:
        result = slot.result

        def put(work: Work) -> None:
            work.result = result
            change(work)

        try:
            self.pool.report(slot.id, slot.assignment, put, notify=True)
        except (StaleWriter, NotFound) as e:  # fenced off or removed: the store has moved on without us
            self.log.info("not recording %s for %s: %s", event, slot.id, e)
            return
        self.pool.event(event, strategy=slot.id, worker=self.worker_id, detail=result.reason)

    def flush_one(self, slot: Slot) -> None:
        if self.pool.report_result(slot.id, slot.assignment, slot.result):
            slot.dirty = False

    def flush(self) -> None:
        for slot in list(self.slots.values()):
            if slot.dirty:
                self.flush_one(slot)
