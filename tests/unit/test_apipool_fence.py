"""ApiPool: per-account queues, deadlines, and fencing at send time (real pybit against the fake Bybit)."""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import pytest

from quantlab.exchange.accounts import default_paper_account
from quantlab.exchange.apipool import ApiPool
from quantlab.exchange.signing import SEND_MARGIN
from quantlab.protocol import ApiCall
from tests.fakes.bybit import FakeBybit
from tests.unit.test_apipool import (  # noqa: F401  (fixtures)
    ALL, FOREVER, KEY, SECRET, Done, MakePool, account, fake, make_pool, order, signed,
)

CREATE = "/v5/order/create"
BOTH = ("busy", "idle")


def lease(seconds: float) -> Callable[[], float]:
    """A fence whose lease ends ``seconds`` from now (monotonic, as the worker's)."""
    until = time.monotonic() + seconds
    return lambda: until


def submit_orders(pool: ApiPool, count: int, fence: object, name: str = "main") -> list[Done]:
    done = [Done() for _ in range(count)]
    for i, callback in enumerate(done):
        call = ApiCall(call_id=i, account=name, method="place_order", kwargs=order(f"q-{i}"))
        pool.submit(call, ALL, callback, fence)  # type: ignore[arg-type]
    return done


def idle_latency(pool: ApiPool, samples: int = 5) -> list[float]:
    """Seconds from submit to answer of calls on the idle account."""
    latencies = []
    for i in range(samples):
        done = Done()
        started = time.monotonic()
        pool.submit(ApiCall(call_id=100 + i, account="idle", method="get_server_time", kwargs={}), BOTH, done)
        assert done.event.wait(10)
        latencies.append(time.monotonic() - started)
        assert done.results[0].ok
    return latencies


def test_a_busy_account_at_its_limit_never_delays_an_idle_one(fake: FakeBybit, make_pool: MakePool) -> None:
    """A rate-limit wait holds back only its own account: waits slept in threads every account shared (an idle call took 12 s)."""
    fake.add_key(KEY, SECRET)
    pool = make_pool([account(fake, "busy", rate_limit=2.0), account(fake, "idle", rate_limit=1000.0)], threads=4)
    busy = [Done() for _ in range(12)]  # 2 at once, then one every 0.5 s: 5 s of queue
    for i, callback in enumerate(busy):
        pool.submit(ApiCall(call_id=i, account="busy", method="get_server_time", kwargs={}), BOTH, callback)
    assert fake.wait_requests(2)
    latencies = idle_latency(pool)
    print(f"idle account's call while another waits for its limit: median {statistics.median(latencies) * 1000:.2f} ms")
    assert max(latencies) < 0.5, latencies  # generous for a loaded 2-core machine; typically ~1 ms
    assert sum(d.event.is_set() for d in busy) < 12  # the busy account was still queueing meanwhile


def test_a_fenced_call_queued_past_its_lease_never_leaves(fake: FakeBybit, make_pool: MakePool) -> None:
    """The lease is checked as a queued order leaves, not only on arrival: checked once, queued orders went out after it ran out."""
    fake.add_key(KEY, SECRET)
    pool = make_pool([account(fake, rate_limit=2.0)])
    fence = lease(1.0)
    done = submit_orders(pool, 8, fence)  # turns at 0, 0, 0.5, 1.0, 1.5 ... s: most after the lease
    assert all(d.event.wait(10) for d in done)
    results = [d.results[0] for d in done]
    sent = [r for r in fake.requests if r.path == CREATE]
    assert all(r.arrived < fence() - SEND_MARGIN for r in sent), "an order arrived after its lease"
    assert fake.accepted(CREATE) == sum(r.ok for r in results) >= 1
    refused = [r for r in results if not r.ok]
    assert len(refused) >= 4 and all(r.kind == "permission" and "lease" in r.error for r in refused), refused


