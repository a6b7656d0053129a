"""``wctx``'s public names (docs/worker-hooks.md), on a real StrategyManager stepped with fakes.

tests/integration/test_worker_hooks.py runs the same names in a real worker, through
workers/hooks_example.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import msgspec
import pytest

from quantlab.protocol import Message, Ready
from quantlab.store.fenced import FencedStore
from quantlab.store.memstore import MemoryStore
from quantlab.store.records import Assignment, Load, Resource, StrategySpec, Work, WorkerSpec, WorkerState
from quantlab.worker.context import PUBLIC, WorkerContext, WorkerIdentity
from quantlab.worker.options import WorkerOptions
from tests.unit.test_manager import T0, Env


class Accounts:
    names = ["paper", "main"]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def wctx(env: Env, store: MemoryStore) -> Iterator[WorkerContext]:
    resource = Resource(id="w1", spec=WorkerSpec(name="w1", region="JP", host="h1", pid=1, instance="i1"))
    store.update_resource("w1", lambda current: resource)
    context = WorkerContext(
        worker=WorkerIdentity(id="w1", name="w1", region="JP", host="h1"),
        options=WorkerOptions(id="w1", region="JP", max_strategies=7),
        resource=resource,
        fenced_store=FencedStore(store),
        apis=Accounts(),  # type: ignore[arg-type]
        manager=env.manager,
        log=logging.getLogger("test.wctx"),
        run_until=lambda done, timeout, every: None,
        view=None,  # type: ignore[arg-type]
    )
    yield context
    context.meter.close()


def _messages(env: Env, work_id: str) -> list[Any]:
    return [m.data for m in env.transport.of(Message, env.slot_rid(work_id))]


def test_every_public_name_is_there(wctx: WorkerContext) -> None:
    for name in PUBLIC:
        getattr(wctx, name)


def test_worker_options_and_apis_say_who_it_is(wctx: WorkerContext) -> None:
    assert (wctx.worker.id, wctx.worker.name, wctx.worker.region, wctx.worker.host) == ("w1", "w1", "JP", "h1")
    assert wctx.options.max_strategies == 7
    assert wctx.apis.names == ["paper", "main"]
    assert wctx.log.name == "test.wctx"


def test_state_is_the_registration_as_last_renewed(wctx: WorkerContext) -> None:
    """Each renewal replaces the resource's state with a new record: wctx.state follows it."""
    renewed = WorkerState(status="busy", load=Load(cpu=12.5, memory=30.0, running_strategies=2), last_seen=5.0)
    assert wctx.pool.update_resource_state(wctx.resource, renewed)
    assert wctx.state.status == "busy" and wctx.state.load.running_strategies == 2
    again = msgspec.structs.replace(renewed, status="idle", load=Load())
    assert wctx.pool.update_resource_state(wctx.resource, again)
    assert wctx.state.status == "idle" and wctx.state.load.cpu == 0.0


def test_strategies_show_status_pid_last_heartbeat_and_errors(env: Env, wctx: WorkerContext) -> None:
    env.assign("s")
    assert wctx.strategies["s"].status == "starting" and wctx.strategies["s"].error_count == 0
    env.start("s")
    strategy = wctx.strategies["s"]
    assert strategy.status == "running" and strategy.pid == env.pid("s") and strategy.last_heartbeat is None


def test_pool_reads_works_and_what_is_assigned_to_a_worker(wctx: WorkerContext, store: MemoryStore) -> None:
    for work_id, worker in (("a", "w1"), ("b", "w2")):
        store.add_work(Work(id=work_id, spec=StrategySpec(file="/s.py", params={"k": 1}),
                            assignment=Assignment(worker=worker, epoch=1)))
    got = wctx.pool.get_work("a")
    assert got is not None and got.spec.params == {"k": 1}
    assert wctx.pool.get_work("nope") is None
    assert [w.id for w in wctx.pool.get_assigned_works("w1")] == ["a"]
    assert wctx.fenced_store is wctx.pool


def test_send_to_strategy_delivers_only_to_a_running_strategy(env: Env, wctx: WorkerContext) -> None:
    assert not wctx.send_to_strategy("nope", {"x": 1})  # not on this worker
    env.assign("s")
    env.hello("s")
    assert not wctx.send_to_strategy("s", {"x": 1})  # connected, st_init not returned yet
    env.manager.on_message(env.slot_rid("s"), Ready())
    assert wctx.send_to_strategy("s", {"x": 2})
    assert _messages(env, "s") == [{"x": 2}]


def test_send_to_strategy_refuses_once_the_lease_is_in_doubt(env: Env, wctx: WorkerContext) -> None:
    env.assign("s")
    env.start("s")
    env.manager.set_lease(T0 - 1.0)
    assert not wctx.send_to_strategy("s", {"late": True})
    assert _messages(env, "s") == []


def test_broadcast_reaches_every_running_strategy_and_counts_them(env: Env, wctx: WorkerContext) -> None:
    assert wctx.broadcast_to_all({"x": 0}) == 0
    for work_id in ("a", "b", "c"):
        env.assign(work_id)
    env.start("a")
    env.start("b")  # c is still starting
    assert wctx.broadcast_to_all({"beat": 1}) == 2
    assert _messages(env, "a") == _messages(env, "b") == [{"beat": 1}]
