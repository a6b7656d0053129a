"""The StrategyManager over the real store and the real API pool.

test_manager.py steps the manager with a scripted store and a scripted API.
Here the FencedStore is the real one over the in-memory store, and every
exchange call and reconciliation runs on the real ApiPool with the paper
account, fenced as a worker fences them; only the children are scripted
(test_manager.FakeTransport: they connect, answer and exit when told).
"""

from __future__ import annotations

import logging
import queue
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import msgspec
import pytest

from quantlab.config import Paths
from quantlab.exchange.accounts import default_paper_account
from quantlab.exchange.apipool import ApiPool, Caller
from quantlab.exchange.paper import BLOB_KIND, _decode_state
from quantlab.exchange.reconcile import Reconciled, Request
from quantlab.exchange.signing import Fence
from quantlab.protocol import ApiCall, ApiResult, Hello, Init, Ready
from quantlab.store.fenced import FencedStore
from quantlab.store.memstore import MemoryStore
from quantlab.store.records import Assignment, StrategySpec, Work
from quantlab.worker.manager import StrategyManager
from tests.conftest import wait_for
from tests.unit.test_manager import FakeTransport, exit_code

T = TypeVar("T")
ORDER = {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": "0.001",
         "price": "1000"}


class PoolTransport(FakeTransport):
    """Scripted children; exchange calls and reconciliations on the real pool, answered on the test's thread."""

    def __init__(self, pool: ApiPool) -> None:
        super().__init__()
        self.pool = pool
        self.answers: queue.Queue[Callable[[], None]] = queue.Queue()  #: what the worker's loop would run next
        self.deliver: Callable[[bytes, ApiResult], None] = lambda key, result: None

    def submit_api(self, key: bytes, call: ApiCall, allowed: list[str], fence: Fence, caller: Caller) -> None:
        super().submit_api(key, call, allowed, fence, caller)
        self.pool.submit(call, allowed, lambda result: self.answers.put(lambda: self.deliver(key, result)), fence,
                         caller)

    def reconcile(self, request: Request, fence: Fence, done: Callable[[Reconciled], None]) -> None:
        super().reconcile(request, fence, done)
        self.pool.reconcile(request, fence, lambda result: self.answers.put(lambda: done(result)))


class PoolEnv:
    def __init__(self, tmp_path: Path) -> None:
        self.store = MemoryStore()
        self.pool = ApiPool([default_paper_account()], self.store, worker="w1", instance="w1-1-test")
        self.transport = PoolTransport(self.pool)
        self.manager = StrategyManager(
            worker_id="w1", fenced_store=FencedStore(self.store), transport=self.transport, paths=Paths(tmp_path),
            log=logging.getLogger("test"), rng=random.Random(1), phase=lambda _: None,
        )
        self.transport.deliver = self.manager.deliver_api_result
        self.manager.set_lease(time.monotonic() + 60)

    def assign(self, work_id: str = "s") -> None:
        self.store.add_work(Work(id=work_id, spec=StrategySpec(file="/s.py", accounts=["paper"], interval=0.05),
                                 assignment=Assignment(worker="w1", epoch=1), epoch=1))
        self.manager.reconcile(self.store.list_works())

    def until(self, what: str, check: Callable[[], T | None], timeout: float = 10.0) -> T:
        """Run the worker loop's passes (supervise, then what the pool answered) until ``check`` holds."""
        deadline = time.monotonic() + timeout
        while (found := check()) is None or found is False:
            assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
            self.manager.supervise()
            try:
                self.transport.answers.get(timeout=0.01)()
            except queue.Empty:
                pass
        return found

    def start(self, work_id: str = "s") -> bytes:
        """Fork (once reconciled on the pool), Hello, Init, Ready: the child running."""
        pid = self.until("the fork", lambda: self.manager.slots[work_id].pid)
        rid = f"peer-{work_id}-{pid}".encode()
        self.transport.connected.add(rid)
        self.manager.on_message(rid, Hello(pid=pid, token=self.transport.tokens[pid]))
        self.manager.on_message(rid, Ready())
        return rid

    def call(self, rid: bytes, call_id: int, method: str, kwargs: dict[str, Any]) -> ApiResult:
        """The child's exchange call, and the answer the worker sends back to it."""
        self.manager.on_message(rid, ApiCall(call_id=call_id, account="paper", method=method, kwargs=kwargs))
        return self.until(f"the answer to call {call_id}", lambda: next(
            (r for r in self.transport.of(ApiResult, rid) if r.call_id == call_id), None))

    def paper_orders(self) -> list[str]:
        raw = self.store.get_blob(BLOB_KIND, "paper")
        state = _decode_state(raw) if raw is not None else None
        return [] if state is None else [o.link_id for o in [*state.open, *state.closed]]

    def close(self) -> None:
        self.pool.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[PoolEnv]:
    env = PoolEnv(tmp_path)
    yield env
    env.close()


def test_an_order_from_a_slot_moved_away_a_moment_ago_is_refused_where_it_is_signed(env: PoolEnv) -> None:
    """The store raised the epoch; the manager has not heard yet; the pool's fence reads the store."""
    env.assign()
    rid = env.start()
    assert env.call(rid, 1, "place_order", ORDER).ok
    env.store.update_work("s", lambda w: msgspec.structs.replace(
        w, epoch=2, assignment=Assignment(worker="w2", epoch=2)))
    refused = env.call(rid, 2, "place_order", ORDER)
    assert (refused.ok, refused.kind) == (False, "permission") and "strategy moved" in refused.error, refused
    assert env.paper_orders() == ["s-1-1"]


def test_a_lapsed_lease_refuses_the_next_order_on_the_pool(env: PoolEnv) -> None:
    env.assign()
    rid = env.start()
    until = time.monotonic() + 0.1
    env.manager.set_lease(until)
    wait_for(lambda: time.monotonic() > until, what="the lease to run out on the clock the pool's fence reads")
    refused = env.call(rid, 1, "place_order", ORDER)
    assert (refused.ok, refused.kind) == (False, "permission"), refused
    assert env.paper_orders() == []


def test_a_restart_after_a_crash_reconciles_on_the_pool_and_hands_the_order_to_init(env: PoolEnv) -> None:
    env.assign()
    rid = env.start()
    placed = env.call(rid, 1, "place_order", ORDER)
    assert placed.ok, placed
    first = env.manager.slots["s"].pid
    assert first is not None
    env.transport.exit(first, exit_code(1))
    env.until("the restart's reconciliation", lambda: len(env.transport.reconciles) == 2, timeout=15)
    env.start()
    inits = env.transport.of(Init)
    assert [[o["orderLinkId"] for o in init.open_orders] for init in inits] == [[], ["s-1-1"]]
    env.until("the restart counted in the store", lambda: env.store.get_work("s").result.restarts == 1)
