"""The StrategyManager stepped with an injected `now`: scripted child messages, real (sleep) processes."""

from __future__ import annotations

import logging
import os
import random
import select
import signal
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from quantlab.config import Paths
from quantlab.pool.filestore import FileStore
from quantlab.pool.records import Assignment, StrategySpec, Work
from quantlab.pool.workpool import WorkPool
from quantlab.protocol import ApiCall, ApiResult, Heartbeat, Hello, Init, Ready, Stop, Tick, ToChild
from quantlab.worker.manager import StrategyManager
from quantlab.worker.rules import STABLE_AFTER
from quantlab.worker.zygote import Spawn

T0 = 1_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class ScriptedTransport:
    """Children are plain `sleep` processes in their own group; messages are recorded, not sent."""

    endpoint = "ipc:///nowhere"

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, ToChild]] = []
        self.watched: dict[int, Callable[[], None]] = {}
        self.children: list[subprocess.Popen[bytes]] = []

    def spawn(self, request: Spawn) -> int:
        child = subprocess.Popen(["sleep", "60"], start_new_session=True)
        self.children.append(child)
        return child.pid

    def send(self, routing_id: bytes, msg: ToChild) -> None:
        self.sent.append((routing_id, msg))

    def watch(self, fd: int, handler: Callable[[], None]) -> None:
        self.watched[fd] = handler

    def unwatch(self, fd: int) -> None:
        del self.watched[fd]

    def submit_api(self, routing_id: bytes, call: ApiCall, allowed: list[str]) -> None:
        raise AssertionError("no API calls in these tests")

    def drain(self, timeout: float) -> None:
        """Scripted: every message a test sends is delivered by the test itself."""

    def deliver_exits(self) -> None:
        """Run the handler of every pidfd that is readable (a child exited)."""
        ready, _, _ = select.select(list(self.watched), [], [], 5)
        for fd in ready:
            self.watched[fd]()

    def last(self, kind: type) -> ToChild:
        return [m for _, m in self.sent if isinstance(m, kind)][-1]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[StrategyManager, ScriptedTransport, FileStore]]:
    store = FileStore(tmp_path / "store")
    transport = ScriptedTransport()
    clock = Clock()
    manager = StrategyManager(
        worker_id="w1", pool=WorkPool(store, clock=clock), transport=transport,
        paths=Paths(tmp_path), log=logging.getLogger("test"), clock=clock, rng=random.Random(1),
    )
    manager.lease_valid_until = T0 + 10_000
    yield manager, transport, store
    for child in transport.children:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def assign(store: FileStore, **spec: float) -> Work:
    work = Work(id="s", spec=StrategySpec(file="/s.py", **spec), assignment=Assignment(worker="w1", epoch=1), epoch=1)  # type: ignore[arg-type]
    store.add_work(work)
    return work


def start(manager: StrategyManager, transport: ScriptedTransport, store: FileStore, now: float) -> bytes:
    manager.reconcile(store.list_works(), now)
    slot = manager.slots["s"]
    manager.on_message(slot.routing_id, Hello(pid=slot.pid or 0), now)
    assert isinstance(transport.last(Init), Init)
    manager.on_message(slot.routing_id, Ready(), now)
    return slot.routing_id


def test_ready_child_gets_ticks_only_after_answers(env: tuple[StrategyManager, ScriptedTransport, FileStore]) -> None:
    manager, transport, store = env
    assign(store, interval=1.0)
    rid = start(manager, transport, store, T0)
    first = transport.last(Tick)
    assert isinstance(first, Tick) and first.tick.seq == 1
    manager.supervise(T0 + 1.0)  # unanswered: an overrun, no second tick
    manager.supervise(T0 + 2.0)
    assert len([m for _, m in transport.sent if isinstance(m, Tick)]) == 1
    manager.on_message(rid, Heartbeat(seq=1), T0 + 2.1)
    manager.supervise(T0 + 3.0)
    second = transport.last(Tick)
    assert isinstance(second, Tick) and second.tick.seq == 2 and second.tick.overruns == 2
    assert manager.slots["s"].result.heartbeats == 1


