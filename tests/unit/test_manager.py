"""The StrategyManager stepped with fakes: no processes, no sockets, no store files.

The fake transport plays the children (connected or not, exiting when told)
and the fake store is a dict of Works with the FencedStore's fenced writes.
"""

from __future__ import annotations

import contextlib
from collections import Counter
import errno
import math
import logging
import random
import signal
import time
from pathlib import Path
from typing import Any, Callable

import msgspec
import pytest

from quantlab.config import Paths
from quantlab.errors import CorruptRecord, NotFound, StaleWriter
from quantlab.exchange.apipool import Caller
from quantlab.exchange.reconcile import Reconciled, Request
from quantlab.exchange.signing import Fence
from quantlab.store import workmachine as wm
from quantlab.store.records import Assignment, Event, StrategySpec, Work
from quantlab.store.statewrites import StateWrite
from quantlab.protocol import (
    ApiCall,
    ApiResult,
    Exited,
    Heartbeat,
    Hello,
    Init,
    Ready,
    Stop,
    Tick,
    TickExpired,
    ToChild,
)
from quantlab.worker.machine import CALL_PATIENCE, Due
from quantlab.worker.lease import LEASE_KILL_GRACE
from quantlab.worker.manager import MEMORY_EVERY, STORE_RETRY, StrategyManager
from quantlab.worker.outbox import OUTBOX_LIMIT
from quantlab.worker.publishing import COUNTS_PER_PASS, PUBLISH_GATHER, START_GATHER
from quantlab.worker.rules import tick_phase
from quantlab.worker.statecommit import GATHER
from quantlab.worker.load import Usage
from quantlab.worker.zygote import Forked, ForkRequest

T0 = 1000.0  # monotonic
WALL0 = 1_700_000_000.0
KILLED = signal.SIGKILL  # a wait status: killed by SIGKILL


def exit_code(n: int) -> int:
    return n << 8  # a wait status: exited with code n


class Clocks:
    def __init__(self) -> None:
        self.mono = T0
        self.wall = WALL0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


class FakeTransport:
    """Children that exist only here: they connect when told, exit when told."""

    endpoint = "ipc:///nowhere"

    def __init__(self) -> None:
        self.next_pid = 100
        self.on_exit: dict[int, Callable[[int], None]] = {}
        self.tokens: dict[int, bytes] = {}  #: each child's token, from its ForkRequest
        self.connected: set[bytes] = set()
        self.full: set[bytes] = set()  #: routing ids whose pipe is at the high-water mark
        self.sent: list[tuple[bytes, ToChild]] = []
        self.killed: list[int] = []
        self.memory: dict[int, float] = {}
        self.api_calls: list[ApiCall] = []
        self.reconciles: list[tuple[Request, Callable[[Reconciled], None]]] = []
        self.fences: list[Fence] = []
        self.fork_cost: Callable[[], None] = lambda: None  #: the loop time a fork takes (a test advances its clock)
        #: Fork answers not given yet (None: each fork is answered as it is asked).
        self.held: list[tuple[Callable[[Forked], None], int]] | None = None

    def fork(self, request: ForkRequest, answer: Callable[[Forked], None], on_exit: Callable[[int], None]) -> None:
        """Answered at once, unless ``held``: then by ``answer_held``, as a zygote answers on a later pass."""
        self.fork_cost()
        self.next_pid += 1
        self.on_exit[self.next_pid] = on_exit
        self.tokens[self.next_pid] = request.token
        if self.held is None:
            answer(Forked(pid=self.next_pid))
        else:
            self.held.append((answer, self.next_pid))

    def answer_held(self, error: str = "") -> None:
        assert self.held is not None
        held, self.held = self.held, []
        for answer, pid in held:
            answer(Forked(error=error) if error else Forked(pid=pid))

    def kill(self, pid: int) -> None:
        self.killed.append(pid)

    def send(self, routing_id: bytes, msg: ToChild) -> bool:
        if routing_id not in self.connected or routing_id in self.full:
            return False
        self.sent.append((routing_id, msg))
        return True

    def submit_api(self, routing_id: bytes, call: ApiCall, allowed: list[str], fence: Fence, caller: Caller) -> None:
        self.api_calls.append(call)
        self.fences.append(fence)

    def reconcile(self, request: Request, fence: Fence, done: Callable[[Reconciled], None]) -> None:
        self.reconciles.append((request, done))

    def memory_mb(self, pid: int) -> float:
        return self.memory.get(pid, 10.0)

    def drain(self, timeout: float) -> None:
        """Scripted: every message a test sends is delivered by the test itself."""

    def exit(self, pid: int, status: int) -> None:
        self.on_exit.pop(pid)(status)

    def of(self, kind: type, rid: bytes | None = None) -> list[Any]:
        return [msg for r, msg in self.sent if isinstance(msg, kind) and (rid is None or r == rid)]


