"""Orders through the API pool: orderLinkIds, intents, lost replies, risk limits, reconciliation.

The real pybit client against the fake Bybit server, and the paper account.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from hypothesis import given, strategies as st

from quantlab.exchange import intents, orderids, reconcile
from quantlab.exchange.accounts import Account, default_paper_account
from quantlab.exchange.apipool import ApiPool, Caller
from quantlab.exchange.risk import RISK_REFUSED, RiskLimits
from quantlab.store.filestore import FileStore
from quantlab.store.store import Store
from tests.conftest import wait_for
from tests.fakes.bybit import FakeBybit, fake_bybit
from tests.unit.test_apipool import KEY, SECRET, account

fake = pytest.fixture(fake_bybit, name="fake")
CREATE = "/v5/order/create"


def forever() -> float:
    return math.inf


def lease(seconds: float) -> Callable[[], float]:
    until = time.monotonic() + seconds
    return lambda: until


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return FileStore(tmp_path / "store")


@pytest.fixture
def make_pool(store: Store) -> Iterator[Callable[..., ApiPool]]:
    pools: list[ApiPool] = []

    def make(accounts: list[Account], instance: str = "me") -> ApiPool:
        pools.append(ApiPool(accounts, store, instance=instance))
        return pools[-1]

    yield make
    for pool in pools:
        pool.close()


@pytest.fixture
def live(fake: FakeBybit, make_pool: Callable[..., ApiPool]) -> ApiPool:
    fake.add_key(KEY, SECRET)
    fake.set_ticker("BTCUSDT", 50_000.0)
    pool = make_pool([account(fake, timeout=0.5, max_retries=1)])
    # A first fenced call measures the clock offset: the faults a test injects then meet its order.
    assert pool.call("main", "cancel_all_orders", {"category": "linear", "settleCoin": "USDT"}, ["main"], forever).ok
    return pool


def limit_order(**extra: Any) -> dict[str, Any]:
    return {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": "0.01",
            "price": "40000", **extra}


S1 = Caller("s1", 3)


# ---- orderLinkIds ----


# With the longest tag (16 characters) an epoch and a sequence of up to nine digits each fit Bybit's
# 36; make() refuses a longer id (test_a_link_id_too_long_for_bybit_is_refused_not_sent).
@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}", fullmatch=True), st.integers(1, 10**8), st.integers(1, 10**9 - 1))
def test_made_link_ids_fit_bybit_and_name_their_strategy_and_epoch(strategy: str, epoch: int, seq: int) -> None:
    link = orderids.make(strategy, epoch, seq)
    assert len(link) <= 36 and all(c.isalnum() or c in "_-" for c in link)
    assert orderids.owned_by(link, strategy) == (orderids.tag(strategy), epoch, seq)


def test_a_link_id_too_long_for_bybit_is_refused_not_sent() -> None:
    with pytest.raises(ValueError, match="longer than 36 characters"):
        orderids.make("a" * 16, 100_000_000, 1_000_000_000)


def test_a_strategy_does_not_own_another_strategys_orders() -> None:
    assert orderids.owned_by(orderids.make("a-b", 1, 1), "a") is None
    assert orderids.owned_by(orderids.make("a", 1, 1), "a-b") is None
    assert orderids.owned_by("my-own-id", "my") is None
    long_a, long_b = "x" * 40 + "a", "x" * 40 + "b"
    assert orderids.tag(long_a) != orderids.tag(long_b)


# ---- intents ----


def test_an_order_gets_a_link_id_and_its_intent_settles_with_the_order_id(live: ApiPool, fake: FakeBybit,
                                                                         store: Store) -> None:
    first = live.call("main", "place_order", limit_order(), ["main"], forever, S1)
    second = live.call("main", "place_order", limit_order(), ["main"], forever, S1)
    assert first.ok and second.ok, (first, second)
    assert [o["orderLinkId"] for o in fake.orders()] == ["s1-3-1", "s1-3-2"]
    log = intents.read(store, "s1")
    assert log.open == [] and log.next_seq == 3
    assert [(i.link_id, i.status, i.order_id) for i in log.settled] == [
        ("s1-3-1", "placed", first.result["result"]["orderId"]), ("s1-3-2", "placed", second.result["result"]["orderId"])]


def test_the_intent_is_durable_before_the_order_leaves(live: ApiPool, fake: FakeBybit, store: Store) -> None:
    fake.hold_delay = 0.3
    fake.inject("hold")
    seen: list[list[intents.Intent]] = []
    original = fake.respond

    def respond(method: str, raw_path: str, headers: Any, body: bytes) -> Any:
        if raw_path.startswith(CREATE):
            seen.append(intents.read(store, "s1").open)  # what a crash now would leave behind
        return original(method, raw_path, headers, body)

    fake.respond = respond  # type: ignore[method-assign]
    assert live.call("main", "place_order", limit_order(), ["main"], forever, S1).ok
    assert [[i.link_id for i in open_] for open_ in seen] == [["s1-3-1"]]


def test_a_refused_order_settles_as_rejected(live: ApiPool, fake: FakeBybit, store: Store) -> None:
    fake.inject("bad_key")
    result = live.call("main", "place_order", limit_order(), ["main"], forever, S1)
    assert not result.ok and result.ret_code == 10003
    assert [(i.status, i.detail) for i in intents.read(store, "s1").settled] == [("rejected", result.error)]


def test_an_order_whose_arguments_do_not_fit_leaves_no_intent(live: ApiPool, store: Store) -> None:
    result = live.call("main", "place_order", limit_order(qty="lots"), ["main"], forever, S1)
    assert not result.ok and result.ret_code == 10001 and "`qty`" in result.error
    assert intents.read(store, "s1") == intents.IntentLog()


def test_a_lost_reply_is_settled_by_query_and_the_order_is_not_sent_again(live: ApiPool, fake: FakeBybit,
                                                                         store: Store) -> None:
    fake.inject("ack_lost")
    result = live.call("main", "place_order", limit_order(), ["main"], lease(1.5), S1)
    assert result.ok, result
    assert result.result["result"]["orderId"] == fake.orders()[0]["orderId"]
    assert fake.accepted(CREATE) == 1 and len([r for r in fake.requests if r.path == CREATE]) == 1
    assert [(i.status, i.order_id) for i in intents.read(store, "s1").settled] == [("placed", fake.orders()[0]["orderId"])]


def test_a_timeout_then_a_query_finds_the_order_the_exchange_took_late(live: ApiPool, fake: FakeBybit,
                                                                      store: Store) -> None:
    fake.hold_delay = 1.0  # longer than the account's 0.5 s timeout, inside the order's window
    fake.inject("hold")
    result = live.call("main", "place_order", limit_order(), ["main"], lease(3.0), S1)
    assert result.ok, result
    assert fake.outcomes(CREATE) == [0] and intents.read(store, "s1").settled[0].status == "placed"


def test_an_order_that_arrives_after_its_window_is_refused_there_and_settles_as_absent(
        live: ApiPool, fake: FakeBybit, store: Store) -> None:
    fake.hold_delay = 1.5  # the lease leaves a window of about 0.75 s: the exchange refuses it late
    fake.inject("hold")
    result = live.call("main", "place_order", limit_order(), ["main"], lease(1.0), S1)
    assert not result.ok and "not placed" in result.error, result
    assert fake.outcomes(CREATE) == [10002] and fake.orders() == []
    assert intents.read(store, "s1").settled[0].status == "absent"


def test_when_the_query_fails_too_the_intent_stays_open_for_reconciliation(live: ApiPool, fake: FakeBybit,
                                                                          store: Store) -> None:
    fake.inject("ack_lost")
    fake.inject("drop", 10)  # the queries after it
    result = live.call("main", "place_order", limit_order(), ["main"], lease(1.0), S1)
    assert not result.ok and "outcome unknown" in result.error, result
    assert [i.link_id for i in intents.read(store, "s1").open] == ["s1-3-1"]


# ---- risk limits ----


def test_an_order_over_the_strategys_notional_is_refused_unsent(live: ApiPool, fake: FakeBybit, store: Store) -> None:
    capped = Caller("s1", 3, RiskLimits(max_order_notional=1000.0))
    small = live.call("main", "place_order", limit_order(qty="0.02"), ["main"], forever, capped)  # 800
    big = live.call("main", "place_order", limit_order(qty="0.03"), ["main"], forever, capped)  # 1200
    market = live.call("main", "place_order", limit_order(orderType="Market", qty="0.03", price=None), ["main"],
                       forever, capped)  # 0.03 x 50,000 last price
    assert small.ok
    for refused in (big, market):
        assert (refused.ok, refused.kind, refused.ret_code) == (False, "risk", RISK_REFUSED), refused
        assert "max-order-notional" in refused.error
    assert fake.accepted(CREATE) == 1 and len(intents.read(store, "s1").settled) == 1


def test_orders_per_minute_and_open_orders_are_limited_per_strategy_and_per_account(
        fake: FakeBybit, make_pool: Callable[..., ApiPool]) -> None:
    fake.add_key(KEY, SECRET)
    pool = make_pool([account(fake, max_open_orders=3)])
    fast = Caller("fast", 1, RiskLimits(max_orders_per_minute=2))
    results = [pool.call("main", "place_order", limit_order(), ["main"], forever, fast) for _ in range(3)]
    assert [r.ok for r in results] == [True, True, False] and "max-orders-per-minute 2" in results[2].error
    few = Caller("few", 1, RiskLimits(max_open_orders=1))
    assert pool.call("main", "place_order", limit_order(), ["main"], forever, few).ok
    mine = pool.call("main", "place_order", limit_order(), ["main"], forever, few)
    assert mine.kind == "risk" and "strategy few has 1 open order(s)" in mine.error
    other = pool.call("main", "place_order", limit_order(), ["main"], forever, Caller("other", 1))
    assert other.kind == "risk" and "account main has 3 open order(s)" in other.error


# ---- reconciliation ----


def reconciled(pool: ApiPool, strategy: str, epoch: int, cancel_stale: bool = False) -> reconcile.Reconciled:
    request = reconcile.Request(strategy=strategy, epoch=epoch, accounts=["paper"], cancel_stale=cancel_stale)
    return reconcile.reconcile(pool, pool._store, request, forever)


def test_reconciliation_lists_the_strategys_own_orders_and_cancels_older_epochs_when_asked(
        make_pool: Callable[..., ApiPool]) -> None:
    pool = make_pool([default_paper_account()])
    paper = {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": "0.001", "price": "1000"}
    for caller in (Caller("s1", 1), Caller("s1", 2), Caller("s1-b", 2)):
        assert pool.call("paper", "place_order", paper, ["paper"], forever, caller).ok
    assert pool.call("paper", "place_order", {**paper, "orderType": "Market", "price": None}, ["paper"], forever,
                     Caller("s1-b", 2)).ok
    found = reconciled(pool, "s1", 2)
    assert found.ok, found.error
    assert sorted(o["orderLinkId"] for o in found.open_orders) == ["s1-1-1", "s1-2-2"]
    assert found.stale == ["s1-1-1"] and found.cancelled == []
    assert [(p["symbol"], p["account"]) for p in found.positions] == [("BTCUSDT", "paper")]
    cleaned = reconciled(pool, "s1", 2, cancel_stale=True)
    assert [o["orderLinkId"] for o in cleaned.open_orders] == ["s1-2-2"] and cleaned.cancelled == ["s1-1-1"]
    assert [o["orderLinkId"] for o in reconciled(pool, "s1", 2).open_orders] == ["s1-2-2"]


def test_twenty_starts_on_an_account_allowed_two_calls_a_second_share_two_rounds_of_reads(
        fake: FakeBybit, make_pool: Callable[..., ApiPool]) -> None:
    """A mass start on a rate-limited account: every start waiting on a list read shares the next one,
    however many wait (with 8 of them waiting at a time, 20 starts took four rounds of a second each)."""
    fake.add_key(KEY, SECRET)
    pool = make_pool([account(fake, rate_limit=2.0)])
    answers: list[reconcile.Reconciled] = []
    for i in range(20):
        request = reconcile.Request(strategy=f"s{i:02d}", epoch=1, accounts=["main"])
        pool.reconcile(request, forever, answers.append)
    wait_for(lambda: len(answers) == 20, timeout=15, what="twenty reconciliations")
    assert all(a.ok for a in answers), answers
    lists = [r.path for r in fake.requests if r.path in ("/v5/order/realtime", "/v5/position/list")]
    assert len(lists) <= 4, lists  # the first start's read, and one more shared by all the others


def reconciled_while_sending(pool: ApiPool, fake: FakeBybit) -> reconcile.Reconciled:
    """Reconciliation of S1 while its order is on its way, landing 0.3 s after it left."""
    fake.slow_delay = 0.3  # inside the account's 0.5 s timeout: the order lands, late
    fake.inject("slow")
    sending = threading.Thread(target=pool.call, args=("main", "place_order", limit_order(), ["main"], forever, S1))
    sending.start()
    try:
        assert wait_for(lambda: pool.in_flight(S1.strategy), what="the order on its way") == {"s1-3-1"}
        request = reconcile.Request(strategy=S1.strategy, epoch=S1.epoch, accounts=["main"], cancel_stale=False)
        return reconcile.reconcile(pool, pool._store, request, forever)
    finally:
        sending.join()


def test_reconciliation_waits_for_an_order_this_process_is_sending_to_land(live: ApiPool, fake: FakeBybit) -> None:
    """A worker paused past its lease restarts its strategies; one whose order was on its way waited
    a whole retry (a second) after the answer came (chaos soak, 60 strategies at 10 Hz)."""
    found = reconciled_while_sending(live, fake)
    assert found.ok, found.error
    assert [o["orderLinkId"] for o in found.open_orders] == ["s1-3-1"]


def test_an_order_still_on_its_way_after_the_wait_puts_the_start_off(live: ApiPool, fake: FakeBybit,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile, "LANDING_WAIT", 0.05)
    found = reconciled_while_sending(live, fake)
    assert not found.ok and found.error == "order s1-3-1 is being sent: waiting for its answer"


def test_reconciliation_waits_for_an_order_another_process_may_still_be_sending(
        make_pool: Callable[..., ApiPool], store: Store) -> None:
    pool = make_pool([default_paper_account()])
    order = {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": "0.001", "price": "1000"}
    # What a worker killed between writing an intent and hearing back leaves behind.
    intents.begin(store, "s1", 1, "dead-worker", "paper", [order], expires=time.time() + 60)
    waiting = reconciled(pool, "s1", 1)
    assert not waiting.ok and "could still reach the exchange until" in waiting.error
    intents.begin(store, "s2", 1, "dead-worker", "paper", [order], expires=time.time() - 1)
    settled = reconciled(pool, "s2", 1)
    assert settled.ok and settled.settled == {"s2-1-1": "absent"}
    assert intents.read(store, "s2").open == []


# ---- a duplicate orderLinkId ----


def test_a_strategys_reused_order_link_id_is_110072_on_live_as_on_paper(
        live: ApiPool, fake: FakeBybit, make_pool: Callable[..., ApiPool]) -> None:
    assert live.call("main", "place_order", limit_order(orderLinkId="mine-1"), ["main"], forever, S1).ok
    again = live.call("main", "place_order", limit_order(orderLinkId="mine-1", qty="0.02"), ["main"], forever, S1)
    assert (again.ok, again.kind, again.ret_code) == (False, "api", 110072), again
    paper = make_pool([default_paper_account()], instance="paper")
    paper_order = {**limit_order(orderLinkId="mine-1"), "qty": "0.001", "price": "1000"}
    assert paper.call("paper", "place_order", paper_order, ["paper"], forever, Caller("s2", 1)).ok
    on_paper = paper.call("paper", "place_order", paper_order, ["paper"], forever, Caller("s2", 1))
    assert (on_paper.ok, on_paper.kind, on_paper.ret_code) == (False, "api", 110072), on_paper
    assert len(fake.orders()) == 1


def test_an_order_link_id_of_the_shape_quantlab_makes_is_a_strategys_own_or_refused(
        live: ApiPool, fake: FakeBybit, store: Store) -> None:
    """A strategy that names an id quantlab would make for another (or for its own next order) would take
    that order from it: the exchange refuses the second use, and the other would own the squatter's order."""
    squatter = Caller("squatter", 1)
    for taken in ("s1-3-1", "s1-3-7", "squatter-1-1"):  # s1's next ids; the squatter's own, not yet made
        refused = live.call("main", "place_order", limit_order(orderLinkId=taken), ["main"], forever, squatter)
        assert (refused.ok, refused.ret_code) == (False, 10001), refused
        assert "TAG-EPOCH-SEQ" in refused.error and "nothing was sent" in refused.error
    assert fake.orders() == [] and intents.read(store, "squatter").open == []
    placed = live.call("main", "place_order", limit_order(), ["main"], forever, S1)
    assert placed.ok and fake.orders()[0]["orderLinkId"] == "s1-3-1"  # s1's own id was left to it
    made = live.call("main", "place_order", limit_order(), ["main"], forever, squatter)
    assert made.ok
    # Ids of any other shape are the strategy's to choose.
    for own in ("mine-1", "a-b-c", "squatter-1"):
        assert live.call("main", "place_order", limit_order(orderLinkId=own), ["main"], forever, squatter).ok