def test_a_request_held_past_the_lease_is_refused_by_the_exchange(fake: FakeBybit, make_pool: MakePool) -> None:
    """A request signed in time but delayed past the lease must not be carried out."""
    fake.add_key(KEY, SECRET)
    pool = make_pool([account(fake, timeout=5.0)])
    assert pool.call("main", "place_order", order("warm"), ALL, FOREVER).ok  # the clock offset is measured
    fake.hold_delay = 1.2
    fake.inject("hold")  # the network holds the next request past the lease
    result = pool.call("main", "place_order", order("held"), ALL, lease(1.0))
    held = [r for r in fake.requests if r.path == CREATE][-1]
    assert held.recv_window is not None and held.recv_window <= (1.0 - SEND_MARGIN) * 1000
    assert fake.outcomes(CREATE) == [0, 10002], "the exchange itself refused the late request"
    assert (result.ok, result.kind) == (False, "permission")  # pybit's retry was re-signed, and fenced
    # The same hold with a lease that outlasts it: the window is pybit's 5 s and the order goes through.
    fake.inject("hold")
    assert pool.call("main", "place_order", order("held-2"), ALL, FOREVER).ok


@pytest.mark.parametrize("skew_ms", [30_000, -30_000])
def test_requests_are_signed_with_the_exchanges_time_so_a_clock_offset_costs_no_window(
        fake: FakeBybit, make_pool: MakePool, skew_ms: int) -> None:
    fake.add_key(KEY, SECRET)
    fake.set_ticker("BTCUSDT", 50_000.0)
    fake.skew_ms = skew_ms  # the exchange's clock runs 30 s ahead of ours, or behind
    pool = make_pool([account(fake)])
    assert pool.call("main", "place_order", order(), ALL, lease(2.0)).ok
    window = [r for r in fake.requests if r.path == CREATE][-1].recv_window
    assert window is not None and 1500 < window <= (2.0 - SEND_MARGIN) * 1000
    assert pool.call("main", "get_wallet_balance", {"accountType": "UNIFIED"}, ALL).ok  # signed the same way


def test_writes_need_a_fence_and_reads_do_not(fake: FakeBybit, make_pool: MakePool) -> None:
    fake.add_key(KEY, SECRET)
    fake.set_ticker("BTCUSDT", 50_000.0)
    pool = make_pool([account(fake)])
    unfenced = pool.call("main", "cancel_all_orders", {"category": "linear"}, ALL)
    assert (unfenced.ok, unfenced.kind) == (False, "permission") and signed(fake) == []
    expired = pool.call("main", "cancel_all_orders", {"category": "linear"}, ALL, lambda: -math.inf)
    assert (expired.ok, expired.kind) == (False, "permission") and signed(fake) == []
    assert pool.call("main", "get_tickers", {"category": "linear"}, ALL, lambda: -math.inf).ok


def test_a_paper_order_is_fenced_too(make_pool: MakePool) -> None:
    pool = make_pool([default_paper_account()])
    kwargs = {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "0.01"}
    refused = pool.call("paper", "place_order", kwargs, ["paper"], lease(SEND_MARGIN / 2))
    assert (refused.ok, refused.kind) == (False, "permission")
    assert pool.call("paper", "place_order", kwargs, ["paper"], lease(5.0)).ok


def test_a_call_that_cannot_start_before_its_deadline_is_refused_unsent(
    fake: FakeBybit, make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import quantlab.exchange.apipool as apipool

    monkeypatch.setattr(apipool, "CALL_DEADLINE", 0.3)
    fake.add_key(KEY, SECRET)
    pool = make_pool([account(fake, rate_limit=1.0)])
    done = [Done() for _ in range(3)]  # turns at 0, 1, 2 s: only the first fits its deadline
    for i, callback in enumerate(done):
        pool.submit(ApiCall(call_id=i, account="main", method="get_server_time", kwargs={}), ALL, callback)
    assert all(d.event.wait(5) for d in done)
    assert [d.results[0].ok for d in done] == [True, False, False]
    assert [d.results[0].ret_code for d in done[1:]] == [10006, 10006]
    assert len(fake.requests) == 1
