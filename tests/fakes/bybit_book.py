"""The fake Bybit's account: orders, fills, positions and wallet, as the v5 endpoints show them.

Tidy (the default), an order is judged, executed and listed in one instant.
Untidy (``Untidy`` settings, tests/fakes/bybit_limits.py), it is listed as the
real exchange lists it: order creation is asynchronous, so an order shows in
/v5/order/realtime only ``open_lag`` seconds after it was taken and in
/v5/order/history only ``history_lag`` seconds after; every list comes in
pages of at most ``page_size`` rows with a ``nextPageCursor``; a market order
fills in two executions; an orderLinkId must be at most 36 letters, digits,
``-`` or ``_`` (retCode 10001). In both modes ``fill`` fills an order in part
(``PartiallyFilled``, ``cumExecQty``, ``leavesQty``), and the batch endpoints
answer each order in ``result.list`` and ``retExtInfo.list``, in request order.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from tests.fakes.bybit_limits import Untidy

Params = dict[str, Any]
Outcome = tuple[int, str, Any]  # retCode, retMsg, result

#: Bybit's rule for a v5 order's orderLinkId: "a max of 36 characters; numbers, letters (upper and
#: lower cases), dashes and underscores".
LINK_ID = re.compile(r"[A-Za-z0-9_-]{1,36}")
OPEN = ("New", "PartiallyFilled")
BATCH_MOST = 10  #: orders per batch request (linear and spot)
TIDY_PAGE = 1000  #: rows per page when tidy: every list fits one page


@dataclass(frozen=True)
class Batched:
    """A batch endpoint's answer: ``result`` and the per-order codes that go into ``retExtInfo.list``."""

    result: Params
    codes: list[dict[str, Any]]


@dataclass(frozen=True)
class Route:
    auth: bool
    required: tuple[tuple[str, ...], ...]  # each group: one of these names must be present
    handler: str  # name of the Book method


_ORDER_FIELDS = ("category", "symbol", "side", "orderType", "qty")
_NAMED = (("category",), ("symbol",), ("orderId", "orderLinkId"))
ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/v5/market/time"): Route(False, (), "on_server_time"),
    ("GET", "/v5/market/kline"): Route(False, (("category",), ("symbol",), ("interval",)), "on_kline"),
    ("GET", "/v5/market/tickers"): Route(False, (("category",),), "on_tickers"),
    ("GET", "/v5/position/list"): Route(True, (("category",), ("symbol", "settleCoin")), "on_positions"),
    ("GET", "/v5/account/wallet-balance"): Route(True, (("accountType",),), "on_wallet_balance"),
    ("GET", "/v5/order/realtime"): Route(True, (("category",),), "on_open_orders"),
    ("GET", "/v5/order/history"): Route(True, (("category",),), "on_order_history"),
    ("GET", "/v5/execution/list"): Route(True, (("category",),), "on_executions"),
    ("POST", "/v5/order/create"): Route(True, tuple((n,) for n in _ORDER_FIELDS), "on_place_order"),
    ("POST", "/v5/order/amend"): Route(True, _NAMED, "on_amend_order"),
    ("POST", "/v5/order/cancel"): Route(True, _NAMED, "on_cancel_order"),
    ("POST", "/v5/order/cancel-all"): Route(True, (("category",),), "on_cancel_all"),
    ("POST", "/v5/order/create-batch"): Route(True, (("category",), ("request",)), "on_place_batch"),
    ("POST", "/v5/order/amend-batch"): Route(True, (("category",), ("request",)), "on_amend_batch"),
    ("POST", "/v5/order/cancel-batch"): Route(True, (("category",), ("request",)), "on_cancel_batch"),
}


def ms(clock: Callable[[], float]) -> int:
    return int(clock() * 1000)


def _missing(params: Params, required: tuple[tuple[str, ...], ...]) -> str | None:
    """The first group of ``required`` with no name present in ``params``, as "a or b"."""
    for group in required:
        if not any(params.get(name) not in (None, "") for name in group):
            return " or ".join(group)
    return None


