"""The paper account's methods: Bybit v5's parameters checked, and each pybit method's answer.

Each handler takes a ``Call`` (the account's state as loaded for this call,
its market and the time) and Bybit's camelCase keyword arguments, changes the
state in memory through quantlab/exchange/paper_state.py, and returns the
``result`` of Bybit's envelope. A bad parameter raises ``ApiError`` with
Bybit's retCode and the parameter's name. Loading and storing the state, and
wrapping answers in envelopes, is quantlab/exchange/paper.py's: the handlers
never touch the store, so a write runs them inside one compare-and-swap and
may run them again after a conflict.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable, cast

from quantlab.errors import ApiError
from quantlab.exchange.accounts import Account
from quantlab.exchange.paper_state import SETTLE, Market, Order, OrderType, PaperState, Position, Side, TimeInForce
from quantlab.exchange.paper_state import amend, close, fmt, margins, place

_MARKET_CATEGORIES = ("linear", "spot")
_TRADE_CATEGORIES = ("linear",)
_INTERVALS = {"1": 60, "3": 180, "5": 300, "15": 900, "30": 1800, "60": 3600, "120": 7200,
              "240": 14400, "360": 21600, "720": 43200, "D": 86400, "W": 604800}  # fmt: skip
_WEEK_OFFSET = 4 * 86400  # weekly candles open on Monday; 1970-01-01 was a Thursday
_LINK_ID = re.compile(r"^[A-Za-z0-9_-]{1,36}$")  # Bybit's orderLinkId alphabet and length
_TIME_IN_FORCE = ("GTC", "IOC", "FOK", "PostOnly")
_UNSUPPORTED = ("triggerPrice", "takeProfit", "stopLoss", "tpslMode", "isLeverage", "marketUnit")


@dataclass(frozen=True)
class Call:
    """One method call's view of the account: its state as loaded for the call, its market, the time."""

    account: Account
    state: PaperState
    market: Market
    ms: int
    archived: Callable[[str], bool]  #: was this orderLinkId used before the document's list begins?

    @property
    def now(self) -> int:
        return self.ms // 1000


Handler = Callable[[Call, dict[str, Any]], dict[str, Any]]


# ---- parameters: each check raises ApiError(10001) with the parameter's name ----


def _text(kwargs: dict[str, Any], name: str, required: bool = False) -> str:
    value = kwargs.get(name)
    if value is None or value == "":
        if required:
            raise ApiError(f"{name} is required", 10001)
        return ""
    if not isinstance(value, str):
        raise ApiError(f"{name} must be a string, got {value!r}", 10001)
    return value


def _choice(kwargs: dict[str, Any], name: str, options: tuple[str, ...], default: str = "") -> str:
    value = _text(kwargs, name, required=not default) or default
    for option in options:
        if value.lower() == option.lower():
            return option
    raise ApiError(f"{name} {value!r} is not supported by the paper account (use {', '.join(options)})", 10001)


def _number(kwargs: dict[str, Any], name: str, required: bool = True) -> float | None:
    value = kwargs.get(name)
    if value is None or value == "":
        if required:
            raise ApiError(f"{name} is required", 10001)
        return None
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and round(number, 9) > 0):
        raise ApiError(f"{name} must be a positive number, got {value!r}", 10001)
    return round(number, 9)


def _integer(kwargs: dict[str, Any], name: str, default: int) -> int:
    value = kwargs.get(name)
    try:
        return default if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        raise ApiError(f"{name} must be an integer, got {value!r}", 10001) from None


def _limit(kwargs: dict[str, Any], default: int, most: int) -> int:
    limit = _integer(kwargs, "limit", default)
    if not 1 <= limit <= most:
        raise ApiError(f"limit must be from 1 to {most}, got {limit}", 10001)
    return limit


def _category(kwargs: dict[str, Any], allowed: tuple[str, ...]) -> str:
    category = _text(kwargs, "category", required=True)
    if category not in allowed:
        raise ApiError(f"category {category!r} is not supported by the paper account (use {', '.join(allowed)})", 10001)
    return category


def _symbol(call: Call, kwargs: dict[str, Any], required: bool = True) -> str:
    symbol = _text(kwargs, "symbol", required)
    if symbol and symbol not in call.account.symbols:
        traded = ", ".join(call.account.symbols)
        raise ApiError(f"symbol invalid: paper account {call.account.name!r} trades {traded}, not {symbol}", 10001)
    return symbol


def _scope(call: Call, kwargs: dict[str, Any], required: bool) -> Callable[[str], bool]:
    """The symbols a list or cancel-all call covers; Bybit needs one of these for linear."""
    symbol = _symbol(call, kwargs, required=False)
    base, settle = _text(kwargs, "baseCoin"), _text(kwargs, "settleCoin")
    if symbol:
        return lambda s: s == symbol
    if base:
        return lambda s: s.startswith(base) and s.endswith(SETTLE)
    if settle:
        return lambda s: s.endswith(settle)
    if required:
        raise ApiError("symbol, baseCoin or settleCoin is required for category linear", 10001)
    return lambda s: True


