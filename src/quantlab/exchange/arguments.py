"""A call's keyword arguments, checked before anything is sent: flat, capped, and typed where they move money.

Every argument must be a scalar the exchange takes: text of at most MAX_TEXT
characters, a finite number, a boolean (quantlab/exchange/allowlist.py). The
methods that move orders or positions have their fields typed here, so that a
quantity or a price is a finite, non-negative decimal (a risk limit can judge
it) and an order's ids fit Bybit's; a batch's ``request`` is a list of at most
Bybit's batch size of such orders. Fields not named here pass as capped
scalars: Bybit adds parameters, and a strategy may use them.

``check`` raises ``Failure`` with Bybit's 10001 and the argument's path
(``request[3].qty``): the caller's error, never the worker's.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from quantlab.exchange.allowlist import BATCH_LIMITS, MAX_ARGUMENTS, MAX_BATCH, MAX_TEXT
from quantlab.exchange.job import Failure

PARAMS_ERROR = 10001  #: Bybit's retCode for a bad parameter

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
Text = Annotated[str, Meta(max_length=MAX_TEXT)]
Finite = Annotated[float, Meta(ge=-1e18, le=1e18)]
Scalar = Text | Annotated[int, Meta(ge=-(10**18), le=10**18)] | Finite | bool | None

_CATEGORY = r"^(linear|inverse|spot|option)$"
_SYMBOL = r"^[A-Za-z0-9_/-]{1,40}$"
_LINK_ID = r"^[A-Za-z0-9_-]{0,36}$"
_ORDER_ID = r"^[A-Za-z0-9_-]{0,64}$"
_AMOUNT = r"^[0-9]{1,20}(\.[0-9]{1,20})?$"
_MAYBE_AMOUNT = r"^([0-9]{1,20}(\.[0-9]{1,20})?)?$"
_SIGNED = r"^-?[0-9]{1,20}(\.[0-9]{1,20})?$"
Category = Annotated[str, Meta(pattern=_CATEGORY)]
Symbol = Annotated[str, Meta(pattern=_SYMBOL)]
Short = Annotated[str, Meta(max_length=32)]
LinkId = Annotated[str, Meta(pattern=_LINK_ID)]
OrderId = Annotated[str, Meta(pattern=_ORDER_ID)]
#: A quantity or a price: a decimal string as Bybit takes it, or a finite number, never negative.
Amount = (Annotated[str, Meta(pattern=_AMOUNT)] | Annotated[int, Meta(ge=0, le=10**18)]
          | Annotated[float, Meta(ge=0, le=1e18)])
#: An amount a call may leave out: null or "" (Bybit takes an empty price for a market order).
MaybeAmount = (Annotated[str, Meta(pattern=_MAYBE_AMOUNT)] | Annotated[int, Meta(ge=0, le=10**18)]
               | Annotated[float, Meta(ge=0, le=1e18)] | None)
#: A signed amount (a margin change: "-10" reduces it).
Signed = Annotated[str, Meta(pattern=_SIGNED)] | Annotated[int, Meta(ge=-(10**18), le=10**18)] | Finite


class _Args(msgspec.Struct, kw_only=True):
    pass


class _OrderFields(_Args, kw_only=True):
    symbol: Symbol
    side: Short
    orderType: Short
    qty: Amount
    price: MaybeAmount = None
    orderLinkId: LinkId | None = None
    triggerPrice: MaybeAmount = None
    takeProfit: MaybeAmount = None
    stopLoss: MaybeAmount = None
    tpLimitPrice: MaybeAmount = None
    slLimitPrice: MaybeAmount = None


class Order(_OrderFields, kw_only=True):
    category: Category


class _Target(_Args, kw_only=True):
    symbol: Symbol
    orderId: OrderId | None = None
    orderLinkId: LinkId | None = None


class _AmendFields(_Target, kw_only=True):
    qty: MaybeAmount = None
    price: MaybeAmount = None
    triggerPrice: MaybeAmount = None
    takeProfit: MaybeAmount = None
    stopLoss: MaybeAmount = None
    tpLimitPrice: MaybeAmount = None
    slLimitPrice: MaybeAmount = None


class Amend(_AmendFields, kw_only=True):
    category: Category


class Cancel(_Target, kw_only=True):
    category: Category


class CancelAll(_Args, kw_only=True):
    category: Category
    symbol: Symbol | None = None
    baseCoin: Short | None = None
    settleCoin: Short | None = None


class _Batch(_Args, kw_only=True):
    category: Category


class PlaceBatch(_Batch, kw_only=True):
    request: Annotated[list[_OrderFields], Meta(min_length=1, max_length=MAX_BATCH)]


class AmendBatch(_Batch, kw_only=True):
    request: Annotated[list[_AmendFields], Meta(min_length=1, max_length=MAX_BATCH)]


class CancelBatch(_Batch, kw_only=True):
    request: Annotated[list[_Target], Meta(min_length=1, max_length=MAX_BATCH)]


class Leverage(_Args, kw_only=True):
    category: Category
    symbol: Symbol
    buyLeverage: Amount
    sellLeverage: Amount


class TradingStop(_Args, kw_only=True):
    category: Category
    symbol: Symbol
    takeProfit: MaybeAmount = None
    stopLoss: MaybeAmount = None
    trailingStop: MaybeAmount = None
    activePrice: MaybeAmount = None
    tpSize: MaybeAmount = None
    slSize: MaybeAmount = None
    tpLimitPrice: MaybeAmount = None
    slLimitPrice: MaybeAmount = None


class Margin(_Args, kw_only=True):
    category: Category
    symbol: Symbol
    margin: Signed


#: The methods whose fields are typed; any other allowed method's arguments are checked as Flat.
TYPED: dict[str, type[_Args]] = {
    "place_order": Order, "pre_check_order": Order, "amend_order": Amend, "cancel_order": Cancel,
    "cancel_all_orders": CancelAll, "place_batch_order": PlaceBatch, "amend_batch_order": AmendBatch,
    "cancel_batch_order": CancelBatch, "set_leverage": Leverage, "set_trading_stop": TradingStop,
    "add_or_reduce_margin": Margin,
}


def check(method: str, kwargs: Any) -> None:
    """Raise Failure (10001, naming the argument) unless ``kwargs`` fit ``method``'s arguments."""
    typed = TYPED.get(method)
    try:
        _flat(kwargs, "", skip="request" if typed is not None and issubclass(typed, _Batch) else "")
        if typed is None:
            return
        args = msgspec.convert(kwargs, typed)
        for i, item in enumerate(kwargs.get("request") or []):
            _flat(item, f"request[{i}].")
    except (msgspec.ValidationError, _Bad) as e:
        raise Failure(f"{method}: bad arguments: {_path(str(e))} (retCode {PARAMS_ERROR}); nothing was sent",
                      PARAMS_ERROR, "api") from None
    _check_ids(method, args)
    if isinstance(args, (PlaceBatch, AmendBatch, CancelBatch)):
        _check_batch(method, args)