class FakeFencedStore:
    """The FencedStore's worker-side calls over a dict, with its fencing."""

    def __init__(self, clocks: Clocks) -> None:
        self.works: dict[str, Work] = {}
        self.state: dict[str, tuple[int, bytes]] = {}
        self.events: list[Event] = []
        self.clocks = clocks
        self.fail_writes: OSError | None = None
        self.fail_reads: OSError | None = None  #: what reading (claiming) a state raises
        self.corrupt: set[str] = set()
        self.durable: dict[str, tuple[int, bytes]] = {}
        self.reports = 0  #: Work writes made

    def get_work(self, work_id: str) -> Work | None:
        return self.works.get(work_id)

    def apply(self, work_id: str, transition: wm.Transition) -> wm.Change:
        """The Work machine's transition on the dict, as the store's compare-and-swap would apply it."""
        if work_id not in self.works:
            raise NotFound(work_id)
        change = transition(msgspec.structs.replace(self.works[work_id]))
        if change.work is None:
            del self.works[work_id]
        else:
            self.works[work_id] = change.work
        self.events.extend(change.events)
        self.reports += 1
        return change

    def claim_state(self, work_id: str, epoch: int) -> dict[str, Any]:
        if self.fail_reads is not None:
            raise self.fail_reads
        if work_id in self.corrupt:
            raise CorruptRecord(f"state/{work_id}: not JSON")
        held, data = self.state.get(work_id, (0, b"{}"))
        if held > epoch:
            raise StaleWriter("newer epoch")
        self.state[work_id] = (epoch, data)
        return msgspec.json.decode(data)  # type: ignore[no-any-return]

    def save_state(self, work_id: str, epoch: int, state_json: bytes) -> None:
        if self.fail_writes is not None:
            raise self.fail_writes
        if self.state.get(work_id, (0, b""))[0] > epoch:
            raise StaleWriter("newer epoch")
        self.state[work_id] = (epoch, state_json)

    def durable_together(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def durable_later(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def sync(self) -> None:
        """What a power cut would leave: the states as of this call (on the worker's sync thread)."""
        time.sleep(0.005)  # a disk's flush takes a moment: a tick must not overtake it
        self.durable = dict(self.state)

    def save_states(self, writes: list[StateWrite]) -> list[Exception | None]:
        outcomes: list[Exception | None] = []
        for write in writes:
            try:
                self.save_state(write.work_id, write.epoch, write.state_json)
                outcomes.append(None)
            except StaleWriter as e:
                outcomes.append(e)
        return outcomes

    def event(self, kind: str, *, strategy: str | None = None, worker: str | None = None, detail: str = "") -> None:
        self.events.append(Event(ts=self.clocks.wall, kind=kind, strategy=strategy, worker=worker, detail=detail))

    def kinds(self, strategy: str = "s") -> list[str]:
        return [e.kind for e in self.events if e.strategy == strategy]


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.clocks = Clocks()
        self.transport = FakeTransport()
        self.fenced_store = FakeFencedStore(self.clocks)
        self.manager = StrategyManager(
            worker_id="w1", fenced_store=self.fenced_store,  # type: ignore[arg-type]
            transport=self.transport, paths=Paths(tmp_path),
            log=logging.getLogger("test"), clock=lambda: self.clocks.mono, wall=lambda: self.clocks.wall,
            rng=random.Random(1), phase=lambda _: None,  # ticks exactly an interval apart from the start
        )
        self.manager.set_lease(T0 + 10_000)

    def add(self, *work_ids: str, **spec: Any) -> None:
        """Works assigned to this worker in the store, which the manager has not looked at yet."""
        for work_id in work_ids:
            self.fenced_store.works[work_id] = Work(id=work_id, spec=StrategySpec(file="/s.py", **spec),
                                            assignment=Assignment(worker="w1", epoch=1), epoch=1)

    def assign(self, work_id: str = "s", **spec: Any) -> Work:
        self.add(work_id, **spec)
        self.manager.reconcile(list(self.fenced_store.works.values()))
        return self.fenced_store.works[work_id]

    def change(self, work_id: str = "s", **fields: Any) -> None:
        self.fenced_store.works[work_id] = msgspec.structs.replace(self.fenced_store.works[work_id], **fields)
        self.manager.reconcile(list(self.fenced_store.works.values()))

    def slot_rid(self, work_id: str = "s") -> bytes:
        """The routing id the child of ``work_id`` connects under: its own, made up here."""
        return f"peer-{work_id}-{self.pid(work_id)}".encode()

    def pid(self, work_id: str = "s") -> int:
        pid = self.manager.slots[work_id].pid
        assert pid is not None
        return pid

    def hello(self, work_id: str = "s") -> bytes:
        rid = self.slot_rid(work_id)
        self.transport.connected.add(rid)
        pid = self.pid(work_id)
        self.manager.on_message(rid, Hello(pid=pid, token=self.transport.tokens[pid]))
        return rid

    def start(self, work_id: str = "s") -> bytes:
        rid = self.hello(work_id)
        self.manager.on_message(rid, Ready())
        return rid

    def step(self, seconds: float) -> None:
        self.clocks.advance(seconds)
        self.manager.supervise()

    def work(self, work_id: str = "s") -> Work:
        return self.fenced_store.works[work_id]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def test_ticks_go_out_only_after_answers(env: Env) -> None:
    env.assign(interval=1.0)
    rid = env.start()
    assert [t.tick.seq for t in env.transport.of(Tick)] == [1]
    env.step(1.0)
    env.step(1.0)
    assert len(env.transport.of(Tick)) == 1  # unanswered: overruns, no backlog
    env.manager.on_message(rid, Heartbeat(seq=1, state=b'{"n": 1}'))
    env.step(1.0)
    second = env.transport.of(Tick)[-1]
    assert second.tick.seq == 2 and second.tick.overruns == 2
    assert env.manager.slots["s"].result.heartbeats == 1 and env.fenced_store.state["s"] == (1, b'{"n": 1}')


@pytest.mark.parametrize("jump", [-3600.0, 3600.0])
def test_a_wall_clock_step_does_not_move_ticks_or_hang_detection(env: Env, jump: float) -> None:
    """Timers run on the monotonic clock: a wall-clock step either way neither silences ticks nor hang detection."""
    env.assign(interval=1.0, heartbeat_timeout=5.0)
    rid = env.start()
    env.clocks.wall += jump
    for seq in range(1, 4):
        env.manager.on_message(rid, Heartbeat(seq=seq))
        env.step(1.0)
    assert [t.tick.seq for t in env.transport.of(Tick)] == [1, 2, 3, 4]
    env.step(5.5)  # monotonic time passes, the wall clock says nothing about it
    assert env.transport.killed == [env.pid()]
    assert env.manager.slots["s"].result.last_heartbeat == pytest.approx(WALL0 + jump + 2.0)


def test_a_stop_before_hello_waits_in_the_outbox_and_st_exit_still_runs(env: Env) -> None:
    """A Stop for a child not connected yet waits in its outbox, and its Ready does not make it run on."""
    env.assign()
    env.change(desired="stopped")
    assert env.transport.sent == []  # not connected: nothing could go out, nothing was dropped
    rid = env.hello()
    assert [type(m) for _, m in env.transport.sent] == [Init, Stop]
    env.manager.on_message(rid, Ready())
    assert env.manager.slots["s"].status == "stopping" and env.transport.of(Tick) == []
    assert len(env.transport.of(Stop)) == 2  # sent again on Ready: harmless, and never lost
    env.manager.on_message(rid, Exited(reason=env.transport.of(Stop)[0].reason, state=b'{"n": 2}'))
    env.transport.exit(env.pid(), exit_code(0))
    work = env.work()
    assert work.result.status == "stopped" and work.assignment is None and env.fenced_store.state["s"][1] == b'{"n": 2}'


def test_stop_then_start_while_st_exit_runs_ends_running(env: Env) -> None:
    """A completed stop writes no desired=stopped: a start asked while st_exit ran wins."""
    env.assign()
    rid = env.start()
    first = env.pid()
    env.change(desired="stopped")
    env.change(desired="running")  # `qlab strategy start` while st_exit runs
    env.manager.on_message(rid, Exited(reason=env.transport.of(Stop)[0].reason))
    env.transport.exit(first, exit_code(0))
    env.step(0.0)
    assert env.manager.slots["s"].pid not in (None, first)
    assert env.work().desired == "running" and env.work().assignment is not None


def test_a_late_start_after_the_stop_settled_is_not_overwritten(env: Env) -> None:
    env.assign()
    rid = env.start()
    env.change(desired="stopped")
    env.fenced_store.works["s"].desired = "running"  # the start lands after the worker's last reconcile
    env.manager.on_message(rid, Exited(reason=env.transport.of(Stop)[0].reason))
    env.transport.exit(env.pid(), exit_code(0))
    work = env.work()
    assert work.desired == "running" and work.assignment is None and work.result.status == "pending"


def test_ctx_stop_keeps_it_stopped_unless_restarted_meanwhile(env: Env) -> None:
    from quantlab.store.records import ExitReason

    env.assign()
    rid = env.start()
    env.manager.on_message(rid, Exited(reason=ExitReason(type="manual", message="enough")))
    env.transport.exit(env.pid(), exit_code(0))
    assert env.work().desired == "stopped" and env.work().result.status == "stopped"


def test_a_bad_message_is_the_strategys_fault_not_the_workers(env: Env) -> None:
    """An exception while handling one child's message is that strategy's error; the worker loop goes on."""
    env.assign("bad")
    env.assign("good")
    bad, good = env.start("bad"), env.start("good")
    env.manager.on_message(bad, Heartbeat(seq=1, state=b"[1, 2"))  # not JSON: must not raise here
    assert env.transport.killed == [env.pid("bad")]
    env.transport.exit(env.pid("bad"), KILLED)
    result = env.manager.slots["bad"].result
    assert result.status == "error" and result.last_error is not None
    assert result.last_error.message.startswith("worker could not handle its Heartbeat")
    env.manager.on_message(good, Heartbeat(seq=1, state=b'{"ok": true}'))
    assert env.manager.slots["good"].result.heartbeats == 1


def test_a_full_disk_is_reported_and_retried_while_strategies_run(env: Env) -> None:
    """A failed store write is reported once and retried; the worker and its strategies go on."""
    env.assign()
    rid = env.start()
    env.fenced_store.fail_writes = OSError(errno.ENOSPC, "No space left on device")
    env.manager.on_message(rid, Heartbeat(seq=1, state=b'{"n": 1}'))
    env.step(1.0)
    env.manager.on_message(rid, Heartbeat(seq=2, state=b'{"n": 2}'))
    assert env.fenced_store.kinds().count("store_write_failed") == 1  # once per run of failures
    assert env.manager.slots["s"].running and env.transport.killed == []
    env.fenced_store.fail_writes = None
    env.step(1.0)
    assert env.fenced_store.state["s"] == (1, b'{"n": 2}')
    assert any("No space left" in e.detail for e in env.fenced_store.events if e.kind == "store_write_failed")


def test_a_newer_epoch_holding_the_state_stops_the_slot_without_more_writes(env: Env) -> None:
    env.assign()
    rid = env.start()
    env.fenced_store.state["s"] = (2, b'{"theirs": 1}')
    env.manager.on_message(rid, Heartbeat(seq=1, state=b'{"n": 1}'))
    env.step(GATHER)  # the group commit, GATHER after the heartbeat, finds the state taken
    stop = env.transport.of(Stop)[-1]
    assert stop.reason.type == "reassigned"
    env.manager.on_message(rid, Exited(reason=stop.reason, state=b'{"n": 9}'))
    env.transport.exit(env.pid(), exit_code(0))
    assert env.fenced_store.state["s"] == (2, b'{"theirs": 1}') and "s" not in env.manager.slots
    assert "released" in env.fenced_store.kinds()


def test_an_unreadable_state_fails_the_strategy(env: Env) -> None:
    env.fenced_store.corrupt.add("s")
    env.assign()
    env.hello()
    assert env.transport.of(Init) == [] and env.transport.killed == [env.pid()]
    env.transport.exit(env.pid(), KILLED)
    work = env.work()
    assert work.result.status == "failed" and "state is unreadable" in work.result.reason and work.assignment is None


def test_an_init_the_store_cannot_give_yet_goes_out_once_it_can(env: Env) -> None:
    """A child whose state cannot be read at its Hello waits, unharmed, and gets one Init once the store answers."""
    env.assign()
    env.fenced_store.fail_reads = OSError(errno.EIO, "Input/output error")
    env.hello()
    env.step(0.0)  # a pass that tries again, while the store still fails
    assert env.transport.of(Init) == [] and env.fenced_store.kinds().count("store_write_failed") == 1
    env.fenced_store.fail_reads = None
    env.step(STORE_RETRY)
    env.step(STORE_RETRY)
    assert len(env.transport.of(Init)) == 1 and env.manager.slots["s"].alive and env.transport.killed == []


def test_a_start_waits_for_its_accounts_reconciliation_and_retries_a_failed_one(env: Env) -> None:
    """The child is forked only once its accounts are reconciled; what that found goes to its Init."""
    env.assign(accounts=["paper"])
    slot = env.manager.slots["s"]
    env.step(STORE_RETRY)
    assert slot.pid is None and len(env.transport.reconciles) == 1  # under way: not asked again
    env.transport.reconciles[-1][1](Reconciled(ok=False, error="exchange unreachable"))
    assert slot.pid is None and env.work().result.reason == "waiting to start: exchange unreachable"
    env.step(STORE_RETRY)
    assert len(env.transport.reconciles) == 2
    position = {"account": "paper", "symbol": "BTCUSDT", "size": "0.1"}
    env.transport.reconciles[-1][1](Reconciled(ok=True, positions=[position]))
    assert slot.pid is not None
    env.hello()
    assert [init.positions for init in env.transport.of(Init)] == [[position]]


def test_an_api_result_that_cannot_go_out_now_is_sent_on_a_later_pass(env: Env) -> None:
    """An API result that meets ZeroMQ's high-water mark waits in the outbox: never lost, the child never blocked."""
    env.assign()
    rid = env.start()
    env.manager.on_message(rid, ApiCall(call_id=1, account="paper", method="get_tickers", kwargs={}))
    env.transport.full.add(rid)
    env.manager.deliver_api_result(env.manager.slots["s"].key, ApiResult(call_id=1, ok=True, result={"retCode": 0}))
    assert env.transport.of(ApiResult) == []
    env.transport.full.clear()
    env.step(0.01)
    assert [r.call_id for r in env.transport.of(ApiResult)] == [1]


def test_a_child_that_never_reads_is_killed_as_hung(env: Env) -> None:
    env.assign()
    rid = env.start()
    env.transport.full.add(rid)
    for _ in range(OUTBOX_LIMIT + 1):
        env.manager.send_message("s", {"x": 1})
    assert env.transport.killed == [env.pid()]
    env.transport.exit(env.pid(), KILLED)
    error = env.manager.slots["s"].result.last_error
    assert error is not None and "could not be delivered" in error.message


def test_lease_lapse_stops_every_child_stops_ticking_then_kills(env: Env) -> None:
    """A worker past its lease sends no tick: every child gets Stop(lease_lost), then the kill."""
    env.assign(interval=1.0)
    rid = env.start()
    assert env.transport.of(Tick)[0].lease_until == T0 + 10_000
    env.manager.set_lease(T0 + 2.0)
    env.manager.on_message(rid, Heartbeat(seq=1))
    env.step(1.0)
    assert env.transport.of(Tick)[-1].lease_until == T0 + 2.0
    env.manager.on_message(rid, Heartbeat(seq=2))
    env.step(1.5)  # past the lease: a Stop, no tick
    assert [t.tick.seq for t in env.transport.of(Tick)] == [1, 2]
    assert env.transport.of(Stop)[-1].reason.type == "lease_lost"
    env.manager.on_message(rid, ApiCall(call_id=3, account="paper", method="place_order", kwargs={}))
    refused = env.transport.of(ApiResult)[-1]
    assert not refused.ok and refused.kind == "permission" and env.transport.api_calls == []
    assert not env.manager.send_message("s", {"late": True})
    env.step(LEASE_KILL_GRACE)
    assert env.transport.killed == [env.pid()]
    env.transport.exit(env.pid(), KILLED)
    assert "s" not in env.manager.slots and "lease_lost" in [e.kind for e in env.fenced_store.events]
    env.manager.reconcile(list(env.fenced_store.works.values()))
    assert "s" not in env.manager.slots  # nothing new is taken on a lapsed lease


def test_an_expired_tick_reported_by_the_child_is_not_a_heartbeat(env: Env) -> None:
    env.assign(interval=1.0)
    rid = env.start()
    env.manager.on_message(rid, TickExpired(seq=1))
    env.step(1.0)
    assert [t.tick.seq for t in env.transport.of(Tick)] == [1, 2]
    assert env.manager.slots["s"].result.heartbeats == 0


def test_over_its_memory_limit_a_strategy_is_restarted_with_that_reason(env: Env) -> None:
    env.assign(max_memory_mb=100.0, backoff=0.0)
    env.start()
    env.transport.memory[env.pid()] = 150.0
    env.step(MEMORY_EVERY)
    assert env.transport.killed == [env.pid()]
    env.transport.exit(env.pid(), KILLED)
    error = env.manager.slots["s"].result.last_error
    assert error is not None and error.message == "over its memory limit: 150 MB > 100 MB (max-memory)"
    assert "memory_limit" in env.fenced_store.kinds()
    env.step(0.0)
    assert env.manager.slots["s"].alive


def test_hung_killed_counted_restarted_and_failed_after_too_many(env: Env) -> None:
    env.assign(heartbeat_timeout=5.0, backoff=2.0, max_errors=1)
    env.start()
    env.step(5.5)
    env.transport.exit(env.pid(), KILLED)
    slot = env.manager.slots["s"]
    assert slot.status == "error" and slot.result.error_count == 1 and "hung" in slot.result.reason
    env.manager.publisher.publish()  # the end of the pass the exit came in
    assert env.work().result.status == "error"
    env.step(1.7)
    assert not slot.alive
    env.step(0.6)  # 2 s with 10% jitter
    assert slot.alive and slot.result.restarts == 1
    env.transport.exit(env.pid(), exit_code(3))
    work = env.work()
    assert work.result.status == "failed" and work.assignment is None and "crashed: exit code 3" in work.result.reason


def test_writes_are_fenced_after_reassignment(env: Env) -> None:
    env.assign()
    env.start()
    env.fenced_store.works["s"].assignment = Assignment(worker="w2", epoch=2)
    env.manager.slots["s"].result.heartbeats = 999
    env.manager.reporter.flush_one(env.manager.slots["s"])
    assert env.work().result.heartbeats != 999
    env.manager.reconcile(list(env.fenced_store.works.values()))
    assert env.transport.of(Stop)[-1].reason.type == "reassigned"


def test_a_calls_fence_holds_with_the_lease_and_never_again_once_it_lapsed(env: Env) -> None:
    """A call waiting in the API pool sees the lease as it is when the call is signed."""
    env.assign(interval=1.0)
    rid = env.start()
    env.manager.set_lease(T0 + 2.0)
    env.manager.on_message(rid, ApiCall(call_id=1, account="paper", method="place_order", kwargs={}))
    fence = env.transport.fences[-1]
    assert fence() == T0 + 2.0
    env.manager.set_lease(T0 + 3.0)  # a renewal moves the fence with it
    assert fence() == T0 + 3.0
    env.step(3.1)  # the lease lapses while the call waits
    env.manager.set_lease(T0 + 20.0)  # registered again before the store says where the strategy went
    assert fence() == -math.inf


def test_the_states_of_one_pass_are_one_group_commit_made_before_the_next_ticks(env: Env) -> None:
    """One write for every strategy whose state changed in a pass, durable before any tick."""
    env.assign("a", interval=1.0)
    env.assign("b", interval=1.0)
    a, b = env.start("a"), env.start("b")
    env.manager.on_message(a, Heartbeat(seq=1, state=b'{"n": 1}'))
    env.manager.on_message(b, Heartbeat(seq=1, state=b'{"m": 1}'))
    assert env.fenced_store.state["a"] == (1, b"{}") and env.manager.states.batches == 0  # waits for the pass
    written_at_tick: list[Any] = []
    send = env.transport.send

    def spy(routing_id: bytes, msg: ToChild) -> bool:
        if isinstance(msg, Tick):
            written_at_tick.append(dict(env.fenced_store.durable))  # synced, not only written
        return send(routing_id, msg)

    env.transport.send = spy  # type: ignore[method-assign]
    env.step(1.0)
    assert env.manager.states.batches == 1
    assert len(written_at_tick) == 2 and all(w["a"][1] == b'{"n": 1}' and w["b"][1] == b'{"m": 1}' for w in written_at_tick)


def test_a_tick_sent_outside_the_pass_commits_the_waiting_state_first(env: Env) -> None:
    env.assign(interval=1.0)
    rid = env.start()
    env.manager.on_message(rid, Heartbeat(seq=1, state=b'{"n": 1}'))
    env.clocks.advance(1.0)
    env.manager.feed(env.manager.slots["s"], Due())  # a tick due before the pass's commit
    assert env.transport.of(Tick)[-1].tick.seq == 2 and env.fenced_store.durable["s"] == (1, b'{"n": 1}')


def test_heartbeat_counts_are_written_a_few_a_pass_not_all_at_once(env: Env) -> None:
    """A pass writes a few heartbeat counts, not all: 200 at once would hold the loop ~60 ms and ticks due."""
    ids = [f"s{i}" for i in range(10)]
    rids = {}
    for work_id in ids:
        env.assign(work_id, interval=1.0)
        rids[work_id] = env.start(work_id)
        env.manager.on_message(rids[work_id], Heartbeat(seq=1, state=None))
    env.step(1.0)  # the first heartbeats are published with their pass; the second ticks go out
    for work_id in ids:
        env.manager.on_message(rids[work_id], Heartbeat(seq=2, state=None))
    env.manager.flush(counts=True)
    written = lambda: sum(env.work(i).result.heartbeats == 2 for i in ids)  # noqa: E731
    assert written() == 0
    env.step(0.0)
    assert written() == COUNTS_PER_PASS
    for _ in range(3):
        env.step(0.0)
    assert written() == 10 and not env.manager.publisher.counts_due


def test_strategies_started_together_tick_spread_over_their_interval(env: Env) -> None:
    """Strategies started together tick at phases spread over their interval, not in one burst."""
    env.manager.phase = tick_phase
    ids = [f"s{i}" for i in range(40)]
    for work_id in ids:
        env.assign(work_id, interval=1.0)
        env.manager.on_message(env.start(work_id), Heartbeat(seq=1, state=None))
    sent_at: dict[bytes, float] = {}
    send = env.transport.send

    def spy(routing_id: bytes, msg: ToChild) -> bool:
        if isinstance(msg, Tick) and msg.tick.seq == 2:
            sent_at[routing_id] = env.clocks.mono
        return send(routing_id, msg)

    env.transport.send = spy  # type: ignore[method-assign]
    for _ in range(150):
        env.step(0.01)
    assert len(sent_at) == 40
    tenths = Counter(int((t - T0) * 10) % 10 for t in sent_at.values())
    assert len(tenths) >= 8 and max(tenths.values()) <= 10  # all at once before: one tenth held all 40


def test_states_coming_in_passes_apart_share_one_group_commit(env: Env) -> None:
    """With ticks spread, each pass brings one heartbeat; a group commit gathers GATHER seconds of them."""
    env.assign("a", interval=1.0)
    env.assign("b", interval=1.0)
    a, b = env.start("a"), env.start("b")
    env.manager.on_message(a, Heartbeat(seq=1, state=b'{"n": 1}'))
    env.step(GATHER / 2)  # a pass of its own, before b's heartbeat: nothing written yet
    env.manager.on_message(b, Heartbeat(seq=1, state=b'{"m": 1}'))
    env.step(GATHER / 2)
    assert env.manager.states.batches == 1
    assert env.fenced_store.state["a"][1] == b'{"n": 1}' and env.fenced_store.state["b"][1] == b'{"m": 1}'


def test_a_start_shows_its_statuses_in_one_write_with_its_first_heartbeat(env: Env) -> None:
    """Starting, running and the first heartbeat come milliseconds apart: one Work write, not three.

    Written as each came, they were a fifth of what starting 100 strategies cost the worker. The
    one write before them is the adoption, which must land before anything is forked.
    """
    env.assign(interval=1.0)
    env.step(0.001)
    rid = env.hello()
    env.step(0.001)
    env.manager.on_message(rid, Ready())
    env.step(0.001)
    assert env.fenced_store.reports == 1
    env.manager.on_message(rid, Heartbeat(seq=1))
    env.step(0.001)
    assert env.fenced_store.reports == 2
    work = env.work()
    assert (work.result.status, work.result.heartbeats, work.result.pid) == ("running", 1, env.pid())


def test_a_status_change_alone_is_written_within_the_gather(env: Env) -> None:
    env.assign(interval=1.0, heartbeat_timeout=5.0)
    env.start()
    env.manager.on_message(env.slot_rid(), Heartbeat(seq=1))
    env.step(0.001)
    env.transport.exit(env.pid(), exit_code(3))
    env.step(PUBLISH_GATHER / 2)
    assert env.work().result.status == "running"
    env.step(PUBLISH_GATHER / 2)
    assert env.work().result.status == "error" and env.manager.next_deadline() > env.clocks.mono


def test_a_slow_start_shows_its_pid_within_the_start_gather(env: Env) -> None:
    env.assign(interval=1.0, heartbeat_timeout=5.0)
    env.step(0.001)
    env.hello()  # st_init runs on
    env.step(START_GATHER / 2)
    assert env.work().result.pid is None  # the adoption wrote "starting"; its pid waits for the gather
    env.step(START_GATHER / 2)
    assert env.work().result.pid == env.pid() and env.manager.next_deadline() > env.clocks.mono


def test_in_a_mass_start_a_first_heartbeat_does_not_write_the_others_starting(env: Env) -> None:
    """Each status is written when its own gather ends: one write per start, not one per pass it spans."""
    env.assign("a", interval=1.0)
    env.step(0.001)
    rid = env.start("a")
    env.assign("b", interval=1.0)
    env.step(0.001)
    env.hello("b")  # b's st_init runs on while a beats
    writes = env.fenced_store.reports
    env.manager.on_message(rid, Heartbeat(seq=1))
    env.step(0.001)
    assert env.fenced_store.reports == writes + 1 and env.work("b").result.pid is None


def test_a_mass_start_does_not_hold_back_the_running_strategies_ticks(env: Env) -> None:
    """A fork is a round trip to the zygote (3-7 ms of the loop): a mass start forks within a budget
    per pass, so the running strategies' ticks go out on time meanwhile."""
    env.assign("old", interval=0.1)
    rid = env.start("old")
    env.manager.on_message(rid, Heartbeat(seq=1, state=None))
    due = env.clocks.mono + 0.1
    env.clocks.advance(0.099)
    env.transport.fork_cost = lambda: env.clocks.advance(0.003)
    env.add(*(f"new{i}" for i in range(100)))
    sent_at: list[float] = []
    send = env.transport.send

    def spy(routing_id: bytes, msg: ToChild) -> bool:
        if routing_id == rid and isinstance(msg, Tick):
            sent_at.append(env.clocks.mono)
        return send(routing_id, msg)

    env.transport.send = spy  # type: ignore[method-assign]
    env.manager.reconcile(list(env.fenced_store.works.values()))  # one look at the store brings them all
    while not sent_at:
        env.step(0.0)
    assert sent_at[0] - due <= 0.003 + 0.003  # late by a fork or two at most
    while any(env.manager.slots[f"new{i}"].pid is None for i in range(100)):
        assert env.manager.next_deadline() <= env.clocks.mono  # forks waiting: the next pass comes at once
        env.step(0.0)
    assert env.transport.next_pid == 100 + 101  # each forked once


def test_a_fork_waiting_for_its_turn_is_dropped_when_its_strategy_stops_meanwhile(env: Env) -> None:
    env.assign("old", interval=0.1)
    env.start("old")  # its next tick comes due before a second fork would end
    env.clocks.advance(0.099)
    env.transport.fork_cost = lambda: env.clocks.advance(0.003)
    env.add("a", "b")
    env.manager.reconcile(list(env.fenced_store.works.values()))
    assert env.manager.slots["a"].pid is not None and env.manager.slots["b"].pid is None  # b waits its turn
    env.change("b", assignment=None)  # stopped while it waited
    for _ in range(3):
        env.step(0.0)
    assert env.transport.next_pid == 102 and "b" not in env.manager.slots


def test_with_nothing_else_due_a_mass_start_forks_in_one_go(env: Env) -> None:
    env.transport.fork_cost = lambda: env.clocks.advance(0.003)
    env.add(*(f"new{i}" for i in range(20)))
    env.manager.reconcile(list(env.fenced_store.works.values()))
    assert all(slot.pid is not None for slot in env.manager.slots.values()) and not env.manager.starts.forks_due


def test_each_childs_usage_goes_with_its_result_and_titles_name_the_strategy(env: Env) -> None:
    forked: list[ForkRequest] = []
    fork = env.transport.fork

    def recorded(request: ForkRequest, answer: Callable[[Forked], None], on_exit: Callable[[int], None]) -> None:
        forked.append(request)
        fork(request, answer, on_exit)

    env.transport.fork = recorded  # type: ignore[method-assign]
    env.assign(interval=1.0)
    env.start()
    slot = env.manager.slots["s"]
    assert forked[0].title == "qlab strategy s [w1]"
    slot.dirty = False
    env.manager.note_usage({env.pid(): Usage(cpu=None, memory=2.34), 1: Usage(cpu=50.0, memory=9.0)})
    assert (slot.result.cpu, slot.result.memory, slot.dirty) == (None, 2.3, True)  # a new child: no CPU yet
    slot.dirty = False
    env.manager.note_usage({env.pid(): Usage(cpu=12.345, memory=2.34)})
    assert (slot.result.cpu, slot.result.memory, slot.dirty) == (12.3, 2.3, True)
    slot.dirty = False
    env.manager.note_usage({env.pid(): Usage(cpu=12.31, memory=2.3)})
    assert not slot.dirty  # the same figures: nothing to write
    env.manager.note_usage({})  # its child is gone from the samples
    assert (slot.result.cpu, slot.result.memory) == (None, None)


def test_while_the_zygote_owes_an_answer_the_others_tick_on_and_a_failed_fork_is_retried(env: Env) -> None:
    env.assign("old", interval=0.1)
    rid = env.start("old")
    env.transport.held = []  # the zygote answers nothing for now
    env.assign("new", backoff=1.0)
    assert env.manager.slots["new"].pid is None and env.manager.starts.unanswered == 1
    for seq in range(1, 6):
        env.manager.on_message(rid, Heartbeat(seq=seq))
        env.step(0.1)
    assert [t.tick.seq for t in env.transport.of(Tick, rid)] == [1, 2, 3, 4, 5, 6]
    env.transport.answer_held(error="the zygote did not answer within 5s; it was replaced")
    last_error = env.manager.slots["new"].result.last_error
    assert env.manager.starts.unanswered == 0 and last_error is not None and "did not answer" in last_error.message
    env.transport.held = None
    env.step(1.2)  # its backoff: forked again, and answered
    assert env.manager.slots["new"].pid is not None


def test_a_fork_answered_after_its_strategy_stopped_is_killed(env: Env) -> None:
    env.transport.held = []
    env.assign("s")
    env.change("s", assignment=None)  # stopped while the zygote worked
    env.transport.answer_held()
    assert env.transport.killed == [env.transport.next_pid] and "s" not in env.manager.slots


def test_a_child_waiting_on_its_exchange_call_is_not_hung_and_its_clock_goes_on_after_the_answer(env: Env) -> None:
    """A lost order reply is looked for until no copy can land: the child waits on the worker, it is not hung."""
    env.assign(interval=1.0, heartbeat_timeout=3.0)
    rid = env.start()
    env.step(1.0)  # a second of its own into the heartbeat
    env.manager.on_message(rid, ApiCall(call_id=1, account="live", method="place_order", kwargs={}))
    for _ in range(4):
        env.step(2.0)  # 8 s waiting on the worker's answer
    assert env.transport.killed == []
    env.manager.deliver_api_result(env.manager.slots["s"].key, ApiResult(call_id=1, ok=True, result={"retCode": 0}))
    env.step(1.9)
    assert env.transport.killed == []
    env.step(0.2)  # 1 s before the call and 2.1 s after the answer
    assert env.transport.killed == [env.pid()]
    env.transport.exit(env.pid(), KILLED)
    assert "hung: no heartbeat for 3s" in env.manager.slots["s"].result.reason


def test_a_child_whose_call_goes_unanswered_past_the_calls_patience_is_hung(env: Env) -> None:
    env.assign(interval=1.0, heartbeat_timeout=3.0)
    rid = env.start()
    env.manager.on_message(rid, ApiCall(call_id=1, account="live", method="place_order", kwargs={}))
    env.step(CALL_PATIENCE - 1.0)
    assert env.transport.killed == []
    env.step(1.5)
    assert env.transport.killed == [env.pid()]


def test_a_child_that_keeps_calling_still_has_its_own_time_counted(env: Env) -> None:
    """Only the time spent waiting on answers stands still: a loop of quick calls is hung all the same."""
    env.assign(interval=1.0, heartbeat_timeout=3.0)
    rid = env.start()
    key = env.manager.slots["s"].key
    for n in range(1, 10):  # 4.5 s, 0.9 of them waiting on answers
        env.manager.on_message(rid, ApiCall(call_id=n, account="live", method="get_tickers", kwargs={}))
        env.step(0.1)
        env.manager.deliver_api_result(key, ApiResult(call_id=n, ok=True, result={"retCode": 0}))
        env.step(0.4)
    assert env.transport.killed == [env.pid()]
