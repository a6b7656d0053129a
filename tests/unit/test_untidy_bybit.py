"""The order path against the untidy fake Bybit: late lists, lagging history, pages, partial fills,
batches, orderLinkId checks and enforced rate limits, with the real pybit client."""

from __future__ import annotations

import contextlib
import functools
import math
import queue
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from pybit.exceptions import InvalidRequestError
from pybit.unified_trading import HTTP

from quantlab.exchange import intents, orders, reconcile
from quantlab.exchange.apipool import ApiPool, Caller
from quantlab.exchange.risk import RiskLimits
from quantlab.exchange.signing import Stamp
from quantlab.store.filestore import FileStore
from quantlab.store.store import Store
from tests.conftest import wait_for
from tests.fakes.bybit import FakeBybit
from tests.fakes.bybit_limits import DEFAULT_LIMITS, Untidy
from tests.unit.test_apipool import KEY, SECRET, account

CREATE = "/v5/order/create"
S1 = Caller("s1", 3)
LINEAR_USDT = {"category": "linear", "settleCoin": "USDT"}


def forever() -> float:
    return math.inf


def limit_order(**extra: Any) -> dict[str, Any]:
    return {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": "0.01",
            "price": "40000", **extra}


def market_order(**extra: Any) -> dict[str, Any]:
    return {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "0.01", **extra}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return FileStore(tmp_path / "store")


@pytest.fixture
def untidy(store: Store) -> Iterator[Callable[..., tuple[FakeBybit, ApiPool]]]:
    """``untidy(settings..., account settings...)``: an untidy fake and a pool with one live account on it."""
    with contextlib.ExitStack() as stack:

        def make(max_retries: int = 1, max_open_orders: int | None = None,
                 **settings: Any) -> tuple[FakeBybit, ApiPool]:
            fake = stack.enter_context(FakeBybit(untidy=Untidy(**settings)))
            fake.add_key(KEY, SECRET)
            fake.set_ticker("BTCUSDT", 50_000.0)
            pool = ApiPool([account(fake, timeout=0.5, max_retries=max_retries, max_open_orders=max_open_orders)],
                           store, instance="me")
            stack.callback(pool.close)
            # A first fenced call measures the clock offset: the faults a test injects then meet its order.
            assert pool.call("main", "cancel_all_orders", dict(LINEAR_USDT), ["main"], forever).ok
            return fake, pool

        yield make


def listed(pool: ApiPool) -> list[dict[str, Any]]:
    return orders.open_orders(functools.partial(pool.read, "main"), LINEAR_USDT)


def reconciled(pool: ApiPool, caller: Caller, cancel_stale: bool = False) -> reconcile.Reconciled:
    request = reconcile.Request(strategy=caller.strategy, epoch=caller.epoch, accounts=["main"],
                                cancel_stale=cancel_stale)
    return reconcile.reconcile(pool, pool._store, request, forever)


def test_the_untidy_fake_fills_in_parts_and_pages_history_and_executions(
        untidy: Callable[..., tuple[FakeBybit, ApiPool]]) -> None:
    fake, _pool = untidy(history_lag=0.0, page_size=1)
    client = other_process(fake)
    client.place_order(**market_order(orderLinkId="m-1"))
    client.place_order(**limit_order(orderLinkId="l-1"))
    fake.fill("l-1", 0.004)

    def pages(method: Callable[..., Any]) -> list[dict[str, Any]]:
        """Every row of a list, page by page, as quantlab reads one (the method named by pybit's)."""
        return orders.all_pages(lambda _name, query: method(**query), "", {"category": "linear"}, 50)

    assert [(e["orderLinkId"], e["execQty"]) for e in pages(client.get_executions)] == [
        ("m-1", "0.005"), ("m-1", "0.005"), ("l-1", "0.004")]
    assert sorted((o["orderLinkId"], o["orderStatus"], o["cumExecQty"], o["leavesQty"])
                  for o in pages(client.get_order_history)) == [
        ("l-1", "PartiallyFilled", "0.004", "0.006"), ("m-1", "Filled", "0.01", "0.0")]