class Book:
    """One account's market and trading state; the caller holds the lock."""

    def __init__(self, clock: Callable[[], float], untidy: Untidy | None = None) -> None:
        self.clock = clock
        self.untidy = untidy
        self.prices: dict[str, float] = {}
        self.wallet: dict[str, float] = {"USDT": 10_000.0}
        self.orders: dict[str, Params] = {}
        self.by_link: dict[str, str] = {}  # orderLinkId -> orderId
        self.positions: dict[tuple[str, str], float] = {}  # (category, symbol) -> signed size
        self.executions: list[Params] = []
        self._taken: dict[str, float] = {}  # orderId -> time.monotonic() when the exchange took it

    # ---- market ----

    def on_server_time(self, p: Params) -> Outcome:
        now = self.clock()
        return 0, "OK", {"timeSecond": str(int(now)), "timeNano": str(int(now * 1e9))}

    def on_tickers(self, p: Params) -> Outcome:
        symbols = [p["symbol"]] if p.get("symbol") else sorted(self.prices)
        if any(s not in self.prices for s in symbols):
            return 10001, "params error: symbol invalid", {}
        fields = ("lastPrice", "markPrice", "bid1Price", "ask1Price")
        rows = [{"symbol": s, **{f: str(self.prices[s]) for f in fields}} for s in symbols]
        return 0, "OK", {"category": p["category"], "list": rows}

    def on_kline(self, p: Params) -> Outcome:
        if p["symbol"] not in self.prices:
            return 10001, "params error: symbol invalid", {}
        price = str(self.prices[p["symbol"]])
        step = int(p["interval"]) * 60_000 if str(p["interval"]).isdigit() else 86_400_000
        last = ms(self.clock) // step * step
        rows = [[str(last - i * step), price, price, price, price, "0", "0"] for i in range(int(p.get("limit", 200)))]
        return 0, "OK", {"category": p["category"], "symbol": p["symbol"], "list": rows}

    # ---- account ----

    def on_positions(self, p: Params) -> Outcome:
        symbols = [p["symbol"]] if p.get("symbol") else sorted(s for c, s in self.positions if c == p["category"])
        rows = []
        for symbol in symbols:
            size = self.positions.get((p["category"], symbol), 0.0)
            side = "Buy" if size > 0 else "Sell" if size < 0 else ""
            rows.append({"symbol": symbol, "side": side, "size": str(abs(size)), "positionIdx": 0,
                         "markPrice": str(self.prices.get(symbol, ""))})
        return self._page(p, rows, 20)

    def on_wallet_balance(self, p: Params) -> Outcome:
        coins = [{"coin": c, "walletBalance": str(v), "equity": str(v)} for c, v in sorted(self.wallet.items())]
        equity = str(sum(self.wallet.values()))
        return 0, "OK", {"list": [{"accountType": p["accountType"], "totalEquity": equity, "coin": coins}]}

    # ---- lists ----

    def on_open_orders(self, p: Params) -> Outcome:
        lag = self.untidy.open_lag if self.untidy else 0.0
        rows = [o for o in self._matching(p, self.orders.values(), lag) if o["orderStatus"] in OPEN]
        return self._page(p, rows, 20)

    def on_order_history(self, p: Params) -> Outcome:
        lag = self.untidy.history_lag if self.untidy else 0.0
        return self._page(p, self._matching(p, self.orders.values(), lag), 20)

    def on_executions(self, p: Params) -> Outcome:
        return self._page(p, self._matching(p, self.executions, 0.0), 50)

    def _matching(self, p: Params, rows: Any, lag: float) -> list[Params]:
        keys = ("category", "symbol", "orderId", "orderLinkId")
        now = time.monotonic()
        return [r for r in rows if all(p.get(k) in (None, "", r[k]) for k in keys)
                and self._taken.get(r["orderId"], 0.0) + lag <= now]

    def _page(self, p: Params, rows: list[Params], default: int) -> Outcome:
        """One page of ``rows`` from ``cursor``, at most ``limit`` (untidy: at most ``page_size``) long."""
        try:
            limit = int(p.get("limit") or default)
            start = int(str(p.get("cursor") or "next-0").removeprefix("next-"))
        except ValueError:
            return 10001, "params error: limit or cursor invalid", {}
        limit = min(limit, self.untidy.page_size) if self.untidy else max(limit, TIDY_PAGE)
        cursor = f"next-{start + limit}" if start + limit < len(rows) else ""
        return 0, "OK", {"category": p["category"], "list": rows[start:start + limit], "nextPageCursor": cursor}

    # ---- orders ----

    def on_place_order(self, p: Params) -> Outcome:
        link = str(p.get("orderLinkId") or "")
        if link and self.untidy and not LINK_ID.fullmatch(link):
            return 10001, "params error: orderLinkId: at most 36 letters, digits, - and _", {}
        if link and link in self.by_link:
            return 110072, "OrderLinkedID is duplicate", {}
        try:
            qty = float(p["qty"])
        except ValueError:
            return 10001, "params error: qty invalid", {}
        order = {"orderId": str(uuid.uuid4()), "orderLinkId": link, "category": p["category"],
                 "symbol": p["symbol"], "side": p["side"], "orderType": p["orderType"],
                 "qty": str(p["qty"]), "price": str(p.get("price", "")), "orderStatus": "New",
                 "cumExecQty": "0", "leavesQty": str(p["qty"]), "createdTime": str(ms(self.clock))}
        self.orders[order["orderId"]] = order
        self._taken[order["orderId"]] = time.monotonic()
        if link:
            self.by_link[link] = order["orderId"]
        if p["orderType"] == "Market":
            parts = [qty / 2, qty - qty / 2] if self.untidy else [qty]
            for part in parts:
                self.fill(order, part)
        return 0, "OK", {"orderId": order["orderId"], "orderLinkId": link}

    def fill(self, order: Params, qty: float) -> None:
        """Execute ``qty`` more of ``order``: an execution, the position, and its fill fields."""
        done = float(order["cumExecQty"]) + qty
        left = max(0.0, float(order["qty"]) - done)
        status = "Filled" if left <= 1e-12 else "PartiallyFilled"
        order.update(cumExecQty=str(done), leavesQty=str(left), orderStatus=status)
        key = (order["category"], order["symbol"])
        self.positions[key] = self.positions.get(key, 0.0) + (qty if order["side"] == "Buy" else -qty)
        price = order["price"] or str(self.prices.get(order["symbol"], ""))
        self.executions.append({k: order[k] for k in ("category", "symbol", "orderId", "orderLinkId", "side")}
                               | {"execId": str(uuid.uuid4()), "execQty": str(qty), "execPrice": price,
                                  "execTime": str(ms(self.clock))})

    def find(self, order_id: str = "", link_id: str = "") -> Params | None:
        return self.orders.get(order_id or self.by_link.get(link_id, ""))

    def _open_order(self, p: Params) -> Params | None:
        order = self.find(str(p.get("orderId") or ""), str(p.get("orderLinkId") or ""))
        return order if order is not None and order["orderStatus"] in OPEN else None

    def on_amend_order(self, p: Params) -> Outcome:
        order = self._open_order(p)
        if order is None:
            return 110001, "order not exists or too late to replace", {}
        try:
            left = float(p.get("qty", order["qty"])) - float(order["cumExecQty"])
        except ValueError:
            return 10001, "params error: qty invalid", {}
        order.update({k: str(p[k]) for k in ("qty", "price") if k in p} | {"leavesQty": str(max(0.0, left))})
        return 0, "OK", {"orderId": order["orderId"], "orderLinkId": order["orderLinkId"]}

    def on_cancel_order(self, p: Params) -> Outcome:
        order = self._open_order(p)
        if order is None:
            return 110001, "order not exists or too late to cancel", {}
        order["orderStatus"] = "Cancelled"
        return 0, "OK", {"orderId": order["orderId"], "orderLinkId": order["orderLinkId"]}

    def on_cancel_all(self, p: Params) -> Outcome:
        keys = ("category", "symbol", "orderId", "orderLinkId")
        found = [o for o in self.orders.values()
                 if o["orderStatus"] in OPEN and all(p.get(k) in (None, o[k]) for k in keys)]
        for order in found:
            order["orderStatus"] = "Cancelled"
        done = [{"orderId": o["orderId"], "orderLinkId": o["orderLinkId"]} for o in found]
        return 0, "OK", {"list": done, "success": "1"}

    # ---- batches ----

    def on_place_batch(self, p: Params) -> Outcome:
        return self._batch(p, tuple((n,) for n in _ORDER_FIELDS[1:]), self.on_place_order)

    def on_amend_batch(self, p: Params) -> Outcome:
        return self._batch(p, _NAMED[1:], self.on_amend_order)

    def on_cancel_batch(self, p: Params) -> Outcome:
        return self._batch(p, _NAMED[1:], self.on_cancel_order)

    def _batch(self, p: Params, required: tuple[tuple[str, ...], ...], one: Callable[[Params], Outcome]) -> Outcome:
        """Each order of the batch as a single call would go, answered in two lists in request order."""
        items = p["request"]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items) or len(items) > BATCH_MOST:
            return 10001, f"params error: request must be a list of at most {BATCH_MOST} orders", {}
        rows, codes = [], []
        for item in items:
            lacking = _missing(item, required)
            code, msg, result = (10001, f"params error: {lacking} is required", {}) if lacking else \
                one({**item, "category": p["category"]})
            rows.append({"category": p["category"], "symbol": item.get("symbol", ""),
                         "orderId": result.get("orderId", ""), "orderLinkId": item.get("orderLinkId", ""),
                         "createAt": str(ms(self.clock)) if code == 0 else ""})
            codes.append({"code": code, "msg": msg})
        return 0, "OK", Batched({"list": rows}, codes)
