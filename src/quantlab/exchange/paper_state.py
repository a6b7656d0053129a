"""The paper account's market and ledger: a seeded price walk, orders, positions, a USDT wallet.

Everything here is pure: functions take a PaperState and change it in memory;
quantlab.exchange.paper loads and stores it, one JSON document per account, and
answers with the Bybit v5 rows the records and the market render here.

The walk is a function of (seed, symbol, second), never of the account's
history: the log price at each day boundary is drawn on its own (so prices
stay near the symbol's plausible level however long an account lives), and
every finer grid (hours, minutes, seconds) is a Brownian bridge between the
points of the grid above, drawn from a random.Random seeded by the unit's
name. Any second's price therefore costs a few cached draws, whenever and
however often it is observed.

Kept whole past 400 lines: walk and ledger are one pure model; a fill reads from price to wallet in one file.
"""

from __future__ import annotations

import math
import random
from functools import lru_cache
from typing import Any, Callable, Iterator, Literal

import msgspec

from quantlab.errors import ApiError

VOLATILITY = 0.0005  #: standard deviation of the log price per second (0.05 %)
LEVERAGE = 10.0  #: fixed leverage of every position; initial margin = notional / LEVERAGE
TAKER_FEE = 0.00055  #: fee rate of market and marketable orders (Bybit's base linear rate)
MAKER_FEE = 0.0002  #: fee rate of resting limit orders when they fill
CATCH_UP_CAP = 3600  #: seconds of walk matched against resting orders after a gap; older ones are jumped
CLOSED_KEEP = 500  #: filled and cancelled orders kept for get_order_history
LINK_IDS_KEEP = 20_000  #: orderLinkIds kept in the account's document; older ones go to the archive (paper.py)
SETTLE = "USDT"  #: the coin every linear contract settles in
TURNOVER_PER_SECOND = 1_000.0  #: USDT traded per second in a calm market; volatile candles trade more

_GRID = (86_400, 3_600, 60, 1)  # day, hour, minute, second: each unit is a bridge over the next
_DAY_SD = VOLATILITY * math.sqrt(_GRID[0] / 2)  # two independent day points differ by one day's volatility
_BASE = {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0}

Side = Literal["Buy", "Sell"]
OrderType = Literal["Market", "Limit"]
TimeInForce = Literal["GTC", "IOC", "FOK", "PostOnly"]


def fmt(x: float, places: int = 8) -> str:
    """Bybit's number strings: fixed point, no trailing zeros."""
    text = f"{x:.{places}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


