"""Which exchange calls are which: read-only, order-changing, exposure-opening.

A fixed rule rather than a table of pybit's 358 methods, and one that fails
closed: a method whose name does not start with ``get_`` is taken to change
something (orders, positions, leverage, transfers, withdrawals, sub-accounts,
loans...), so it is fenced at send time and refused while halted unless it
is known to only reduce exposure. Reading ``get_*`` changes nothing, so a
read may run without the lease check.
"""

from __future__ import annotations

from typing import Any

#: Calls that only take orders away: they pass a halt.
CANCELS = frozenset({"cancel_order", "cancel_all_orders", "cancel_batch_order", "spread_cancel_order",
                     "spread_cancel_all_orders"})


def read_only(method: str) -> bool:
    """True for calls that change nothing at the exchange (they skip the lease check)."""
    return method.startswith("get_")


def fenced(method: str) -> bool:
    """True for calls that must leave only while the lease and the epoch hold (every non-read)."""
    return not read_only(method)


def _reduce_only(order: Any) -> bool:
    return isinstance(order, dict) and order.get("reduceOnly") in (True, "true", "True", 1, "1")


def opens_exposure(method: str, kwargs: dict[str, Any]) -> bool:
    """True unless the call surely cannot open or increase exposure: reads, cancels, reduce-only orders.

    Everything else (amends, leverage, transfers, withdrawals, any other write) counts as opening:
    a halt must hold even for a call this rule did not foresee.
    """
    if read_only(method) or method in CANCELS:
        return False
    if method == "place_order":
        return not _reduce_only(kwargs)
    if method == "place_batch_order":
        orders = kwargs.get("request")
        return not (isinstance(orders, list) and orders and all(_reduce_only(o) for o in orders))
    return True


#: Calls that create orders: each order gets an intent, an orderLinkId and the risk checks.
ORDER_METHODS = frozenset({"place_order", "place_batch_order"})


def orders_of(method: str, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """The orders a create call carries, each a copy with its category (a batch names it once)."""
    if method == "place_order":
        return [dict(kwargs)]
    requests = kwargs.get("request")
    if not isinstance(requests, list) or not all(isinstance(r, dict) for r in requests):
        return []  # malformed: the exchange refuses it with its own message
    return [{"category": kwargs.get("category", ""), **r} for r in requests]


def with_orders(method: str, kwargs: dict[str, Any], orders: list[dict[str, Any]]) -> dict[str, Any]:
    """``kwargs`` with its orders replaced (to carry the orderLinkIds made for them)."""
    if method == "place_order":
        return orders[0]
    return {**kwargs, "request": [{k: v for k, v in o.items() if k != "category"} for o in orders]}