def test_a_lost_market_order_only_the_lagging_history_shows_is_found_not_settled_absent(
        untidy: Callable[..., tuple[FakeBybit, ApiPool]], store: Store) -> None:
    """A filled market order is in the order history only, which lags past the end of the order's window."""
    fake, pool = untidy(history_lag=2.0)
    fake.inject("ack_lost", path=CREATE)
    lease_end = time.monotonic() + 0.6  # a window of about 0.35 s: it closes before the history shows the order
    result = pool.call("main", "place_order", market_order(), ["main"], lambda: lease_end, S1)
    assert result.ok, result
    assert fake.accepted(CREATE) == 1 and len([r for r in fake.requests if r.path == CREATE]) == 1
    taken = fake.orders()[0]
    assert (taken["orderStatus"], taken["cumExecQty"]) == ("Filled", "0.01")
    assert [(i.status, i.order_id) for i in intents.read(store, "s1").settled] == [("placed", taken["orderId"])]


def test_reconciliation_settles_another_processs_order_as_absent_only_once_the_history_would_show_it(
        untidy: Callable[..., tuple[FakeBybit, ApiPool]], store: Store) -> None:
    fake, pool = untidy(history_lag=1.0)
    # A worker killed with a market order on the wire, which the exchange took at the end of its window.
    closed = pool.exchange_passed_ms("main") - 1600
    intents.begin(store, "s1", 3, "dead-worker", "main", [market_order()], expires=time.time() - 1,
                  stamp=Stamp(signed=closed, recv_window=500))
    assert other_process(fake).place_order(**market_order(orderLinkId="s1-3-1"))["retCode"] == 0
    first = reconciled(pool, S1)
    assert not first.ok and "may list it" in first.error, first
    found = wait_for(lambda: (r := reconciled(pool, S1)).ok and r, what="the order settled")
    assert found.settled == {"s1-3-1": "placed"}


def test_reconciliation_lists_every_position_over_several_pages(
        untidy: Callable[..., tuple[FakeBybit, ApiPool]]) -> None:
    fake, pool = untidy(page_size=2)
    for symbol, size in (("BTCUSDT", 0.5), ("ETHUSDT", -2.0), ("SOLUSDT", 10.0)):
        fake.set_position("linear", symbol, size)
    found = reconciled(pool, S1)
    assert found.ok, found.error
    assert sorted((p["symbol"], p["side"]) for p in found.positions) == [
        ("BTCUSDT", "Buy"), ("ETHUSDT", "Sell"), ("SOLUSDT", "Buy")]


def test_a_strategys_open_order_limit_counts_orders_the_exchange_does_not_list_yet(
        untidy: Callable[..., tuple[FakeBybit, ApiPool]]) -> None:
    fake, pool = untidy(open_lag=0.5, page_size=2)
    few = Caller("few", 1, RiskLimits(max_open_orders=3))
    results = [pool.call("main", "place_order", limit_order(), ["main"], forever, few) for _ in range(4)]
    assert [r.ok for r in results] == [True, True, True, False], results
    assert "strategy few has 3 open order(s)" in results[3].error
    wait_for(lambda: len(listed(pool)) == 3, what="the orders listed, over two pages")
    again = pool.call("main", "place_order", limit_order(), ["main"], forever, few)
    assert again.kind == "risk" and "strategy few has 3 open order(s)" in again.error
    assert len(fake.orders()) == 3


def test_an_accounts_open_order_limit_counts_orders_the_exchange_does_not_list_yet(
        untidy: Callable[..., tuple[FakeBybit, ApiPool]]) -> None:
    fake, pool = untidy(open_lag=0.5, max_open_orders=2)
    callers = [Caller("a", 1), Caller("b", 1), Caller("a", 1)]
    results = [pool.call("main", "place_order", limit_order(), ["main"], forever, c) for c in callers]
    assert [r.ok for r in results] == [True, True, False], results
    assert "account main has 2 open order(s)" in results[2].error
    wait_for(lambda: len(listed(pool)) == 2, what="the orders listed")
    assert not pool.call("main", "place_order", limit_order(), ["main"], forever, Caller("b", 1)).ok
    assert len(fake.orders()) == 2


