"""Risk limits, per strategy and per account: order notional, orders per minute, open orders.

    qlab strategy assign FILE --max-order-notional 5000 --max-orders-per-minute 30 --max-open-orders 10
    {"name": "main", "type": "bybit", ..., "max_order_notional": 20000, "max_open_orders": 50}   (env.jsonl)

The API pool checks every order (``place_order``, each order of
``place_batch_order``) against the limits of its strategy and of its account
before the order's intent is written, and every amend's order against the
notional limits (quantlab/exchange/changing.py); a breach is refused unsent with retCode
RISK_REFUSED (``ApiRiskError`` in the strategy) and recorded as a
``risk_refused`` event. Notional is qty x price in the quote coin, with the
last traded price for market orders (spot market buys in quoteCoin are their
qty). Orders per minute count what was sent in the last 60 s on this worker.
Open orders are counted at the exchange as each order is checked (the
strategy's own by their orderLinkId, with its live orders placed too recently
for the exchange to list them: quantlab/exchange/orders.py SHOWN_WITHIN),
under a per-account lock held until the order is answered, so two orders
cannot both take the last free place.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

import msgspec

if TYPE_CHECKING:
    from quantlab.store.records import StrategySpec

#: The retCode of an order refused by a risk limit (quantlab's own: Bybit has none for it).
RISK_REFUSED = 170998
WINDOW = 60.0  #: seconds: "orders per minute"


class RiskLimits(msgspec.Struct, frozen=True, kw_only=True):
    max_order_notional: float | None = None  #: quote coin (USDT) per order
    max_orders_per_minute: int | None = None
    max_open_orders: int | None = None

    @classmethod
    def of(cls, spec: StrategySpec) -> RiskLimits:
        """A strategy's own limits, from its spec's fields (the store's records know nothing of the checks)."""
        return cls(max_order_notional=spec.max_order_notional, max_orders_per_minute=spec.max_orders_per_minute,
                   max_open_orders=spec.max_open_orders)

    @property
    def counts_open_orders(self) -> bool:
        return self.max_open_orders is not None


NO_LIMITS = RiskLimits()


class Refused(Exception):
    """An order breaks a limit; the message says which, in words an operator can act on."""


class Level(msgspec.Struct, frozen=True):
    """One set of limits and what it covers: ``strategy S`` or ``account A``."""

    label: str
    limits: RiskLimits
    strategy: str = ""  #: a strategy's level counts only that strategy's open orders


def notional(order: dict[str, Any], last_price: Callable[[], float]) -> float:
    """qty x price in the quote coin; ``last_price`` is asked only for an order without a price."""
    qty = _number(order.get("qty"))
    if order.get("category") == "spot" and order.get("marketUnit") == "quoteCoin":
        return qty
    price = _number(order.get("price")) if order.get("orderType") == "Limit" else 0.0
    return qty * (price or last_price())


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0  # the exchange refuses it with its own message
    return number if math.isfinite(number) else 0.0


def check_notional(levels: Iterable[Level], notionals: list[float]) -> None:
    """Raise Refused if an order's notional (of ``notionals``) is over a level's max-order-notional."""
    for level in levels:
        limit = level.limits.max_order_notional
        if limit is not None and notionals and max(notionals) > limit:
            raise Refused(f"order notional {max(notionals):,.2f} is over {level.label}'s "
                          f"max-order-notional {limit:,.2f}")


class RiskBook:
    """What the limits are judged against on one worker: the orders sent in the last minute; thread safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._sent: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)

    def check(
        self, levels: Iterable[Level], count: int, notionals: list[float], open_orders: Callable[[Level], int],
    ) -> None:
        """Raise Refused if ``count`` orders (``notionals``: theirs, when judged) break a limit; else count them as sent."""
        levels = list(levels)
        check_notional(levels, notionals)
        for level in levels:
            most = level.limits.max_open_orders
            if most is not None and (found := open_orders(level)) + count > most:
                raise Refused(f"{level.label} has {found} open order(s): {count} more would pass its "
                              f"max-open-orders {most}")
        with self._lock:
            now = self._clock()
            for level in levels:
                rate = level.limits.max_orders_per_minute
                sent = self._recent(level.label, now)
                if rate is not None and len(sent) + count > rate:
                    raise Refused(f"{level.label} sent {len(sent)} order(s) in the last minute: {count} more "
                                  f"would pass its max-orders-per-minute {rate}")
            for level in levels:
                self._sent[level.label].extend([now] * count)

    def _recent(self, label: str, now: float) -> collections.deque[float]:
        sent = self._sent[label]
        while sent and sent[0] <= now - WINDOW:
            sent.popleft()
        return sent
