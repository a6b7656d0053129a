"""Changes to a strategy's orders: amends and cancels, of its own orders only, amends judged by the notional limits.

Strategies may share an account, so an order id a strategy names may be
another's. An order is the strategy's when its orderLinkId was made for it
(quantlab/exchange/orderids.py) or is a custom one its intents record as
placed (quantlab/exchange/intents.py ``IntentLog.owns``). Before an amend or
a cancel is sent, each order it names is looked up at the exchange when the
id it is named by does not already prove it the strategy's (an orderId, or an
amend that a notional limit must judge); an order that is not the strategy's
is refused unsent with ApiPermissionError, one that is not open with Bybit's
110001.

An amend can grow an order past the limit its placing was judged by, so the
amended order (the new qty and price, else the order's own) is judged against
the strategy's and the account's max-order-notional, as a new order would be
(quantlab/exchange/risk.py). A strategy's amends run one at a time, so two
cannot each be judged against the order as it was before the other.

``cancel_all_orders`` from a strategy cancels only that strategy's own open
orders in the scope it names, one by one, and answers with Bybit's shape
(``{"list": [{"orderId", "orderLinkId"}], "success": "1"}``); the worker's own
cancel-all (a halt's) is sent as it is.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable

from quantlab.exchange import intents, orders
from quantlab.exchange.accounts import Account
from quantlab.exchange.intents import IntentLog
from quantlab.exchange.job import Caller, Failure, Job
from quantlab.exchange.risk import RISK_REFUSED, Level, Refused, RiskLimits, check_notional, notional
from quantlab.exchange.sending import Sender
from quantlab.exchange.signing import Fence
from quantlab.protocol import ApiCall
from quantlab.store.store import Store

#: Calls that change or cancel orders a strategy already has.
CHANGES = frozenset({"amend_order", "cancel_order", "amend_batch_order", "cancel_batch_order", "cancel_all_orders"})
AMENDS = frozenset({"amend_order", "amend_batch_order"})
NOT_OPEN = 110001  #: Bybit: "order not exists or too late to cancel/replace"
LOOK_AGAIN = 0.2  #: seconds between looks for an order the strategy placed that the exchange does not list yet

#: The arguments of a cancel-all that say which open orders it covers.
_SCOPE = ("category", "symbol", "baseCoin", "settleCoin", "orderFilter")

#: The kinds of spot order Bybit lists apart (its default lists active orders only).
_SPOT_FILTERS = ("", "StopOrder", "tpslOrder", "OcoOrder", "BidirectionalTpslOrder")

#: The last traded price of an order's symbol on an account (quantlab/exchange/placing.py caches it).
LastPrice = Callable[[Account, dict[str, Any]], float]


class OrderChanger:
    """Sends a strategy's amends and cancels once every order they name is found to be its own."""

    def __init__(self, store: Store, sender: Sender, last_price: LastPrice) -> None:
        self._store = store
        self._sender = sender
        self._last_price = last_price
        self._amending: dict[str, threading.Lock] = {}  # strategy -> held while one of its amends is judged and sent
        self._guard = threading.Lock()  # guards _amending

    def change(self, account: Account, job: Job, fence: Fence | None, gate: Callable[[], None] | None) -> Any:
        """Send the strategy's amend or cancel if every order it names is its own (and an amend within limits)."""
        call, caller = job.call, job.caller
        log = intents.read(self._store, caller.strategy)
        if call.method == "cancel_all_orders":
            return self._cancel_own(account, job, fence, log)
        if call.method not in AMENDS:
            self._own_rows(account, call, log, caller, need_rows=False)
            return self._sender.attempts(account, call, fence, job.deadline, gate, caller=caller)
        levels = _notional_levels(account, caller)
        with self._lock(caller.strategy):
            rows = self._own_rows(account, call, log, caller, need_rows=bool(levels))
            if levels:
                self._judge(account, call, rows, levels)
            return self._sender.attempts(account, call, fence, job.deadline, gate, caller=caller)

    def _lock(self, strategy: str) -> threading.Lock:
        with self._guard:
            return self._amending.setdefault(strategy, threading.Lock())

    def _own_rows(self, account: Account, call: ApiCall, log: IntentLog, caller: Caller,
                  need_rows: bool) -> list[dict[str, Any]]:
        """The exchange's open order for each target of the call (when looked up); refuses one not the strategy's."""
        rows: list[dict[str, Any]] = []
        for target in targets_of(call.method, call.kwargs):
            order_id, link_id = str(target.get("orderId") or ""), str(target.get("orderLinkId") or "")
            named = order_id or link_id
            placed = log.placed(order_id, link_id)
            if not need_rows and (placed is not None or (not order_id and log.owns(caller.strategy, link_id))):
                rows.append({})  # the id it is named by proves it the strategy's
                continue
            # An order placed a moment ago may not be listed yet: "not open" is sure only after that.
            listed_by = placed.settled + orders.SHOWN_WITHIN if placed is not None else 0.0
            row = self._open_order(account, target, listed_by)
            if row is None:
                raise Failure(f"{call.method}: order {named} does not exist or is no longer open "
                              f"(retCode {NOT_OPEN}); nothing was sent", NOT_OPEN, "api")
            if not log.owns(caller.strategy, str(row.get("orderLinkId") or "")):
                raise _not_own(call.method, named, caller.strategy)
            rows.append(row)
        return rows

    def _open_order(self, account: Account, target: dict[str, Any], listed_by: float) -> dict[str, Any] | None:
        """The exchange's open order ``target`` names, looked for again until ``listed_by`` (Unix time)."""
        while (row := self._listed_order(account, target)) is None and time.time() < listed_by:
            time.sleep(LOOK_AGAIN)
        return row

    def _listed_order(self, account: Account, target: dict[str, Any]) -> dict[str, Any] | None:
        key = "orderId" if target.get("orderId") else "orderLinkId"
        query = {"category": target.get("category"), "symbol": target.get("symbol"), key: target[key]}
        # Bybit lists a spot order that waits for its trigger only under its own orderFilter.
        for kind in _SPOT_FILTERS if target.get("category") == "spot" else ("",):
            filtered = {**query, "orderFilter": kind} if kind else query
            listed = (self._sender.read(account, "get_open_orders", filtered).get("result") or {}).get("list") or []
            row = next((row for row in listed if row.get(key) == target[key]), None)
            if row is not None:
                return row
        return None

    def _judge(self, account: Account, call: ApiCall, rows: list[dict[str, Any]], levels: list[Level]) -> None:
        """Refuse the amend if an amended order's notional would be over a limit."""
        amended = [{"category": t.get("category"), "symbol": row.get("symbol", t.get("symbol")),
                    "orderType": row.get("orderType", "Limit"), "marketUnit": row.get("marketUnit"),
                    "qty": t.get("qty") or row.get("qty"), "price": t.get("price") or row.get("price")}
                   for t, row in zip(targets_of(call.method, call.kwargs), rows)]
        notionals = [notional(o, functools.partial(self._last_price, account, o)) for o in amended]
        try:
            check_notional(levels, notionals)
        except Refused as e:
            raise Failure(f"{call.method}: refused by a risk limit: {e}", RISK_REFUSED, "risk") from None

    def _cancel_own(self, account: Account, job: Job, fence: Fence | None, log: IntentLog) -> dict[str, Any]:
        """cancel_all_orders for a strategy: its own open orders in the scope, one by one."""
        call, caller = job.call, job.caller
        category = call.kwargs.get("category")
        scope = {k: v for k, v in call.kwargs.items() if k in _SCOPE}
        listed = orders.open_orders(self._sender.reader(account), scope)
        mine = [r for r in listed if log.owns(caller.strategy, str(r.get("orderLinkId") or ""))]
        done: list[dict[str, Any]] = []
        for row in mine:
            cancel = ApiCall(call_id=call.call_id, account=account.name, method="cancel_order",
                             kwargs={"category": category, "symbol": row.get("symbol"), "orderId": row.get("orderId")})
            try:
                self._sender.attempts(account, cancel, fence, job.deadline, None, caller=caller)
            except Failure as failure:
                if failure.ret_code == NOT_OPEN:  # filled or cancelled since it was listed
                    continue
                raise Failure(f"cancel_all_orders: cancelled {len(done)} of strategy {caller.strategy}'s "
                              f"{len(mine)} open order(s), then: {failure.error}", failure.ret_code, failure.kind,
                              failure.sure) from None
            done.append({"orderId": row.get("orderId", ""), "orderLinkId": row.get("orderLinkId", "")})
        return {"retCode": 0, "retMsg": "OK", "result": {"list": done, "success": "1"}, "retExtInfo": {},
                "time": int(time.time() * 1000)}


def targets_of(method: str, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """The orders an amend or cancel names, each with its category (a batch names it once)."""
    if method in ("amend_batch_order", "cancel_batch_order"):
        return [{"category": kwargs.get("category"), **item} for item in kwargs.get("request") or []]
    return [kwargs]


def _notional_levels(account: Account, caller: Caller) -> list[Level]:
    limits = [(f"strategy {caller.strategy}", caller.limits.max_order_notional),
              (f"account {account.name}", account.limits.max_order_notional)]
    return [Level(label, RiskLimits(max_order_notional=limit)) for label, limit in limits if limit is not None]


def _not_own(method: str, named: str, strategy: str) -> Failure:
    return Failure(f"{method}: order {named} is not strategy {strategy}'s: a strategy may amend or cancel only "
                   "its own orders; nothing was sent", 0, "permission")