def test_stale_orders_are_cancelled_partly_filled_over_several_pages_and_before_they_are_listed(
        untidy: Callable[..., tuple[FakeBybit, ApiPool]]) -> None:
    fake, pool = untidy(open_lag=0.5, page_size=2)
    before = Caller("s1", 2)
    assert all(pool.call("main", "place_order", limit_order(), ["main"], forever, before).ok for _ in range(3))
    fake.fill("s1-2-1", 0.004)
    first = reconciled(pool, S1, cancel_stale=True)
    assert not first.ok and "does not list it yet" in first.error, first
    found = wait_for(lambda: (r := reconciled(pool, S1, cancel_stale=True)).ok and r, what="the start")
    assert sorted(found.stale) == sorted(found.cancelled) == ["s1-2-1", "s1-2-2", "s1-2-3"]
    assert sorted((o["orderLinkId"], o["orderStatus"], o["cumExecQty"]) for o in fake.orders()) == [
        ("s1-2-1", "Cancelled", "0.004"), ("s1-2-2", "Cancelled", "0"), ("s1-2-3", "Cancelled", "0")]


def test_a_halts_cancel_of_a_strategys_orders_cancels_those_not_listed_yet(
        untidy: Callable[..., tuple[FakeBybit, ApiPool]]) -> None:
    fake, pool = untidy(open_lag=0.5)
    assert all(pool.call("main", "place_order", limit_order(), ["main"], forever, S1).ok for _ in range(2))
    answers: queue.Queue[tuple[int, str]] = queue.Queue()
    pool.cancel_orders(["main"], "s1", forever, lambda cancelled, error: answers.put((cancelled, error)))
    assert answers.get(timeout=10) == (2, "")
    assert [o["orderStatus"] for o in fake.orders()] == ["Cancelled", "Cancelled"]


def other_process(fake: FakeBybit) -> HTTP:
    """A pybit client of the same account that is not quantlab's (another worker, a person)."""
    session = HTTP(api_key=KEY, api_secret=SECRET)
    session.endpoint = fake.url
    session.client.trust_env = False
    return session


def test_batches_answer_each_order_and_each_intent_settles_by_its_own_code(
        untidy: Callable[..., tuple[FakeBybit, ApiPool]], store: Store) -> None:
    fake, pool = untidy()
    assert other_process(fake).place_order(**limit_order(orderLinkId="by-hand"))["retCode"] == 0
    good = {k: v for k, v in limit_order().items() if k != "category"}
    batch = pool.call("main", "place_batch_order", {"category": "linear", "request": [
        good, {**good, "orderLinkId": "by-hand"}]}, ["main"], forever, S1)
    assert batch.ok, batch
    assert [c["code"] for c in batch.result["retExtInfo"]["list"]] == [0, 110072]
    assert [(i.link_id, i.status) for i in intents.read(store, "s1").settled] == [
        ("s1-3-1", "placed"), ("by-hand", "rejected")]
    amend = pool.call("main", "amend_batch_order", {"category": "linear", "request": [
        {"symbol": "BTCUSDT", "orderLinkId": "s1-3-1", "qty": "0.02"}]}, ["main"], forever, S1)
    cancel = pool.call("main", "cancel_batch_order", {"category": "linear", "request": [
        {"symbol": "BTCUSDT", "orderLinkId": "s1-3-1"}]}, ["main"], forever, S1)
    assert [c["code"] for r in (amend, cancel) for c in r.result["retExtInfo"]["list"]] == [0, 0], (amend, cancel)
    mine = [(o["qty"], o["orderStatus"]) for o in fake.orders() if o["orderLinkId"] == "s1-3-1"]
    assert mine == [("0.02", "Cancelled")]


@pytest.mark.parametrize("link_id", ["x" * 37, "has/slash", "has space"])
def test_an_order_link_id_bybit_refuses_is_refused_unsent_as_the_exchange_would(
        untidy: Callable[..., tuple[FakeBybit, ApiPool]], store: Store, link_id: str) -> None:
    fake, pool = untidy()
    result = pool.call("main", "place_order", limit_order(orderLinkId=link_id), ["main"], forever, S1)
    assert (result.ok, result.ret_code) == (False, 10001) and "nothing was sent" in result.error, result
    assert intents.read(store, "s1") == intents.IntentLog()
    with pytest.raises(InvalidRequestError) as refused:
        other_process(fake).place_order(**limit_order(orderLinkId=link_id))
    assert refused.value.status_code == 10001 and fake.orders() == []