class _Bad(Exception):
    """An argument that is not a capped scalar."""


def _flat(args: Any, where: str, skip: str = "") -> None:
    """``args`` is a map of at most MAX_ARGUMENTS names to capped scalars (``skip`` is typed elsewhere)."""
    if not isinstance(args, dict):
        raise _Bad(f"expected keyword arguments, got {type(args).__name__}{_at(where.rstrip('.'))}")
    if len(args) > MAX_ARGUMENTS:
        raise _Bad(f"{len(args)} arguments, at most {MAX_ARGUMENTS}{_at(where.rstrip('.'))}")
    for key, value in args.items():
        if not (isinstance(key, str) and _NAME.match(key)):
            raise _Bad(f"an argument's name must be 1-64 letters, digits or _, got {str(key)[:40]!r}")
        if key == skip:
            continue
        try:
            msgspec.convert(value, Scalar)
        except msgspec.ValidationError:
            raise _Bad(f"expected text of at most {MAX_TEXT} characters, a finite number, a boolean or null, "
                       f"got {_shown(value)}{_at(where + key)}") from None


def _at(where: str) -> str:
    return f", at `{where}`" if where else ""


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return f"text of {len(value)} characters"
    if isinstance(value, float):
        return repr(value)
    return type(value).__name__


def _check_ids(method: str, args: _Args) -> None:
    targets: list[Any] = list(args.request) if isinstance(args, (AmendBatch, CancelBatch)) else [args]
    for target in targets:
        if isinstance(target, _Target) and not (target.orderId or target.orderLinkId):
            raise Failure(f"{method}: orderId or orderLinkId is required (retCode {PARAMS_ERROR}); nothing was sent",
                          PARAMS_ERROR, "api")


def _check_batch(method: str, args: PlaceBatch | AmendBatch | CancelBatch) -> None:
    most = BATCH_LIMITS[args.category]
    count = len(args.request)
    if count > most:
        raise Failure(f"{method}: {count} orders in one batch: Bybit takes at most {most} for {args.category} "
                      f"(retCode {PARAMS_ERROR}); nothing was sent", PARAMS_ERROR, "api")


#: What the typed fields' patterns mean, for the message (msgspec quotes the pattern).
_PATTERNS = {
    _AMOUNT.replace("\\", "\\\\"): "expected a non-negative decimal number",
    _MAYBE_AMOUNT.replace("\\", "\\\\"): "expected a non-negative decimal number",
    _SIGNED.replace("\\", "\\\\"): "expected a decimal number",
    _SYMBOL: "expected a symbol (1-40 letters, digits, _, / or -)",
    _LINK_ID: "expected an orderLinkId (at most 36 letters, digits, _ or -)",
    _ORDER_ID: "expected an orderId (at most 64 letters, digits, _ or -)",
    _CATEGORY: "expected a category: linear, inverse, spot or option",
}


def _path(message: str) -> str:
    """msgspec's ``- at `$.request[3].qty``` as ``, at `request[3].qty```."""
    for pattern, words in _PATTERNS.items():
        message = message.replace(f"Expected `str` matching regex '{pattern}'", words)
    return message.replace(" - at `$.", ", at `")