def test_hung_child_is_killed_counted_and_restarted_after_backoff(env: tuple[StrategyManager, ScriptedTransport, FileStore]) -> None:
    manager, transport, store = env
    assign(store, heartbeat_timeout=5.0, backoff=2.0)
    start(manager, transport, store, T0)
    first_pid = manager.slots["s"].pid
    manager.supervise(T0 + 4.0)
    assert manager.slots["s"].killed_for is None
    manager.supervise(T0 + 5.5)
    assert manager.slots["s"].killed_for == "no heartbeat for 5s"
    manager.clock.now = T0 + 5.5  # type: ignore[attr-defined]
    transport.deliver_exits()
    slot = manager.slots["s"]
    assert slot.phase == "backoff" and slot.result.error_count == 1
    assert slot.result.last_error is not None and slot.result.last_error.message.startswith("hung")
    restart_at = slot.restart_at
    assert T0 + 5.5 + 1.8 <= restart_at <= T0 + 5.5 + 2.2  # 2 s with 10% jitter
    manager.supervise(restart_at - 0.01)
    assert slot.pid is None
    manager.supervise(restart_at)
    assert slot.pid not in (None, first_pid) and slot.result.restarts == 1
    assert store.get_work("s").result.status == "starting"


def test_too_many_errors_fail_and_release_the_work(env: tuple[StrategyManager, ScriptedTransport, FileStore]) -> None:
    manager, transport, store = env
    assign(store, max_errors=2, backoff=0.0)
    now = T0
    start(manager, transport, store, now)
    for crash in range(3):
        slot = manager.slots["s"]
        os.killpg(slot.pid or 0, signal.SIGKILL)
        transport.deliver_exits()
        if crash < 2:
            now += 1
            manager.supervise(now)  # backoff 0: restarted at once
    assert "s" not in manager.slots
    work = store.get_work("s")
    assert work.result.status == "failed" and work.assignment is None
    assert work.result.error_count == 3 and "signal SIGKILL" in work.result.reason


def test_stop_sends_stop_then_kills_after_stop_timeout(env: tuple[StrategyManager, ScriptedTransport, FileStore]) -> None:
    manager, transport, store = env
    assign(store, stop_timeout=3.0)
    start(manager, transport, store, T0)
    store.update_work("s", lambda w: setattr(w, "desired", "stopped") or w)
    manager.reconcile(store.list_works(), T0 + 1)
    stop = transport.last(Stop)
    assert isinstance(stop, Stop) and stop.reason.type == "manual"
    manager.supervise(T0 + 3.9)
    assert manager.slots["s"].killed_for is None
    manager.supervise(T0 + 4.1)
    transport.deliver_exits()
    work = store.get_work("s")
    assert work.result.status == "stopped" and work.desired == "stopped" and work.assignment is None


def test_api_calls_are_refused_once_the_lease_ran_out(env: tuple[StrategyManager, ScriptedTransport, FileStore]) -> None:
    manager, transport, store = env
    assign(store)
    rid = start(manager, transport, store, T0)
    manager.lease_valid_until = T0 + 5
    manager.on_message(rid, ApiCall(call_id=7, account="paper", method="place_order", kwargs={}), T0 + 6)
    refused = transport.last(ApiResult)
    assert isinstance(refused, ApiResult) and not refused.ok and refused.kind == "permission"
    assert refused.call_id == 7 and "lease" in refused.error


def test_writes_are_fenced_after_reassignment(env: tuple[StrategyManager, ScriptedTransport, FileStore]) -> None:
    manager, transport, store = env
    assign(store)
    start(manager, transport, store, T0)
    store.update_work("s", lambda w: setattr(w, "assignment", Assignment(worker="w2", epoch=2)) or w)
    manager.slots["s"].result.heartbeats = 999
    manager.flush_one(manager.slots["s"])
    assert store.get_work("s").result.heartbeats != 999  # the stale worker's write was refused
    manager.reconcile(store.list_works(), T0 + 1)
    stop = transport.last(Stop)
    assert isinstance(stop, Stop) and stop.reason.type == "reassigned"


def test_backoff_doubles_then_resets_after_a_stable_run(env: tuple[StrategyManager, ScriptedTransport, FileStore]) -> None:
    manager, transport, store = env
    assign(store, backoff=1.0, max_errors=100)
    clock = manager.clock
    start(manager, transport, store, T0)
    delays = []
    for round_ in range(3):
        slot = manager.slots["s"]
        os.killpg(slot.pid or 0, signal.SIGKILL)
        clock.now = T0 + 100 * round_  # type: ignore[attr-defined]
        transport.deliver_exits()
        delays.append(slot.restart_at - clock.now)  # type: ignore[attr-defined]
        manager.supervise(slot.restart_at)
        manager.on_message(slot.routing_id, Hello(pid=slot.pid or 0), slot.restart_at)
        manager.on_message(slot.routing_id, Ready(), slot.restart_at)
        if round_ == 1:  # this incarnation runs stably for longer than STABLE_AFTER
            manager.on_message(slot.routing_id, Heartbeat(seq=1), slot.restart_at + STABLE_AFTER + 1)
    assert 0.9 <= delays[0] <= 1.1 and 1.8 <= delays[1] <= 2.2
    assert 0.9 <= delays[2] <= 1.1  # reset: back to the first delay
