"""PaperExchange: a simulated Bybit v5 account that answers pybit method calls offline.

``call(method, kwargs)`` takes pybit's method names and Bybit's camelCase
parameters and returns the real exchange's envelope, numbers as strings;
errors are envelopes with Bybit's retCode, never exceptions. Linear USDT
perpetuals (market data also answers "spot"), one-way mode, whole fills, fixed
leverage, no funding, no liquidation.

The account is one JSON document in the store. Every call first matches
resting orders against the walk up to ``clock()``; calls that change the
account do it inside ``store.update_blob`` (one compare-and-swap), so
processes sharing an account lose no order and a new PaperExchange continues
where the last stopped. Reads write only when that matching filled an order.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any, Callable, cast

import msgspec

from quantlab.errors import ApiError, BadInput
from quantlab.store.store import Store
from quantlab.exchange import paper_state
from quantlab.exchange.accounts import Account
from quantlab.exchange.paper_state import SETTLE, Market, Order, OrderType, PaperState, Position, Side, TimeInForce
from quantlab.exchange.paper_state import advance, amend, close, fmt, margins, match_resting, place

log = logging.getLogger(__name__)

BLOB_KIND = "paper"  #: store.get_blob(BLOB_KIND, account name) holds the account
#: store.get_blob(ARCHIVE_KIND, "<account>.<shard>") holds orderLinkIds older than the document's list.
ARCHIVE_KIND = "paper-links"
ARCHIVE_SHARDS = 64  #: shards of the archive: a placement reads one, of 1/64 of the old ids
ARCHIVE_BATCH = 1_000  #: ids moved to the archive at a time, once the document holds this many extra

_MARKET_CATEGORIES = ("linear", "spot")
_TRADE_CATEGORIES = ("linear",)
_INTERVALS = {"1": 60, "3": 180, "5": 300, "15": 900, "30": 1800, "60": 3600, "120": 7200,
              "240": 14400, "360": 21600, "720": 43200, "D": 86400, "W": 604800}  # fmt: skip
_WEEK_OFFSET = 4 * 86400  # weekly candles open on Monday; 1970-01-01 was a Thursday
#: Built here, on the importing thread: msgspec works out a Struct's field types on first use, and
#: a decode racing that on another thread (the API and reconciliation threads) crashed a worker.
_decode_state = msgspec.json.Decoder(PaperState).decode
_LINK_ID = re.compile(r"^[A-Za-z0-9_-]{1,36}$")  # Bybit's orderLinkId alphabet and length
_TIME_IN_FORCE = ("GTC", "IOC", "FOK", "PostOnly")
_UNSUPPORTED = ("triggerPrice", "takeProfit", "stopLoss", "tpslMode", "isLeverage", "marketUnit")


@dataclass(frozen=True)
class _Call:
    account: Account
    state: PaperState
    market: Market
    ms: int
    archived: Callable[[str], bool]  #: was this orderLinkId used before the document's list begins?

    @property
    def now(self) -> int:
        return self.ms // 1000


Handler = Callable[[_Call, dict[str, Any]], dict[str, Any]]


class PaperExchange:
    """One paper account; safe to call from several threads and several processes at once."""

    def __init__(self, account: Account, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.account = account
        self._store = store
        self._clock = clock
        # filelock polls every 50 ms when contended: this process's writers queue here instead.
        self._lock = threading.Lock()

    def call(self, method: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Run one pybit method; always a Bybit v5 envelope."""
        ms = self._ms()
        try:
            result = self._dispatch(method, kwargs)
        except ApiError as e:
            return _envelope(ms, {}, e.ret_code, e.message)
        except Exception as e:  # a bug or an unreadable store reaches the strategy as Bybit's 10016
            log.exception("paper account %s: %s failed", self.account.name, method)
            return _envelope(ms, {}, 10016, f"paper account error: {e}")
        return _envelope(ms, result)

    def set_price(self, symbol: str, price: float) -> None:
        """Pin ``symbol``'s price from now on (tests and benchmarks); resting orders it reaches fill."""
        if not (math.isfinite(price) and price > 0):
            raise BadInput(f"price must be a positive number, got {price!r}")

        def pin(call: _Call, kwargs: dict[str, Any]) -> dict[str, Any]:
            call.state.pins[symbol] = price
            match_resting(call.state, symbol, price, price, call.ms)
            return {}

        self._write(pin, {})

    def _ms(self) -> int:
        return int(self._clock() * 1000)

    def _dispatch(self, method: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(kwargs, dict):
            raise ApiError("parameters must be keyword arguments", 10001)
        if method in _WRITES:
            return self._write(_WRITES[method], kwargs)
        if method in _READS:
            return self._read(_READS[method], kwargs)
        raise ApiError(f"paper account does not support {method}", 10001)

    def _load(self, raw: bytes | None, ms: int) -> PaperState:
        if raw is None:
            return PaperState(balances=dict(self.account.balances), checked_at=ms // 1000)
        return _decode_state(raw)

    def _read(self, handler: Handler, kwargs: dict[str, Any]) -> dict[str, Any]:
        ms = self._ms()
        state = self._load(self._store.get_blob(BLOB_KIND, self.account.name), ms)
        market = Market(self.account.seed, state.pins)
        if advance(state, market, ms):
            # Persist the fill: once the catch-up window moves past it, it could not be found again.
            self._write(None, {})
        return handler(_Call(self.account, state, market, ms, self._archived), kwargs)

    def _write(self, handler: Handler | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Run ``handler`` on the stored state as one compare-and-swap; store the result unless refused."""
        outcome: dict[str, Any] = {}

        def update(raw: bytes | None) -> bytes | None:
            outcome.clear()  # a store may run ``update`` again after a conflict: only the last run counts
            ms = self._ms()  # read in each attempt, so the walk anchor never moves backwards
            state = self._load(raw, ms)
            market = Market(self.account.seed, state.pins)
            filled = advance(state, market, ms)
            try:
                outcome["result"] = handler(_Call(self.account, state, market, ms, self._archived), kwargs) if handler else {}
            except ApiError as e:
                outcome["error"] = e
                return msgspec.json.encode(state) if filled else None  # refused, but the fills stand
            return msgspec.json.encode(state) if handler or filled else None

        with self._lock:
            raw = self._store.update_blob(BLOB_KIND, self.account.name, update)
            self._archive_overflow(raw)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    # ---- the orderLinkId archive ----
    #
    # Bybit never accepts an orderLinkId twice, so neither may the simulator, however long the
    # account lives; the document holds the newest ids and the archive every older one. Ids are
    # written to the archive first and trimmed from the document after, so at every moment each
    # is in one place or both: a crash in between leaves it in both, and the next trim goes on.

    def _archived(self, link_id: str) -> bool:
        return link_id in self._shard(self._shard_key(link_id))

    def _shard_key(self, link_id: str) -> str:
        return f"{self.account.name}.{zlib.crc32(link_id.encode()) % ARCHIVE_SHARDS:02d}"

    def _shard(self, key: str) -> set[str]:
        raw = self._store.get_blob(ARCHIVE_KIND, key)
        return set(msgspec.json.decode(raw, type=list[str])) if raw else set()

    def _archive_overflow(self, raw: bytes | None) -> None:
        """Move the oldest ids out of the document once it holds a batch more than it keeps."""
        if raw is None:
            return
        ids = _decode_state(raw).link_ids
        keep = paper_state.LINK_IDS_KEEP
        batch = min(ARCHIVE_BATCH, max(1, keep // 2))  # small bounds (tests) archive in smaller batches
        if len(ids) <= keep + batch - 1:
            return
        moving = ids[: len(ids) - keep]
        by_shard: dict[str, list[str]] = {}
        for link_id in moving:
            by_shard.setdefault(self._shard_key(link_id), []).append(link_id)
        for key, added in by_shard.items():
            self._store.update_blob(ARCHIVE_KIND, key, functools.partial(_union, added=added))
        gone = set(moving)

        def trim(old: bytes | None) -> bytes | None:
            if old is None:
                return None
            state = _decode_state(old)
            kept = [i for i in state.link_ids if i not in gone]
            state.archived += len(state.link_ids) - len(kept)
            state.link_ids = kept
            return msgspec.json.encode(state)

        self._store.update_blob(BLOB_KIND, self.account.name, trim)


def _union(old: bytes | None, *, added: list[str]) -> bytes:
    ids = msgspec.json.decode(old, type=list[str]) if old else []
    known = set(ids)
    return msgspec.json.encode(ids + [i for i in added if i not in known])


def _envelope(ms: int, result: dict[str, Any], code: int = 0, message: str = "OK") -> dict[str, Any]:
    return {"retCode": code, "retMsg": message, "result": result, "retExtInfo": {}, "time": ms}


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


def _symbol(call: _Call, kwargs: dict[str, Any], required: bool = True) -> str:
    symbol = _text(kwargs, "symbol", required)
    if symbol and symbol not in call.account.symbols:
        traded = ", ".join(call.account.symbols)
        raise ApiError(f"symbol invalid: paper account {call.account.name!r} trades {traded}, not {symbol}", 10001)
    return symbol


def _scope(call: _Call, kwargs: dict[str, Any], required: bool) -> Callable[[str], bool]:
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


def _find(call: _Call, kwargs: dict[str, Any], symbol: str) -> Order:
    order_id, link_id = _text(kwargs, "orderId"), _text(kwargs, "orderLinkId")
    if not (order_id or link_id):
        raise ApiError("orderId or orderLinkId is required", 10001)
    for order in call.state.open:
        if order.symbol == symbol and (order.order_id == order_id or (link_id and order.link_id == link_id)):
            return order
    raise ApiError(f"order {order_id or link_id} does not exist or is no longer open", 110001)


# ---- the methods ----


def _server_time(call: _Call, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"timeSecond": str(call.now), "timeNano": str(call.ms * 1_000_000)}


def _get_tickers(call: _Call, kwargs: dict[str, Any]) -> dict[str, Any]:
    category = _category(kwargs, _MARKET_CATEGORIES)
    symbol = _symbol(call, kwargs, required=False)
    symbols = [symbol] if symbol else call.account.symbols
    return {"category": category, "list": [call.market.ticker(s, call.now) for s in symbols]}


def _get_kline(call: _Call, kwargs: dict[str, Any]) -> dict[str, Any]:
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


def _get_wallet_balance(call: _Call, kwargs: dict[str, Any]) -> dict[str, Any]:
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


def _get_positions(call: _Call, kwargs: dict[str, Any]) -> dict[str, Any]:
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


def _order_list(call: _Call, kwargs: dict[str, Any], orders: list[Order], scope_required: bool) -> dict[str, Any]:
    category = _category(kwargs, _TRADE_CATEGORIES)
    scope, limit, status = _scope(call, kwargs, scope_required), _limit(kwargs, 20, 50), _text(kwargs, "orderStatus")
    found = [o for o in orders if scope(o.symbol) and _matches_ids(o, kwargs) and status in ("", o.status)]
    return {"category": category, "list": [o.row() for o in found[:limit]], "nextPageCursor": ""}


def _get_open_orders(call: _Call, kwargs: dict[str, Any]) -> dict[str, Any]:
    return _order_list(call, kwargs, call.state.open[::-1], scope_required=True)


def _get_order_history(call: _Call, kwargs: dict[str, Any]) -> dict[str, Any]:
    orders = sorted(call.state.open + call.state.closed, key=lambda o: o.created_ms, reverse=True)
    return _order_list(call, kwargs, orders, scope_required=False)


def _new_order(call: _Call, kwargs: dict[str, Any]) -> Order:
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


def _place_order(call: _Call, kwargs: dict[str, Any]) -> dict[str, Any]:
    _category(kwargs, _TRADE_CATEGORIES)
    order = _new_order(call, kwargs)
    place(call.state, call.market, order, call.ms, call.archived)
    return {"orderId": order.order_id, "orderLinkId": order.link_id}


def _amend_order(call: _Call, kwargs: dict[str, Any]) -> dict[str, Any]:
    _category(kwargs, _TRADE_CATEGORIES)
    order = _find(call, kwargs, _symbol(call, kwargs))
    qty, price = _number(kwargs, "qty", required=False), _number(kwargs, "price", required=False)
    if qty is None and price is None:
        raise ApiError("nothing to amend: pass qty or price", 10001)
    amend(call.state, call.market, order, qty or order.qty, price or order.price, call.ms)
    return {"orderId": order.order_id, "orderLinkId": order.link_id}


def _cancel_order(call: _Call, kwargs: dict[str, Any]) -> dict[str, Any]:
    _category(kwargs, _TRADE_CATEGORIES)
    order = _find(call, kwargs, _symbol(call, kwargs))
    close(call.state, order, "Cancelled", call.ms, cancel_type="CancelByUser")
    return {"orderId": order.order_id, "orderLinkId": order.link_id}


def _cancel_all_orders(call: _Call, kwargs: dict[str, Any]) -> dict[str, Any]:
    _category(kwargs, _TRADE_CATEGORIES)
    scope = _scope(call, kwargs, required=True)
    cancelled = [o for o in call.state.open if scope(o.symbol)]
    for order in cancelled:
        close(call.state, order, "Cancelled", call.ms, cancel_type="CancelByUser")
    return {"list": [{"orderId": o.order_id, "orderLinkId": o.link_id} for o in cancelled], "success": "1"}


_READS: dict[str, Handler] = {
    "get_server_time": _server_time,
    "get_tickers": _get_tickers,
    "get_kline": _get_kline,
    "get_wallet_balance": _get_wallet_balance,
    "get_positions": _get_positions,
    "get_open_orders": _get_open_orders,
    "get_order_history": _get_order_history,
}
_WRITES: dict[str, Handler] = {
    "place_order": _place_order,
    "amend_order": _amend_order,
    "cancel_order": _cancel_order,
    "cancel_all_orders": _cancel_all_orders,
}