def _find(call: Call, kwargs: dict[str, Any], symbol: str) -> Order:
    order_id, link_id = _text(kwargs, "orderId"), _text(kwargs, "orderLinkId")
    if not (order_id or link_id):
        raise ApiError("orderId or orderLinkId is required", 10001)
    for order in call.state.open:
        if order.symbol == symbol and (order.order_id == order_id or (link_id and order.link_id == link_id)):
            return order
    raise ApiError(f"order {order_id or link_id} does not exist or is no longer open", 110001)


# ---- the methods ----


def _server_time(call: Call, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"timeSecond": str(call.now), "timeNano": str(call.ms * 1_000_000)}


def _get_tickers(call: Call, kwargs: dict[str, Any]) -> dict[str, Any]:
    category = _category(kwargs, _MARKET_CATEGORIES)
    symbol = _symbol(call, kwargs, required=False)
    symbols = [symbol] if symbol else call.account.symbols
    return {"category": category, "list": [call.market.ticker(s, call.now) for s in symbols]}


def _get_kline(call: Call, kwargs: dict[str, Any]) -> dict[str, Any]:
    category = _category(kwargs, _MARKET_CATEGORIES)
    symbol = _symbol(call, kwargs)
    interval = str(kwargs.get("interval", ""))
    if interval not in _INTERVALS:
        raise ApiError(f"interval {interval!r} is not supported by the paper account (use {', '.join(_INTERVALS)})",
                       10001)
    size, offset = _INTERVALS[interval], _WEEK_OFFSET if interval == "W" else 0
    end = min(call.now, _integer(kwargs, "end", call.ms) // 1000)
    start = _integer(kwargs, "start", 0) // 1000
    rows = call.market.klines(symbol, size, offset, start, end, _limit(kwargs, 200, 1000))
    return {"category": category, "symbol": symbol, "list": rows}


def _get_wallet_balance(call: Call, kwargs: dict[str, Any]) -> dict[str, Any]:
    account_type = _choice(kwargs, "accountType", ("UNIFIED", "CONTRACT"))
    wanted = {c.strip() for c in _text(kwargs, "coin").split(",") if c.strip()}
    m = margins(call.state, call.market, call.now)
    realised = sum(p.realised for p in call.state.positions.values())
    coins, equity_usd, wallet_usd = [], 0.0, 0.0
    for coin, balance in sorted(call.state.balances.items()):
        equity = m.equity if coin == SETTLE else balance
        rate = 1.0 if coin in ("USDT", "USDC") else call.market.price(coin + SETTLE, call.now)
        equity_usd, wallet_usd = equity_usd + equity * rate, wallet_usd + balance * rate
        if wanted and coin not in wanted:
            continue
        entry = {"coin": coin, "equity": fmt(equity), "usdValue": fmt(equity * rate),
                 "walletBalance": fmt(balance), "locked": "0", "borrowAmount": "0"}  # fmt: skip
        if coin == SETTLE:
            entry |= {"availableToWithdraw": fmt(max(0.0, m.available)), "totalOrderIM": fmt(m.order_im),
                      "totalPositionIM": fmt(m.position_im), "unrealisedPnl": fmt(m.unrealised),
                      "cumRealisedPnl": fmt(realised)}  # fmt: skip
        coins.append(entry)
    return {"list": [{
        "accountType": account_type, "totalEquity": fmt(equity_usd), "totalWalletBalance": fmt(wallet_usd),
        "totalMarginBalance": fmt(equity_usd), "totalAvailableBalance": fmt(max(0.0, m.available)),
        "totalPerpUPL": fmt(m.unrealised), "totalInitialMargin": fmt(m.position_im + m.order_im), "coin": coins,
    }]}  # fmt: skip


def _get_positions(call: Call, kwargs: dict[str, Any]) -> dict[str, Any]:
    category = _category(kwargs, _TRADE_CATEGORIES)
    symbol = _symbol(call, kwargs, required=False)
    scope = _scope(call, kwargs, required=True)
    held = sorted(s for s, p in call.state.positions.items() if p.size and scope(s))
    symbols = [symbol] if symbol else held  # a named symbol is listed even when flat, as Bybit does
    rows = [call.state.positions.get(s, Position()).row(s, call.market.price(s, call.now)) for s in symbols]
    return {"category": category, "list": rows, "nextPageCursor": ""}


def _matches_ids(order: Order, kwargs: dict[str, Any]) -> bool:
    order_id, link_id = _text(kwargs, "orderId"), _text(kwargs, "orderLinkId")
    return (not order_id or order.order_id == order_id) and (not link_id or order.link_id == link_id)


def _order_list(call: Call, kwargs: dict[str, Any], orders: list[Order], scope_required: bool) -> dict[str, Any]:
    category = _category(kwargs, _TRADE_CATEGORIES)
    scope, limit, status = _scope(call, kwargs, scope_required), _limit(kwargs, 20, 50), _text(kwargs, "orderStatus")
    found = [o for o in orders if scope(o.symbol) and _matches_ids(o, kwargs) and status in ("", o.status)]
    return {"category": category, "list": [o.row() for o in found[:limit]], "nextPageCursor": ""}


def _get_open_orders(call: Call, kwargs: dict[str, Any]) -> dict[str, Any]:
    return _order_list(call, kwargs, call.state.open[::-1], scope_required=True)


def _get_order_history(call: Call, kwargs: dict[str, Any]) -> dict[str, Any]:
    orders = sorted(call.state.open + call.state.closed, key=lambda o: o.created_ms, reverse=True)
    return _order_list(call, kwargs, orders, scope_required=False)


def _new_order(call: Call, kwargs: dict[str, Any]) -> Order:
    for name in _UNSUPPORTED:
        if kwargs.get(name) not in (None, "", 0, "0"):
            raise ApiError(f"paper account does not support {name}", 10001)
    if str(kwargs.get("positionIdx", 0)) != "0":
        raise ApiError("paper account is in one-way mode: positionIdx must be 0", 10001)
    link_id = _text(kwargs, "orderLinkId")
    if link_id and not _LINK_ID.match(link_id):
        raise ApiError("orderLinkId must be 1-36 letters, digits, _ or -", 10001)
    order_type = cast(OrderType, _choice(kwargs, "orderType", ("Market", "Limit")))
    limit = order_type == "Limit"
    return Order(
        order_id=str(uuid.uuid4()),
        link_id=link_id,
        symbol=_symbol(call, kwargs),
        side=cast(Side, _choice(kwargs, "side", ("Buy", "Sell"))),
        type=order_type,
        qty=_number(kwargs, "qty") or 0.0,
        price=(_number(kwargs, "price") or 0.0) if limit else 0.0,
        tif=cast(TimeInForce, _choice(kwargs, "timeInForce", _TIME_IN_FORCE, "GTC")) if limit else "IOC",
        reduce_only=kwargs.get("reduceOnly") in (True, "true", "True", 1),
        created_ms=call.ms,
        updated_ms=call.ms,
    )


def _place_order(call: Call, kwargs: dict[str, Any]) -> dict[str, Any]:
    _category(kwargs, _TRADE_CATEGORIES)
    order = _new_order(call, kwargs)
    place(call.state, call.market, order, call.ms, call.archived)
    return {"orderId": order.order_id, "orderLinkId": order.link_id}


def _amend_order(call: Call, kwargs: dict[str, Any]) -> dict[str, Any]:
    _category(kwargs, _TRADE_CATEGORIES)
    order = _find(call, kwargs, _symbol(call, kwargs))
    qty, price = _number(kwargs, "qty", required=False), _number(kwargs, "price", required=False)
    if qty is None and price is None:
        raise ApiError("nothing to amend: pass qty or price", 10001)
    amend(call.state, call.market, order, qty or order.qty, price or order.price, call.ms)
    return {"orderId": order.order_id, "orderLinkId": order.link_id}


def _cancel_order(call: Call, kwargs: dict[str, Any]) -> dict[str, Any]:
    _category(kwargs, _TRADE_CATEGORIES)
    order = _find(call, kwargs, _symbol(call, kwargs))
    close(call.state, order, "Cancelled", call.ms, cancel_type="CancelByUser")
    return {"orderId": order.order_id, "orderLinkId": order.link_id}


def _cancel_all_orders(call: Call, kwargs: dict[str, Any]) -> dict[str, Any]:
    _category(kwargs, _TRADE_CATEGORIES)
    scope = _scope(call, kwargs, required=True)
    cancelled = [o for o in call.state.open if scope(o.symbol)]
    for order in cancelled:
        close(call.state, order, "Cancelled", call.ms, cancel_type="CancelByUser")
    return {"list": [{"orderId": o.order_id, "orderLinkId": o.link_id} for o in cancelled], "success": "1"}


READS: dict[str, Handler] = {
    "get_server_time": _server_time,
    "get_tickers": _get_tickers,
    "get_kline": _get_kline,
    "get_wallet_balance": _get_wallet_balance,
    "get_positions": _get_positions,
    "get_open_orders": _get_open_orders,
    "get_order_history": _get_order_history,
}
WRITES: dict[str, Handler] = {
    "place_order": _place_order,
    "amend_order": _amend_order,
    "cancel_order": _cancel_order,
    "cancel_all_orders": _cancel_all_orders,
}
