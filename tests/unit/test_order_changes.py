"""Amends and cancels through the API pool: a strategy changes only its own orders, and an amend meets the limits.

Two strategies share one account, live (the real pybit client against the fake Bybit) and paper.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from quantlab.exchange import intents
from quantlab.exchange.accounts import Account
from quantlab.exchange.apipool import ApiPool, Caller
from quantlab.exchange.risk import RISK_REFUSED, RiskLimits
from quantlab.protocol import ApiResult
from quantlab.store.filestore import FileStore
from tests.fakes.bybit import FakeBybit, fake_bybit
from tests.unit.test_apipool import FOREVER, KEY, SECRET, account

fake = pytest.fixture(fake_bybit, name="fake")

CAPPED = Caller("s1", 1, RiskLimits(max_order_notional=100.0))
OTHER = Caller("s2", 1)


def order(**extra: Any) -> dict[str, Any]:
    """0.001 at 1,000: a notional of 1 USDT, resting below the market."""
    return {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": "0.001",
            "price": "1000", **extra}


@pytest.fixture(params=["live", "paper"])
def pool(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ApiPool]:
    if request.param == "live":
        exchange: FakeBybit = request.getfixturevalue("fake")
        exchange.add_key(KEY, SECRET)
        exchange.set_ticker("BTCUSDT", 50_000.0)
        served = account(exchange)
    else:
        served = Account(name="main", type="paper", rate_limit=1000.0)
    made = ApiPool([served], FileStore(tmp_path / "store"))
    yield made
    made.close()


def call(pool: ApiPool, caller: Caller, method: str, **kwargs: Any) -> ApiResult:
    return pool.call("main", method, kwargs, ["main"], FOREVER, caller)


def open_orders(pool: ApiPool) -> dict[str, dict[str, Any]]:
    """Every open order on the account, by orderLinkId."""
    body = pool.read("main", "get_open_orders", {"category": "linear", "symbol": "BTCUSDT"})
    return {row["orderLinkId"]: row for row in body["result"]["list"]}


def placed(pool: ApiPool, caller: Caller, **extra: Any) -> dict[str, Any]:
    result = call(pool, caller, "place_order", **order(**extra))
    assert result.ok, result
    ids: dict[str, Any] = result.result["result"]
    return ids


def test_an_amend_past_the_notional_limit_is_refused_unsent(pool: ApiPool) -> None:
    mine = placed(pool, CAPPED)
    grown = call(pool, CAPPED, "amend_order", category="linear", symbol="BTCUSDT", orderId=mine["orderId"], qty="50")
    assert (grown.ok, grown.kind, grown.ret_code) == (False, "risk", RISK_REFUSED), grown
    assert "order notional 50,000.00 is over strategy s1's max-order-notional 100.00" in grown.error
    dearer = call(pool, CAPPED, "amend_order", category="linear", symbol="BTCUSDT",
                  orderLinkId=mine["orderLinkId"], price="200000")  # 0.001 x 200,000: the order's own qty
    assert dearer.kind == "risk", dearer
    within = call(pool, CAPPED, "amend_order", category="linear", symbol="BTCUSDT", orderId=mine["orderId"],
                  qty="0.05", price="1500")  # 75
    assert within.ok, within
    assert float(open_orders(pool)[mine["orderLinkId"]]["qty"]) == 0.05


def test_an_account_limit_holds_for_an_amend_too(fake: FakeBybit, tmp_path: Path) -> None:
    fake.add_key(KEY, SECRET)
    pool = ApiPool([account(fake, max_order_notional=100.0)], FileStore(tmp_path / "store"))
    try:
        mine = placed(pool, OTHER)
        grown = call(pool, OTHER, "amend_order", category="linear", symbol="BTCUSDT", orderId=mine["orderId"], qty="1")
        assert grown.kind == "risk" and "account main's max-order-notional 100.00" in grown.error, grown
        assert fake.accepted("/v5/order/amend") == 0
    finally:
        pool.close()


def test_batch_orders_and_batch_amends_meet_the_notional_limit(fake: FakeBybit, tmp_path: Path) -> None:
    fake.add_key(KEY, SECRET)
    pool = ApiPool([account(fake)], FileStore(tmp_path / "store"))
    try:
        mine = placed(pool, CAPPED)
        items = [{k: v for k, v in order(qty=qty).items() if k != "category"} for qty in ("0.001", "1")]
        batch = call(pool, CAPPED, "place_batch_order", category="linear", request=items)
        assert batch.kind == "risk" and "1,000.00" in batch.error, batch
        amends = [{"symbol": "BTCUSDT", "orderLinkId": mine["orderLinkId"], "qty": "50"}]
        amended = call(pool, CAPPED, "amend_batch_order", category="linear", request=amends)
        assert amended.kind == "risk" and "50,000.00" in amended.error, amended
        assert [r.path for r in fake.requests if "batch" in r.path] == []
    finally:
        pool.close()


def test_a_strategy_amends_and_cancels_only_its_own_orders(pool: ApiPool) -> None:
    theirs = placed(pool, CAPPED)
    custom = placed(pool, CAPPED, orderLinkId="s1-custom")
    target = {"category": "linear", "symbol": "BTCUSDT"}
    attempts = [
        ("amend_order", {**target, "orderId": theirs["orderId"], "qty": "0.002"}),
        ("amend_order", {**target, "orderLinkId": theirs["orderLinkId"], "price": "1001"}),
        ("cancel_order", {**target, "orderId": theirs["orderId"]}),
        ("cancel_order", {**target, "orderLinkId": custom["orderLinkId"]}),
        ("cancel_batch_order", {"category": "linear", "request": [{"symbol": "BTCUSDT", "orderId": theirs["orderId"]}]}),
        ("amend_batch_order", {"category": "linear",
                               "request": [{"symbol": "BTCUSDT", "orderLinkId": custom["orderLinkId"], "qty": "1"}]}),
    ]
    for method, kwargs in attempts:
        refused = call(pool, OTHER, method, **kwargs)
        assert (refused.ok, refused.kind) == (False, "permission"), (method, refused)
        assert "is not strategy s2's" in refused.error
    # Taking the custom id for itself is refused by the exchange, and makes the order no more its own.
    assert call(pool, OTHER, "place_order", **order(orderLinkId="s1-custom")).ret_code == 110072
    assert call(pool, OTHER, "cancel_order", **target, orderLinkId="s1-custom").kind == "permission"

    own = placed(pool, OTHER)
    swept = call(pool, OTHER, "cancel_all_orders", category="linear", symbol="BTCUSDT")
    assert swept.ok and [o["orderLinkId"] for o in swept.result["result"]["list"]] == [own["orderLinkId"]], swept
    left = open_orders(pool)
    assert set(left) == {theirs["orderLinkId"], custom["orderLinkId"]}
    assert float(left[theirs["orderLinkId"]]["qty"]) == 0.001 and float(left[theirs["orderLinkId"]]["price"]) == 1000

    assert call(pool, CAPPED, "cancel_order", **target, orderLinkId=custom["orderLinkId"]).ok
    assert call(pool, CAPPED, "cancel_all_orders", category="linear", settleCoin="USDT").ok
    assert open_orders(pool) == {}


def test_an_order_that_is_not_open_is_110001_unsent(pool: ApiPool) -> None:
    gone = call(pool, CAPPED, "amend_order", category="linear", symbol="BTCUSDT", orderId="no-such-order", qty="1")
    assert (gone.ok, gone.ret_code) == (False, 110001) and "nothing was sent" in gone.error, gone




def test_a_custom_id_is_the_strategys_only_once_the_exchange_took_it_from_it() -> None:
    def intent(status: intents.Status) -> intents.Intent:
        return intents.Intent(link_id="custom-1", account="main", category="linear", symbol="BTCUSDT", order={},
                              epoch=2, instance="me", written=0.0, expires=0.0, status=status)

    for status, epoch in (("placed", 2), ("rejected", None), ("absent", None)):
        log = intents.IntentLog(settled=[intent(status)])  # type: ignore[arg-type]
        assert (log.epoch_of("s1", "custom-1"), log.owns("s1", "custom-1")) == (epoch, epoch is not None), status
    pending = intents.IntentLog(open=[intent("pending")])
    assert (pending.epoch_of("s1", "custom-1"), pending.owns("s1", "custom-1")) == (2, False)
    made = intents.IntentLog(next_seq=8)
    assert made.owns("s1", "s1-4-7") and not made.owns("s2", "s1-4-7")
    assert not made.owns("s1", "s1-4-8")  # not made yet: another strategy's custom id of that form