def test_an_endpoint_groups_rate_limit_pauses_the_account_before_the_exchange_refuses(
        untidy: Callable[..., tuple[FakeBybit, ApiPool]]) -> None:
    fake, pool = untidy(limits={**DEFAULT_LIMITS, "order": 3})
    started = time.monotonic()
    results = [pool.call("main", "place_order", limit_order(), ["main"], forever, S1) for _ in range(4)]
    assert all(r.ok for r in results), results
    assert fake.outcomes(CREATE) == [0] * 4  # X-Bapi-Limit-Status 0 paused the account: no 10006 met
    assert time.monotonic() - started >= 0.5  # 5 order calls at 3 a second span two windows


def test_an_order_is_cancelled_by_its_order_id_before_the_exchange_lists_it(
        untidy: Callable[..., tuple[FakeBybit, ApiPool]]) -> None:
    fake, pool = untidy(open_lag=1.0)
    placed = pool.call("main", "place_order", limit_order(), ["main"], forever, S1)
    assert placed.ok, placed
    cancel = pool.call("main", "cancel_order", {"category": "linear", "symbol": "BTCUSDT",
                                                "orderId": placed.result["result"]["orderId"]}, ["main"], forever, S1)
    assert cancel.ok, cancel
    assert [o["orderStatus"] for o in fake.orders()] == ["Cancelled"]


def test_an_amend_by_order_id_a_limit_judges_waits_for_the_exchange_to_list_the_order(
        untidy: Callable[..., tuple[FakeBybit, ApiPool]]) -> None:
    fake, pool = untidy(open_lag=1.0)
    judged = Caller("s1", 3, RiskLimits(max_order_notional=1000.0))
    placed = pool.call("main", "place_order", limit_order(), ["main"], forever, judged)
    assert placed.ok, placed
    order_id = placed.result["result"]["orderId"]
    amend = {"category": "linear", "symbol": "BTCUSDT", "orderId": order_id}
    assert pool.call("main", "amend_order", {**amend, "qty": "0.02"}, ["main"], forever, judged).ok
    too_big = pool.call("main", "amend_order", {**amend, "qty": "1"}, ["main"], forever, judged)
    assert too_big.kind == "risk", too_big
    assert [(o["qty"], o["orderStatus"]) for o in fake.orders()] == [("0.02", "New")]


def test_an_amend_of_another_strategys_order_by_its_order_id_is_refused_even_before_it_is_listed(
        untidy: Callable[..., tuple[FakeBybit, ApiPool]]) -> None:
    fake, pool = untidy(open_lag=1.0)
    placed = pool.call("main", "place_order", limit_order(), ["main"], forever, Caller("other", 1))
    assert placed.ok, placed
    amend = pool.call("main", "amend_order", {"category": "linear", "symbol": "BTCUSDT", "qty": "0.02",
                                             "orderId": placed.result["result"]["orderId"]}, ["main"], forever, S1)
    assert not amend.ok and amend.kind in ("permission", "api"), amend
    assert [o["qty"] for o in fake.orders()] == ["0.01"]


def test_a_list_longer_than_quantlab_reads_refuses_the_start_and_the_counted_order_not_part_of_it(
        untidy: Callable[..., tuple[FakeBybit, ApiPool]]) -> None:
    fake, pool = untidy(page_size=1, open_lag=0.0, max_open_orders=50, limits={**DEFAULT_LIMITS, "order": 100})
    client = other_process(fake)
    for n in range(orders.MAX_PAGES + 1):
        client.place_order(**limit_order(orderLinkId=f"by-hand-{n}"))
    start = reconciled(pool, S1)
    assert not start.ok and "more than 20 rows (20 pages)" in start.error, start
    counted = pool.call("main", "place_order", limit_order(), ["main"], forever, S1)
    assert (counted.ok, counted.kind) == (False, "api") and "more than 20 rows" in counted.error, counted
    assert len(fake.orders()) == orders.MAX_PAGES + 1
