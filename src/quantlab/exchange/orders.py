"""Reading order outcomes: from the exchange's answer, or by asking it for an orderLinkId.

Shared by the API pool (an answer, or a lost one) and by reconciliation (an
intent left open by a crash). ``Read`` is a read-only exchange call on one
account: ``read(method, kwargs) -> body``.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from quantlab.errors import ApiError
from quantlab.exchange.intents import Intent, Outcome

Read = Callable[[str, dict[str, Any]], dict[str, Any]]
PAGE = 50  #: rows per page of an order list (Bybit's most)
POSITION_PAGE = 200  #: rows per page of the position list (Bybit's most)
MAX_PAGES = 20  #: pages read of one list before it is refused as longer than quantlab can judge
#: Seconds within which an order Bybit took shows in its lists. Its order creation is asynchronous:
#: an order shows in the open orders a moment after it was taken, and in the order history (the
#: only list that shows a filled market order) later still. Until then "not found" means "not yet".
SHOWN_WITHIN = 2.0


def from_answer(method: str, body: dict[str, Any], intents: list[Intent]) -> dict[str, Outcome]:
    """Each intent's outcome from the exchange's successful answer."""
    result = body.get("result") or {}
    if method == "place_order":
        return {intents[0].link_id: Outcome("placed", str(result.get("orderId", "")))}
    rows = result.get("list") or []
    codes = (body.get("retExtInfo") or {}).get("list") or []
    outcomes: dict[str, Outcome] = {}
    for i, intent in enumerate(intents):
        row = rows[i] if i < len(rows) else {}
        code = codes[i] if i < len(codes) else {}
        if row.get("orderId"):
            outcomes[intent.link_id] = Outcome("placed", str(row["orderId"]))
        else:
            outcomes[intent.link_id] = Outcome("rejected", detail=f"{code.get('msg', '')} (code {code.get('code', '?')})")
    return outcomes


def find(read: Read, intent: Intent) -> Outcome:
    """Ask the exchange for the intent's orderLinkId: placed if it knows it, absent if not.

    Call it only once no copy of the request can still be accepted (``intent.expires``):
    before that, absent means "not yet"; on a live account, so does absent within
    SHOWN_WITHIN of that moment. Raises what ``read`` raises.
    """
    query = {"category": intent.category, "orderLinkId": intent.link_id}
    if intent.symbol:
        query["symbol"] = intent.symbol
    for method in ("get_open_orders", "get_order_history"):  # open first: history may lag behind
        rows = (read(method, query).get("result") or {}).get("list") or []
        found = next((r for r in rows if r.get("orderLinkId") == intent.link_id), None)
        if found is not None and not matches(found, intent.order):
            # The exchange takes an orderLinkId once: this order was refused as a duplicate.
            return Outcome("rejected", detail=f"OrderLinkedID is duplicate: the exchange's order "
                           f"{found.get('orderId', '')} with this orderLinkId is a different order")
        if found is not None:
            return Outcome("placed", str(found.get("orderId", "")), "found by orderLinkId after the reply was lost")
    return Outcome("absent", detail="the reply was lost and the exchange has no such order")


def matches(row: dict[str, Any], order: dict[str, Any]) -> bool:
    """The exchange's order ``row`` is ``order`` as sent: same symbol, side, type, quantity and limit price."""
    for key in ("symbol", "side", "orderType"):
        if order.get(key) not in (None, "") and str(row.get(key, "")).lower() != str(order[key]).lower():
            return False
    keys = ("qty", "price") if str(order.get("orderType", "")).lower() == "limit" else ("qty",)
    return all(_same_number(row.get(key), order.get(key)) for key in keys if order.get(key) not in (None, ""))


def _same_number(a: Any, b: Any) -> bool:
    try:
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    except (TypeError, ValueError):
        return False


def lost_reply_body(method: str, intents: list[Intent], outcomes: dict[str, Outcome]) -> dict[str, Any]:
    """The answer a strategy gets when its reply was lost and a query found what happened."""
    rows = [{"orderId": outcomes[i.link_id].order_id, "orderLinkId": i.link_id} for i in intents]
    result: dict[str, Any] = rows[0] if method == "place_order" else {"list": rows}
    return {"retCode": 0, "retMsg": "OK (the reply was lost; the order was found by its orderLinkId)",
            "result": result, "retExtInfo": {}, "time": int(time.time() * 1000)}


def open_orders(read: Read, scope: dict[str, str]) -> list[dict[str, Any]]:
    """Every open order in ``scope`` (a category and a settleCoin or symbol), page by page."""
    return all_pages(read, "get_open_orders", scope, PAGE)


class TooManyRows(ApiError):
    """A list is longer than MAX_PAGES pages: counted or reconciled from part of it, a limit would be wrong."""


def all_pages(read: Read, method: str, scope: dict[str, str], page: int) -> list[dict[str, Any]]:
    """Every row a list call returns for ``scope``, following ``nextPageCursor`` page by page.

    Raises TooManyRows rather than return part of a list longer than MAX_PAGES pages.
    """
    rows: list[dict[str, Any]] = []
    cursor = ""
    for _ in range(MAX_PAGES):
        query: dict[str, Any] = {**scope, "limit": page}
        if cursor:
            query["cursor"] = cursor
        result = read(method, query).get("result") or {}
        rows += result.get("list") or []
        cursor = result.get("nextPageCursor") or ""
        if not cursor:
            return rows
    where = " ".join(f"{k}={v}" for k, v in scope.items())
    raise TooManyRows(f"{method} ({where}) lists more than {len(rows)} rows ({MAX_PAGES} pages): too many to "
                      "count or reconcile them all; cancel some, or narrow the strategy's symbols")
