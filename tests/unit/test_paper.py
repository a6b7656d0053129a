"""PaperExchange: a simulated Bybit v5 account on a real FileStore with an injected clock."""

from __future__ import annotations

import multiprocessing
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantlab.store.filestore import FileStore
from quantlab.exchange.accounts import Account
from quantlab.exchange.paper import PaperExchange
from quantlab.exchange.paper_state import MAKER_FEE, TAKER_FEE, Walk, _path

T0 = 1_700_000_000.0
MARKET_BUY = {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Market"}


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def account(seed: int = 7, **kw: Any) -> Account:
    return Account(name="paper", type="paper", seed=seed, **kw)


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ex(store: FileStore, clock: Clock) -> PaperExchange:
    return PaperExchange(account(), store, clock)


def ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["retCode"] == 0, reply
    return reply["result"]


def order(
    ex: PaperExchange, side: str, qty: str, price: float | None = None, symbol: str = "BTCUSDT", **kw: Any
) -> dict[str, Any]:
    """place_order: a market order, or a limit order when ``price`` is given."""
    args = {"category": "linear", "symbol": symbol, "side": side, "qty": qty, "orderType": "Market"}
    if price is not None:
        args |= {"orderType": "Limit", "price": str(price)}
    return ex.call("place_order", args | kw)


def buy(ex: PaperExchange, qty: str = "0.1", **kw: Any) -> dict[str, Any]:
    return order(ex, "Buy", qty, **kw)


def limit(ex: PaperExchange, side: str, price: float, qty: str = "0.1", **kw: Any) -> dict[str, Any]:
    return order(ex, side, qty, price, **kw)


def open_orders(ex: PaperExchange, **kw: Any) -> list[dict[str, Any]]:
    return ok(ex.call("get_open_orders", {"category": "linear", "settleCoin": "USDT"} | kw))["list"]


def position(ex: PaperExchange, symbol: str = "BTCUSDT") -> dict[str, Any]:
    return ok(ex.call("get_positions", {"category": "linear", "symbol": symbol}))["list"][0]


def wallet(ex: PaperExchange) -> dict[str, Any]:
    return ok(ex.call("get_wallet_balance", {"accountType": "UNIFIED"}))["list"][0]


def last_price(ex: PaperExchange, symbol: str = "BTCUSDT") -> float:
    return float(ok(ex.call("get_tickers", {"category": "linear", "symbol": symbol}))["list"][0]["lastPrice"])


# ---- envelopes ----


def test_every_method_answers_with_a_bybit_envelope(ex: PaperExchange) -> None:
    ex.set_price("BTCUSDT", 50_000)
    placed = ok(limit(ex, "Buy", 49_000, orderLinkId="env-1"))
    calls: list[tuple[str, dict[str, Any]]] = [
        ("get_server_time", {}),
        ("get_tickers", {"category": "linear"}),
        ("get_kline", {"category": "linear", "symbol": "BTCUSDT", "interval": "1", "limit": 3}),
        ("get_wallet_balance", {"accountType": "UNIFIED"}),
        ("get_positions", {"category": "linear", "settleCoin": "USDT"}),
        ("get_open_orders", {"category": "linear", "symbol": "BTCUSDT"}),
        ("get_order_history", {"category": "linear"}),
        ("amend_order", {"category": "linear", "symbol": "BTCUSDT", "orderId": placed["orderId"], "price": "48000"}),
        ("cancel_order", {"category": "linear", "symbol": "BTCUSDT", "orderLinkId": "env-1"}),
        ("cancel_all_orders", {"category": "linear", "settleCoin": "USDT"}),
    ]
    for method, kwargs in calls:
        reply = ex.call(method, kwargs)
        assert set(reply) == {"retCode", "retMsg", "result", "retExtInfo", "time"}, method
        assert (reply["retCode"], reply["retMsg"], reply["retExtInfo"]) == (0, "OK", {}), (method, reply)
        assert reply["time"] == int(T0 * 1000)
    assert ok(ex.call("get_server_time", {})) == {"timeSecond": str(int(T0)), "timeNano": str(int(T0) * 10**9)}
    ticker = ok(ex.call("get_tickers", {"category": "linear"}))["list"]
    assert [t["symbol"] for t in ticker] == ["BTCUSDT", "ETHUSDT"]
    assert ticker[0]["lastPrice"] == "50000" and float(ticker[0]["bid1Price"]) < 50_000 < float(ticker[0]["ask1Price"])
    coin = wallet(ex)["coin"][0]
    assert coin["coin"] == "USDT" and isinstance(coin["walletBalance"], str)


@pytest.mark.parametrize(
    "method, kwargs, code, words",
    [
        ("withdraw", {"coin": "USDT"}, 10001, "paper account does not support withdraw"),
        ("get_tickers", {}, 10001, "category is required"),
        ("get_tickers", {"category": "inverse"}, 10001, "category 'inverse'"),
        ("get_tickers", {"category": "linear", "symbol": "DOGEUSDT"}, 10001, "symbol invalid"),
        ("get_kline", {"category": "linear", "symbol": "BTCUSDT", "interval": "M"}, 10001, "interval 'M'"),
        ("get_kline", {"category": "linear", "symbol": "BTCUSDT", "interval": "1", "end": "soon"}, 10001, "end"),
        ("get_open_orders", {"category": "linear"}, 10001, "symbol, baseCoin or settleCoin"),
        ("get_positions", {"category": "linear"}, 10001, "symbol, baseCoin or settleCoin"),
        ("get_wallet_balance", {}, 10001, "accountType is required"),
        ("place_order", MARKET_BUY, 10001, "qty is required"),
        ("place_order", MARKET_BUY | {"qty": "-1"}, 10001, "qty must be"),
        ("place_order", MARKET_BUY | {"qty": "1", "side": "Up"}, 10001, "side"),
        ("place_order", MARKET_BUY | {"qty": "1", "orderType": "Limit"}, 10001, "price is required"),
        ("place_order", MARKET_BUY | {"qty": "1", "orderLinkId": "a b"}, 10001, "orderLinkId"),
        ("place_order", MARKET_BUY | {"qty": "1", "takeProfit": "70000"}, 10001, "takeProfit"),
        ("cancel_order", {"category": "linear", "symbol": "BTCUSDT"}, 10001, "orderId or orderLinkId is required"),
        ("cancel_order", {"category": "linear", "symbol": "BTCUSDT", "orderId": "nope"}, 110001, "does not exist"),
        ("amend_order", {"category": "linear", "symbol": "BTCUSDT", "orderLinkId": "nope", "qty": "1"}, 110001, "does not exist"),
    ],
)  # fmt: skip
def test_bad_calls_are_error_envelopes(
    ex: PaperExchange, method: str, kwargs: dict[str, Any], code: int, words: str
) -> None:
    reply = ex.call(method, kwargs)
    assert reply["retCode"] == code and words in reply["retMsg"], reply
    assert reply["result"] == {} and reply["time"] == int(T0 * 1000)


def test_parameters_that_are_not_a_dict_are_an_error_envelope(ex: PaperExchange) -> None:
    reply = ex.call("get_tickers", None)  # type: ignore[arg-type]
    assert reply["retCode"] == 10001


# ---- the walk ----


def test_same_seed_gives_same_prices_and_another_seed_does_not(tmp_path: Path) -> None:
    clock = Clock()
    a = PaperExchange(account(seed=7), FileStore(tmp_path / "a"), clock)
    b = PaperExchange(account(seed=7), FileStore(tmp_path / "b"), clock)
    c = PaperExchange(account(seed=8), FileStore(tmp_path / "c"), clock)
    seen = []
    for _ in range(5):
        clock.t += 1
        seen.append((last_price(a), last_price(b), last_price(c)))
    assert all(pa == pb for pa, pb, _ in seen)
    assert any(pa != pc for pa, _, pc in seen)
    assert 50_000 < seen[0][0] < 72_000 and 2_500 < last_price(a, "ETHUSDT") < 3_600


def test_price_does_not_depend_on_when_or_how_often_it_was_observed(tmp_path: Path) -> None:
    every, once = Clock(), Clock()
    watched = PaperExchange(account(), FileStore(tmp_path / "a"), every)
    idle = PaperExchange(account(), FileStore(tmp_path / "b"), once)
    for _ in range(120):
        every.t += 1
        last_price(watched)
    once.t += 120
    assert last_price(idle) == last_price(watched)
    walk = Walk(7, "BTCUSDT")
    forward = [walk.price(int(T0) + n) for n in range(0, 7200, 37)]
    _path.cache_clear()
    assert [walk.price(int(T0) + n) for n in reversed(range(0, 7200, 37))] == forward[::-1]


def test_walk_moves_about_five_basis_points_a_second() -> None:
    walk = Walk(3, "ETHUSDT")
    prices = [walk.price(int(T0) + n) for n in range(3601)]
    moves = [abs(b / a - 1) for a, b in zip(prices, prices[1:])]
    assert 0.0002 < sum(moves) / len(moves) < 0.0006


def test_a_long_gap_is_caught_up_in_bounded_time(ex: PaperExchange, clock: Clock) -> None:
    ok(limit(ex, "Buy", 1_000))
    clock.t += 10 * 365 * 86400
    started = time.perf_counter()
    assert len(open_orders(ex)) == 1
    ok(ex.call("cancel_all_orders", {"category": "linear", "symbol": "BTCUSDT"}))
    assert time.perf_counter() - started < 0.5


def test_kline_candles_come_from_the_walk(ex: PaperExchange, clock: Clock) -> None:
    clock.t = T0 + 30  # inside a minute: the newest candle is still open
    kline = ok(ex.call("get_kline", {"category": "linear", "symbol": "BTCUSDT", "interval": 1, "limit": 5}))
    rows = kline["list"]
    assert (kline["category"], kline["symbol"], len(rows)) == ("linear", "BTCUSDT", 5)
    starts = [int(r[0]) for r in rows]
    assert starts == sorted(starts, reverse=True) and starts[0] == int(T0 + 30) // 60 * 60_000
    assert all(b - a == 60_000 for b, a in zip(starts, starts[1:]))
    walk = Walk(7, "BTCUSDT")
    for start, o, h, low, c, *_ in rows:
        first = int(start) // 1000
        seconds = [walk.price(t) for t in range(first, min(first + 59, int(clock.t)) + 1)]
        assert (float(o), float(c)) == pytest.approx((seconds[0], seconds[-1]))
        assert (float(h), float(low)) == pytest.approx((max(seconds), min(seconds)))
    assert float(rows[0][4]) == last_price(ex)
    days = ok(ex.call("get_kline", {"category": "linear", "symbol": "BTCUSDT", "interval": "D", "limit": 1000}))
    assert len(days["list"]) == 1000


# ---- orders, positions, balance ----


def test_market_order_fills_at_once_and_moves_position_and_balance(ex: PaperExchange) -> None:
    ex.set_price("BTCUSDT", 50_000)
    placed = ok(buy(ex, "0.1", orderLinkId="m-1"))
    assert placed["orderLinkId"] == "m-1" and placed["orderId"]
    pos = position(ex)
    assert (pos["side"], pos["size"], pos["avgPrice"], pos["unrealisedPnl"]) == ("Buy", "0.1", "50000", "0")
    fee = 0.1 * 50_000 * TAKER_FEE
    assert float(wallet(ex)["totalWalletBalance"]) == pytest.approx(10_000 - fee)
    ex.set_price("BTCUSDT", 51_000)
    assert float(position(ex)["unrealisedPnl"]) == pytest.approx(100)
    assert float(wallet(ex)["totalEquity"]) == pytest.approx(10_000 - fee + 100)
    ok(order(ex, "Sell", "0.1"))
    pos = position(ex)
    assert (pos["side"], pos["size"]) == ("", "0")
    fees = fee + 0.1 * 51_000 * TAKER_FEE
    assert float(pos["cumRealisedPnl"]) == pytest.approx(100 - fees)
    assert float(wallet(ex)["totalWalletBalance"]) == pytest.approx(10_000 + 100 - fees)
    history = ok(ex.call("get_order_history", {"category": "linear", "orderLinkId": "m-1"}))["list"]
    assert [(h["orderStatus"], h["cumExecQty"], h["avgPrice"]) for h in history] == [("Filled", "0.1", "50000")]


def test_limit_order_rests_until_the_price_crosses_it(ex: PaperExchange) -> None:
    ex.set_price("BTCUSDT", 50_000)
    placed = ok(limit(ex, "Buy", 49_000, orderLinkId="grid-1"))
    [order] = open_orders(ex)
    assert (order["orderId"], order["orderLinkId"], order["orderStatus"]) == (placed["orderId"], "grid-1", "New")
    assert (order["price"], order["qty"], order["leavesQty"], order["side"]) == ("49000", "0.1", "0.1", "Buy")
    ex.set_price("BTCUSDT", 49_500)
    assert len(open_orders(ex)) == 1
    ex.set_price("BTCUSDT", 48_800)
    assert open_orders(ex) == []
    pos = position(ex)
    assert (pos["side"], pos["size"], pos["avgPrice"]) == ("Buy", "0.1", "49000")  # filled at its limit, as a maker
    assert float(wallet(ex)["totalWalletBalance"]) == pytest.approx(10_000 - 0.1 * 49_000 * MAKER_FEE)


def test_limit_order_fills_when_the_walk_crosses_it_as_the_clock_runs(ex: PaperExchange, clock: Clock) -> None:
    walk, now = Walk(7, "BTCUSDT"), int(T0)
    target = min(walk.price(now + n) for n in range(1, 600))
    crossed = next(now + n for n in range(1, 600) if walk.price(now + n) <= target)
    ok(limit(ex, "Buy", target, orderLinkId="dip"))
    clock.t = crossed - 1
    assert [o["orderLinkId"] for o in open_orders(ex)] == ["dip"]
    clock.t = crossed + 100  # not touched at the crossing itself: the catch-up still sees it
    assert open_orders(ex) == []
    assert position(ex)["avgPrice"] == f"{target:.8f}".rstrip("0").rstrip(".")


def test_marketable_limit_fills_at_once_and_post_only_or_ioc_do_not_rest(ex: PaperExchange) -> None:
    ex.set_price("BTCUSDT", 50_000)
    ok(limit(ex, "Buy", 51_000, qty="0.01"))
    assert position(ex)["avgPrice"] == "50000"  # at the market price, not the worse limit
    ok(limit(ex, "Buy", 51_000, qty="0.01", timeInForce="PostOnly", orderLinkId="po"))
    ok(limit(ex, "Buy", 49_000, qty="0.01", timeInForce="IOC", orderLinkId="ioc"))
    assert open_orders(ex) == []
    history = {h["orderLinkId"]: h for h in ok(ex.call("get_order_history", {"category": "linear"}))["list"]}
    assert history["po"]["orderStatus"] == "Cancelled" and history["ioc"]["orderStatus"] == "Cancelled"
    assert history["po"]["rejectReason"] == "EC_PostOnlyWillTakeLiquidity"


def test_reduce_only_needs_an_opposite_position_and_is_capped_by_it(ex: PaperExchange) -> None:
    ex.set_price("BTCUSDT", 50_000)
    sell = {"category": "linear", "symbol": "BTCUSDT", "side": "Sell", "orderType": "Market", "reduceOnly": True}
    assert ex.call("place_order", sell | {"qty": "0.1"})["retCode"] == 110017
    ok(buy(ex, "0.1"))
    ok(ex.call("place_order", sell | {"qty": "0.5"}))
    assert position(ex)["size"] == "0"


def test_duplicate_order_link_id_is_refused_even_after_a_restart(ex: PaperExchange, store: FileStore) -> None:
    ex.set_price("BTCUSDT", 50_000)
    ok(limit(ex, "Buy", 40_000, orderLinkId="grid-1"))
    again = limit(ex, "Buy", 41_000, orderLinkId="grid-1")
    assert (again["retCode"], again["retMsg"]) == (110072, "OrderLinkedID is duplicate")
    ok(ex.call("cancel_order", {"category": "linear", "symbol": "BTCUSDT", "orderLinkId": "grid-1"}))
    restarted = PaperExchange(account(), store, Clock(T0 + 5))
    assert limit(restarted, "Buy", 41_000, orderLinkId="grid-1")["retCode"] == 110072
    assert len(ok(restarted.call("get_order_history", {"category": "linear"}))["list"]) == 1


def test_cancel_and_amend_by_order_id_or_link_id(ex: PaperExchange) -> None:
    ex.set_price("BTCUSDT", 50_000)
    first = ok(limit(ex, "Buy", 45_000, orderLinkId="a"))
    ok(limit(ex, "Sell", 55_000, orderLinkId="b"))
    change = {"category": "linear", "symbol": "BTCUSDT", "orderId": first["orderId"], "qty": "0.2", "price": "46000"}
    amended = ok(ex.call("amend_order", change))
    assert amended == {"orderId": first["orderId"], "orderLinkId": "a"}
    by_link = {o["orderLinkId"]: o for o in open_orders(ex)}
    assert (by_link["a"]["qty"], by_link["a"]["price"]) == ("0.2", "46000")
    ok(ex.call("amend_order", {"category": "linear", "symbol": "BTCUSDT", "orderLinkId": "b", "price": "49000"}))
    assert [o["orderLinkId"] for o in open_orders(ex)] == ["a"]  # amended across the price: filled at once
    assert position(ex)["side"] == "Sell"
    cancelled = ok(ex.call("cancel_order", {"category": "linear", "symbol": "BTCUSDT", "orderId": first["orderId"]}))
    assert cancelled == {"orderId": first["orderId"], "orderLinkId": "a"}
    assert open_orders(ex) == []
    again = ex.call("cancel_order", {"category": "linear", "symbol": "BTCUSDT", "orderLinkId": "a"})
    assert again["retCode"] == 110001


def test_cancel_all_covers_only_its_scope(ex: PaperExchange) -> None:
    ex.set_price("BTCUSDT", 50_000)
    ex.set_price("ETHUSDT", 3_000)
    ids = [ok(limit(ex, "Buy", 40_000 + i, qty="0.01"))["orderId"] for i in range(3)]
    ok(order(ex, "Buy", "0.1", 2000, symbol="ETHUSDT"))
    result = ok(ex.call("cancel_all_orders", {"category": "linear", "symbol": "BTCUSDT"}))
    assert result["success"] == "1" and sorted(o["orderId"] for o in result["list"]) == sorted(ids)
    assert [o["symbol"] for o in open_orders(ex)] == ["ETHUSDT"]
    [eth] = ok(ex.call("cancel_all_orders", {"category": "linear", "settleCoin": "USDT"}))["list"]
    assert eth["orderLinkId"] == ""
    assert open_orders(ex) == []


def test_open_orders_are_newest_first_and_filtered(ex: PaperExchange, clock: Clock) -> None:
    ex.set_price("BTCUSDT", 50_000)
    ex.set_price("ETHUSDT", 3_000)
    for i in range(3):
        clock.t += 1
        ok(limit(ex, "Buy", 40_000 + i, qty="0.01", orderLinkId=f"g{i}"))
    ok(order(ex, "Sell", "0.1", 4000, symbol="ETHUSDT", orderLinkId="e"))
    assert [o["orderLinkId"] for o in open_orders(ex)] == ["e", "g2", "g1", "g0"]
    assert [o["orderLinkId"] for o in open_orders(ex, symbol="BTCUSDT")] == ["g2", "g1", "g0"]
    assert [o["orderLinkId"] for o in open_orders(ex, orderLinkId="g1")] == ["g1"]
    assert [o["orderLinkId"] for o in open_orders(ex, limit=2)] == ["e", "g2"]
    held = sum(0.01 * (40_000 + i) / 10 for i in range(3)) + 0.1 * 4000 / 10  # notional / leverage
    assert float(wallet(ex)["coin"][0]["totalOrderIM"]) == pytest.approx(held)


def test_insufficient_balance_is_refused_and_resting_orders_hold_margin(ex: PaperExchange) -> None:
    ex.set_price("BTCUSDT", 50_000)
    too_big = buy(ex, "3")  # 150,000 USDT at 10x needs 15,000 of margin
    assert too_big["retCode"] == 110007 and "ab not enough" in too_big["retMsg"]
    ok(limit(ex, "Buy", 49_000, qty="1.5", orderLinkId="big"))  # holds 7,350
    assert limit(ex, "Buy", 49_000, qty="1", orderLinkId="next")["retCode"] == 110007
    assert [o["orderLinkId"] for o in open_orders(ex)] == ["big"]  # the refused order left nothing behind
    assert ok(limit(ex, "Buy", 49_000, qty="0.5", orderLinkId="next"))  # a refused orderLinkId is not used up


# ---- the store ----


def test_a_new_exchange_on_the_same_store_continues_where_the_old_one_stopped(store: FileStore, clock: Clock) -> None:
    old = PaperExchange(account(), store, clock)
    old.set_price("BTCUSDT", 50_000)
    ok(buy(old, "0.2"))
    ok(limit(old, "Sell", 52_000, qty="0.2", orderLinkId="tp"))
    before = (open_orders(old), position(old), wallet(old))
    clock.t += 60
    new = PaperExchange(account(balances={"USDT": 1.0}), store, clock)  # the stored balance wins
    assert (open_orders(new), position(new), wallet(new)) == before
    new.set_price("BTCUSDT", 52_500)
    assert open_orders(old) == [] and position(old)["size"] == "0"


def test_reads_do_not_write_but_a_fill_they_see_is_kept(ex: PaperExchange, store: FileStore, clock: Clock) -> None:
    ok(limit(ex, "Buy", Walk(7, "BTCUSDT").price(int(T0)) * 0.5))
    blob = store.get_blob("paper", "paper")
    for _ in range(3):
        clock.t += 1
        for method, kwargs in [
            ("get_tickers", {"category": "linear"}),
            ("get_open_orders", {"category": "linear", "symbol": "BTCUSDT"}),
            ("get_wallet_balance", {"accountType": "UNIFIED"}),
            ("get_kline", {"category": "linear", "symbol": "ETHUSDT", "interval": "5"}),
        ]:
            ok(ex.call(method, kwargs))
    assert store.get_blob("paper", "paper") == blob
    fresh = PaperExchange(account(), store, clock)
    assert fresh.call("get_positions", {"category": "linear", "symbol": "BTCUSDT"})["retCode"] == 0
    assert store.get_blob("paper", "paper") == blob
    ok(limit(ex, "Sell", 1.0, qty="0.01"))  # crosses at once: a fill written by the write itself
    assert store.get_blob("paper", "paper") != blob


def test_threads_and_two_exchanges_placing_at_once_lose_no_order(store: FileStore, clock: Clock) -> None:
    exchanges = [PaperExchange(account(), store, clock), PaperExchange(account(), store, clock)]
    exchanges[0].set_price("BTCUSDT", 50_000)
    errors: list[dict[str, Any]] = []

    def place(worker: int) -> None:
        for n in range(5):
            reply = limit(exchanges[worker % 2], "Buy", 30_000 + n, qty="0.001", orderLinkId=f"w{worker}-{n}")
            if reply["retCode"]:
                errors.append(reply)

    threads = [threading.Thread(target=place, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    links = sorted(o["orderLinkId"] for o in open_orders(exchanges[1], limit=50))
    assert links == sorted(f"w{w}-{n}" for w in range(6) for n in range(5))


def _place_five(root: str, worker: int) -> None:
    ex = PaperExchange(account(), FileStore(Path(root)), Clock())
    for n in range(5):
        if limit(ex, "Buy", 30_000 + n, qty="0.001", orderLinkId=f"p{worker}-{n}")["retCode"]:
            raise SystemExit(1)


def test_worker_processes_sharing_a_store_lose_no_order(tmp_path: Path) -> None:
    root = tmp_path / "store"
    FileStore(root)
    fork = multiprocessing.get_context("fork")
    processes = [fork.Process(target=_place_five, args=(str(root), w)) for w in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=10)
    assert [process.exitcode for process in processes] == [0, 0, 0]
    ex = PaperExchange(account(), FileStore(root), Clock())
    links = sorted(o["orderLinkId"] for o in open_orders(ex, limit=50))
    assert links == sorted(f"p{w}-{n}" for w in range(3) for n in range(5))


@settings(max_examples=15, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(40_000, 60_000), st.sampled_from(["Buy", "Sell"]), st.integers(1, 30)),
        min_size=1,
        max_size=6,
    )
)
def test_equity_is_conserved_up_to_price_moves_and_fees(trades: list[tuple[int, str, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ex = PaperExchange(account(), FileStore(Path(tmp)), Clock())
        size = expected = 0.0
        mark = float(trades[0][0])
        for price, side, lots in trades:
            ex.set_price("BTCUSDT", price)
            expected += size * (price - mark)
            mark = price
            qty = lots / 1000
            ok(order(ex, side, str(qty)))
            size += qty if side == "Buy" else -qty
            expected -= qty * price * TAKER_FEE
        assert float(wallet(ex)["totalEquity"]) == pytest.approx(10_000 + expected, abs=1e-6)
        assert float(position(ex)["size"]) == pytest.approx(abs(size), abs=1e-9)


def test_every_order_link_id_is_remembered_however_many_came_after(
    store: FileStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every orderLinkId the account ever took is refused again, not only the newest 20,000.

    The document keeps LINK_IDS_KEEP ids (20,000); older ones move to an archive that is
    never trimmed. The bound is made small here so the test places hundreds, not 20,001, orders.
    """
    import quantlab.exchange.paper_state as paper_state

    monkeypatch.setattr(paper_state, "LINK_IDS_KEEP", 20)
    ex = PaperExchange(account(), store, clock)
    limit = {"side": "Buy", "orderType": "Limit", "qty": "0.001", "price": "1000", "timeInForce": "GTC"}
    for i in range(61):  # the first id is 60 ids older than the newest: three times the bound
        ok(ex.call("place_order", {"category": "linear", "symbol": "BTCUSDT", **limit, "orderLinkId": f"id-{i}"}))
    for i in (0, 1, 25, 60):
        again = ex.call("place_order", {"category": "linear", "symbol": "BTCUSDT", **limit, "orderLinkId": f"id-{i}"})
        assert again["retCode"] == 110072, (i, again)
    fresh = PaperExchange(account(), store, clock)  # a new worker process: the archive is in the store
    assert fresh.call("place_order", {"category": "linear", "symbol": "BTCUSDT", **limit, "orderLinkId": "id-0"})["retCode"] == 110072
    assert ok(fresh.call("place_order", {"category": "linear", "symbol": "BTCUSDT", **limit, "orderLinkId": "id-new"}))