@lru_cache(maxsize=4096)  # ~2 KB an entry; the current minute, hour and day are all a live account needs
def _path(seed: int, symbol: str, depth: int, index: int) -> tuple[float, ...]:
    """Log prices (relative to the base) at the sub-grid points of unit ``index``, both ends included."""
    size, sub = _GRID[depth], _GRID[depth + 1]
    if depth == 0:
        start, end = _day_point(seed, symbol, index), _day_point(seed, symbol, index + 1)
    else:
        ratio = _GRID[depth - 1] // size
        parent = _path(seed, symbol, depth - 1, index // ratio)
        start, end = parent[index % ratio], parent[index % ratio + 1]
    steps = size // sub
    rng = random.Random(f"{seed}:{symbol}:{depth}:{index}")  # str seeds hash the same in every process
    sd = VOLATILITY * math.sqrt(sub)
    walk = [0.0]
    for _ in range(steps):
        walk.append(walk[-1] + rng.gauss(0.0, sd))
    drift = (end - start - walk[-1]) / steps  # pins the walk's far end to ``end``: a bridge
    return tuple(start + w + drift * j for j, w in enumerate(walk))


def _day_point(seed: int, symbol: str, day: int) -> float:
    return random.Random(f"{seed}:{symbol}:day:{day}").gauss(0.0, _DAY_SD)


class Walk:
    """The seeded price of one symbol at every whole second."""

    def __init__(self, seed: int, symbol: str) -> None:
        self.seed = seed
        self.symbol = symbol
        self.base = _BASE.get(symbol, 100.0)
        self.tick = 10.0 ** (math.floor(math.log10(self.base)) - 5)  # six significant digits

    def price(self, t: int) -> float:
        return self._to_price(self._log(t))

    def _log(self, t: int) -> float:
        return _path(self.seed, self.symbol, 2, t // 60)[t % 60]

    def _to_price(self, log_price: float) -> float:
        return round(self.base * math.exp(log_price) / self.tick) * self.tick

    def _log_points(self, a: int, b: int, step: int) -> Iterator[float]:
        """Log prices at the multiples of ``step`` (1, 60 or 3600 s) from ``a`` to ``b`` inclusive."""
        depth = _GRID.index(step) - 1
        size = _GRID[depth]
        for unit in range(a // size, b // size + 1):
            path = _path(self.seed, self.symbol, depth, unit)
            first = max(0, -((unit * size - a) // step))  # ceil((a - unit start) / step)
            last = min(len(path) - 1, (b - unit * size) // step)
            yield from path[first : last + 1]

    def candle(self, a: int, b: int, samples: int) -> tuple[float, float, float, float]:
        """Open, high, low, close from second ``a`` to ``b``.

        High and low come from the finest grid (seconds, minutes or hours) that
        needs at most ``samples`` points, so a day's candle costs 24 draws, not 86,400.
        """
        step = next((g for g in (1, 60) if (b - a) // g <= samples), 3600)
        points = [self._log(a), self._log(b), *self._log_points(a, b, step)]
        return self.price(a), self._to_price(max(points)), self._to_price(min(points)), self.price(b)


class Market:
    """Prices of an account's symbols: the walk, or the price a test pinned."""

    def __init__(self, seed: int, pins: dict[str, float]) -> None:
        self.seed = seed
        self.pins = pins

    def walk(self, symbol: str) -> Walk:
        return Walk(self.seed, symbol)

    def price(self, symbol: str, t: int) -> float:
        pinned = self.pins.get(symbol)
        return pinned if pinned is not None else self.walk(symbol).price(t)

    def candle(self, symbol: str, a: int, b: int, samples: int = 300) -> tuple[float, float, float, float]:
        pinned = self.pins.get(symbol)
        if pinned is not None:
            return pinned, pinned, pinned, pinned
        return self.walk(symbol).candle(a, b, samples)

    def ticker(self, symbol: str, now: int) -> dict[str, Any]:
        """The symbol's row in get_tickers, its 24 h figures from the walk."""
        last, tick = self.price(symbol, now), self.walk(symbol).tick
        before, high, low, _ = self.candle(symbol, now - 86400, now)
        turnover = _turnover(86400, before, high, low)
        return {
            "symbol": symbol, "lastPrice": fmt(last), "indexPrice": fmt(last), "markPrice": fmt(last),
            "prevPrice24h": fmt(before), "price24hPcnt": fmt(last / before - 1, 6), "highPrice24h": fmt(high),
            "lowPrice24h": fmt(low), "prevPrice1h": fmt(self.price(symbol, now - 3600)),
            "bid1Price": fmt(last - tick), "bid1Size": "1", "ask1Price": fmt(last + tick), "ask1Size": "1",
            "volume24h": fmt(turnover / last), "turnover24h": fmt(turnover), "openInterest": "0",
            "fundingRate": "0", "nextFundingTime": str((now // 28800 + 1) * 28800 * 1000),  # none is charged
        }  # fmt: skip

    def klines(self, symbol: str, size: int, offset: int, start: int, end: int, limit: int) -> list[list[str]]:
        """get_kline rows of ``size`` seconds, newest first, the newest holding second ``end``."""
        rows: list[list[str]] = []
        opened = (end - offset) // size * size + offset
        while len(rows) < limit and opened + size > start and opened >= 0:
            o, h, low, c = self.candle(symbol, opened, min(opened + size - 1, end))
            turnover = _turnover(size, o, h, low)
            rows.append([str(opened * 1000), fmt(o), fmt(h), fmt(low), fmt(c), fmt(turnover / c), fmt(turnover)])
            opened -= size
        return rows


def _turnover(seconds: int, opened: float, high: float, low: float) -> float:
    return TURNOVER_PER_SECOND * seconds * (1 + 100 * (high - low) / opened)


class Order(msgspec.Struct, kw_only=True):
    order_id: str
    link_id: str
    symbol: str
    side: Side
    type: OrderType
    qty: float
    price: float  #: the limit price; 0 for a market order
    tif: TimeInForce
    reduce_only: bool = False
    status: Literal["New", "Filled", "Cancelled"] = "New"
    filled: float = 0.0
    avg_price: float = 0.0
    fee: float = 0.0
    cancel_type: str = "UNKNOWN"
    reject_reason: str = "EC_NoError"
    created_ms: int
    updated_ms: int
    #: Who placed it: the strategy and epoch of the guarded write whose commit accepted it (``stamp``);
    #: "" and None for a write without a strategy. Not part of Bybit's rows: the ledger's own evidence.
    strategy: str = ""
    epoch: int | None = None

    @property
    def sign(self) -> int:
        return 1 if self.side == "Buy" else -1

    def row(self) -> dict[str, Any]:
        """The order as get_open_orders and get_order_history list it."""
        leaves = self.qty - self.filled if self.status == "New" else 0.0
        return {
            "orderId": self.order_id, "orderLinkId": self.link_id, "symbol": self.symbol, "side": self.side,
            "orderType": self.type, "price": fmt(self.price), "qty": fmt(self.qty), "timeInForce": self.tif,
            "orderStatus": self.status, "avgPrice": fmt(self.avg_price), "leavesQty": fmt(leaves),
            "leavesValue": fmt(leaves * self.price), "cumExecQty": fmt(self.filled),
            "cumExecValue": fmt(self.filled * self.avg_price), "cumExecFee": fmt(self.fee),
            "reduceOnly": self.reduce_only, "positionIdx": 0, "cancelType": self.cancel_type,
            "rejectReason": self.reject_reason,
            "createdTime": str(self.created_ms), "updatedTime": str(self.updated_ms),
        }  # fmt: skip


class Position(msgspec.Struct, kw_only=True):
    size: float = 0.0  #: signed: long above zero, short below
    avg_price: float = 0.0
    realised: float = 0.0  #: cumulative realised PnL net of fees, as Bybit's cumRealisedPnl
    created_ms: int = 0
    updated_ms: int = 0

    def row(self, symbol: str, mark: float) -> dict[str, Any]:
        """The position as get_positions lists it; side "" is a flat one-way position."""
        side = "" if not self.size else ("Buy" if self.size > 0 else "Sell")
        return {
            "positionIdx": 0, "symbol": symbol, "side": side, "size": fmt(abs(self.size)),
            "avgPrice": fmt(self.avg_price), "positionValue": fmt(abs(self.size) * self.avg_price),
            "leverage": fmt(LEVERAGE), "markPrice": fmt(mark),
            "unrealisedPnl": fmt(self.size * (mark - self.avg_price)),
            "cumRealisedPnl": fmt(self.realised), "positionIM": fmt(abs(self.size) * mark / LEVERAGE),
            "positionStatus": "Normal", "tradeMode": 0,
            "createdTime": str(self.created_ms), "updatedTime": str(self.updated_ms),
        }  # fmt: skip


class PaperState(msgspec.Struct, kw_only=True):
    """One paper account: the whole JSON document kept in the store."""

    balances: dict[str, float]  #: wallet balance per coin; trading settles in SETTLE
    positions: dict[str, Position] = {}
    open: list[Order] = []  #: resting orders, oldest first
    closed: list[Order] = []  #: newest last, at most CLOSED_KEEP
    link_ids: list[str] = []  #: the newest orderLinkIds used, oldest first: Bybit refuses reuse
    archived: int = 0  #: how many older orderLinkIds were moved to the archive (never forgotten)
    pins: dict[str, float] = {}
    checked_at: int  #: the walk anchor: resting orders were matched up to this second
    #: strategy -> the lowest epoch whose writes the account still takes: the fencing token a
    #: reconciliation raises before it settles the strategy's intents (quantlab/exchange/paper.py)
    fences: dict[str, int] = {}
    halts_seen: int = 0  #: bumped by each halt written, so a write that checked the halts before it must check again


class Margins(msgspec.Struct, frozen=True):
    wallet: float
    unrealised: float
    position_im: float
    order_im: float

    @property
    def equity(self) -> float:
        return self.wallet + self.unrealised

    @property
    def available(self) -> float:
        return self.equity - self.position_im - self.order_im


def _qty(x: float) -> float:
    return round(x, 9)  # float dust would leave 1e-17 BTC positions open


def increase(position: Position | None, side: Side, qty: float) -> float:
    """The part of an order that adds to the position's exposure (the part that needs margin)."""
    size = position.size if position else 0.0
    opposite = abs(size) if size and (size > 0) != (side == "Buy") else 0.0
    return max(0.0, qty - opposite)


def order_im(state: PaperState, order: Order, at: float) -> float:
    """Initial margin an order holds at price ``at``; a reduce-only order holds none."""
    if order.reduce_only:
        return 0.0
    return increase(state.positions.get(order.symbol), order.side, order.qty) * at / LEVERAGE


def margins(state: PaperState, market: Market, now: int) -> Margins:
    unrealised = position_im = 0.0
    for symbol, pos in state.positions.items():
        if pos.size:
            mark = market.price(symbol, now)
            unrealised += pos.size * (mark - pos.avg_price)
            position_im += abs(pos.size) * mark / LEVERAGE
    orders = sum(order_im(state, o, o.price) for o in state.open)
    return Margins(state.balances.get(SETTLE, 0.0), unrealised, position_im, orders)


def place(
    state: PaperState, market: Market, order: Order, ms: int, archived: Callable[[str], bool] = lambda _: False
) -> None:
    """Accept ``order`` (ApiError 110072/110007/110017 if it cannot be), then fill or rest it.

    ``archived(link_id)`` says whether an id older than the document's list was used.
    """
    if order.link_id and (order.link_id in state.link_ids or (state.archived and archived(order.link_id))):
        raise ApiError("OrderLinkedID is duplicate", 110072)
    price = market.price(order.symbol, ms // 1000)
    if order.reduce_only:
        order.qty = min(order.qty, _reducible(state.positions.get(order.symbol), order.side))
        if order.qty <= 0:
            raise ApiError("reduce-only order has no opposite position to reduce", 110017)
    check_margin(state, market, order, price, ms)
    if order.link_id:
        state.link_ids.append(order.link_id)  # trimmed only once archived (PaperExchange)
    state.open.append(order)
    match_new(state, order, price, ms)


def stamp(state: PaperState, result: dict[str, Any], strategy: str, epoch: int, ms: int) -> None:
    """Name the strategy and epoch on the order a guarded write placed at ``ms`` (``result`` names it by orderId).

    Run inside the write's compare-and-swap, so the stamp is the one of the attempt that commits.
    """
    order_id = result.get("orderId")
    for order in reversed(state.open + state.closed):
        if order.order_id == order_id and order.created_ms == ms and order.epoch is None:
            order.strategy, order.epoch = strategy, epoch
            return


def amend(state: PaperState, market: Market, order: Order, qty: float, limit: float, ms: int) -> None:
    """Change a resting order's qty and price; it may fill at once if the new price is marketable."""
    price = market.price(order.symbol, ms // 1000)
    if order.reduce_only:
        qty = min(qty, _reducible(state.positions.get(order.symbol), order.side))
        if qty <= 0:
            raise ApiError("reduce-only order has no opposite position to reduce", 110017)
    changed = msgspec.structs.replace(order, qty=qty, price=limit)
    check_margin(state, market, changed, price, ms, replacing=order)
    order.qty, order.price, order.updated_ms = qty, limit, ms
    match_new(state, order, price, ms)


def check_margin(
    state: PaperState, market: Market, order: Order, price: float, ms: int, replacing: Order | None = None
) -> None:
    """Refuse an order whose initial margin (and taker fee) exceeds the available balance.

    Only the part that adds exposure needs margin, so closing a losing position is never refused.
    """
    at = price if order.type == "Market" else order.price
    grows = 0.0 if order.reduce_only else increase(state.positions.get(order.symbol), order.side, order.qty)
    need = grows * at * (1 / LEVERAGE + (TAKER_FEE if order.type == "Market" else 0.0))
    if replacing is not None:  # an amended order gives back the margin it held
        need -= order_im(state, replacing, replacing.price)
    free = margins(state, market, ms // 1000).available
    if need > 0 and need > free + 1e-9:
        raise ApiError(f"ab not enough for new order: needs {need:.4f} {SETTLE}, available {free:.4f}", 110007)


def _reducible(position: Position | None, side: Side) -> float:
    if position is None or not position.size or (position.size > 0) == (side == "Buy"):
        return 0.0
    return abs(position.size)


def match_new(state: PaperState, order: Order, price: float, ms: int) -> None:
    """A new or amended order meets the book: fill it now (taker), cancel it, or let it rest."""
    marketable = order.type == "Market" or (order.price - price) * order.sign >= 0
    if marketable and order.tif == "PostOnly":
        close(state, order, "Cancelled", ms, reject_reason="EC_PostOnlyWillTakeLiquidity")
    elif marketable:
        execute(state, order, price, TAKER_FEE, ms)
    elif order.tif in ("IOC", "FOK"):
        close(state, order, "Cancelled", ms, reject_reason="EC_NoImmediateQtyToFill")


def advance(state: PaperState, market: Market, ms: int) -> bool:
    """Fill the resting orders the price crossed since the last match; True if any filled."""
    now = ms // 1000
    if now <= state.checked_at:
        return False
    start = max(state.checked_at + 1, now - CATCH_UP_CAP + 1)  # a long gap jumps, so catching up stays cheap
    filled = False
    for symbol in sorted({o.symbol for o in state.open}):
        _, high, low, _ = market.candle(symbol, start, now, samples=CATCH_UP_CAP)
        filled |= match_resting(state, symbol, low, high, ms)
    state.checked_at = now
    return filled


def match_resting(state: PaperState, symbol: str, low: float, high: float, ms: int) -> bool:
    """Fill ``symbol``'s resting limit orders that a price range [low, high] reached, at their limit."""
    filled = False
    for order in [o for o in state.open if o.symbol == symbol]:
        reached = low <= order.price if order.side == "Buy" else high >= order.price
        if reached:
            execute(state, order, order.price, MAKER_FEE, ms)
            filled = True
    return filled


def execute(state: PaperState, order: Order, price: float, fee_rate: float, ms: int) -> None:
    """Fill the whole order at ``price``: move the position, settle PnL and fee in the wallet."""
    position = state.positions.setdefault(order.symbol, Position(created_ms=ms))
    qty = min(order.qty, _reducible(position, order.side)) if order.reduce_only else order.qty
    if qty <= 0:  # the position a reduce-only order was for is gone, as Bybit does
        close(state, order, "Cancelled", ms, cancel_type="CancelByReduceOnly")
        return
    pnl = _move(position, qty * order.sign, price)
    fee = qty * price * fee_rate
    state.balances[SETTLE] = state.balances.get(SETTLE, 0.0) + pnl - fee
    position.realised += pnl - fee
    position.updated_ms = ms
    order.filled, order.avg_price, order.fee = qty, price, fee
    close(state, order, "Filled", ms)


def _move(position: Position, qty: float, price: float) -> float:
    """Add signed ``qty`` at ``price`` to the position; the PnL it realises."""
    size, avg = position.size, position.avg_price
    new = _qty(size + qty)
    if not size or (size > 0) == (qty > 0):
        position.size, position.avg_price = new, (abs(size) * avg + abs(qty) * price) / abs(new)
        return 0.0
    pnl = min(abs(qty), abs(size)) * (price - avg) * (1 if size > 0 else -1)
    flipped = new and (new > 0) != (size > 0)
    position.size, position.avg_price = new, price if flipped else (avg if new else 0.0)
    return pnl


def close(state: PaperState, order: Order, status: Literal["Filled", "Cancelled"], ms: int, *,
          cancel_type: str = "UNKNOWN", reject_reason: str = "EC_NoError") -> None:
    order.status, order.updated_ms = status, ms
    order.cancel_type, order.reject_reason = cancel_type, reject_reason
    state.open.remove(order)
    state.closed.append(order)
    del state.closed[:-CLOSED_KEEP]