def test_an_order_link_id_the_exchange_already_has_is_refused_not_found(live: ApiPool, fake: FakeBybit,
                                                                         store: Store) -> None:
    """An id the intents do not know (an order placed by hand) is refused by the exchange: that answer stands."""
    assert live.call("main", "place_order", limit_order(orderLinkId="by-hand"), ["main"], forever).ok
    again = live.call("main", "place_order", limit_order(orderLinkId="by-hand"), ["main"], forever, S1)
    assert (again.ok, again.kind, again.ret_code) == (False, "api", 110072), again
    assert [(i.link_id, i.status) for i in intents.read(store, "s1").settled] == [("by-hand", "rejected")]


def test_a_lost_reply_is_settled_by_a_found_order_only_when_it_is_the_same_order() -> None:
    from quantlab.exchange.orders import find

    intent = intents.Intent(link_id="x-1", account="main", category="linear", symbol="BTCUSDT", order=limit_order(),
                            epoch=1, instance="me", written=0.0, expires=0.0)
    row = {"orderId": "o1", "orderLinkId": "x-1", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit",
           "qty": "0.01", "price": "40000"}

    def read(rows: list[dict[str, Any]]) -> Callable[[str, dict[str, Any]], dict[str, Any]]:
        return lambda method, query: {"result": {"list": rows}}

    assert find(read([row]), intent).status == "placed"
    assert find(read([{**row, "qty": "0.02"}]), intent).status == "rejected"
    assert find(read([{**row, "side": "Sell"}]), intent).status == "rejected"
    assert find(read([]), intent).status == "absent"


def test_a_late_settle_by_an_old_process_leaves_a_newer_intent_of_the_same_id_alone(store: Store) -> None:
    """A paused worker's lost-reply search ends after reconciliation settled its intent and the new runner reused
    the orderLinkId (the first order never landed): what it found is about its own intent, not the new one."""
    order = {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "qty": "0.001",
             "orderLinkId": "s1-5"}
    old = intents.begin(store, "s1", 1, "paused-worker", "live", [order], expires=time.time())
    intents.settle(store, "s1", {"s1-5": intents.Outcome("absent")}, intents.read(store, "s1").open)
    new = intents.begin(store, "s1", 3, "new-worker", "live", [order], expires=time.time() + 5)
    intents.settle(store, "s1", {"s1-5": intents.Outcome("absent")}, old)  # the paused worker, at last
    assert [(i.epoch, i.status) for i in intents.read(store, "s1").open] == [(3, "pending")]
    intents.settle(store, "s1", {"s1-5": intents.Outcome("placed", "id-9")}, new)
    log = intents.read(store, "s1")
    assert log.open == [] and [(i.epoch, i.status) for i in log.settled] == [(1, "absent"), (3, "placed")]
