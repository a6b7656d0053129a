"""A small grid bot on the paper account: buy below the price, sell above it.

    qlab up strategies/grid_paper.py

It runs offline on the built-in ``paper`` account. To trade live, assign it
with ``--account NAME --param account=NAME`` (a bybit account the worker
serves): nothing else changes.

Restarts never duplicate an order: every orderLinkId is derived from
``ctx.state`` (the grid's round and level), which survives restarts. If the
child dies after placing an order but before its state was saved, the same id
is sent again and the exchange refuses the duplicate (retCode 110072), which
the bot takes as "already placed".

An order that leaves the book is a fill only when the exchange says it filled
(its ``orderStatus`` in the order history): one cancelled from outside (``qlab
halt --cancel-orders``, a person on the exchange's site) is noted as cancelled,
and the grid starts a new round around the price, with new orders.
"""

import re

from quantlab import ApiError, ApiHaltedError

ACCOUNTS = ["paper"]  # what `qlab strategy assign` uses when --account is not given

DUPLICATE_LINK_ID = 110072
#: Bybit's orderStatus values of an order that is off the book for good
ENDED = ("Filled", "Cancelled", "PartiallyFilledCanceled", "Rejected", "Deactivated")
DEFAULTS = {"account": "paper", "symbol": "BTCUSDT", "levels": 3, "step": 0.0005, "qty": "0.001"}


def st_init(ctx):
    for key, value in {"round": 0, "center": None, "placed": [], "filled": [], "fills": 0}.items():
        ctx.state.setdefault(key, value)
    p = _params(ctx)
    ctx.log.info("grid on %s %s, round %d", p["account"], p["symbol"], ctx.state["round"])


def st_heartbeat(ctx, tick):
    p = _params(ctx)
    api = ctx.api.bybit[p["account"]]
    price = float(api.get_tickers(category="linear", symbol=p["symbol"])["result"]["list"][0]["lastPrice"])
    if ctx.state["center"] is None:
        ctx.state["center"] = price
    _note_fills(ctx, api, p, price)
    if ctx.halted:
        return  # `qlab halt` refuses new orders (ApiHaltedError): wait for `qlab resume`
    if abs(price / ctx.state["center"] - 1) > int(p["levels"]) * float(p["step"]):
        _recenter(ctx, api, p, price, f"price {price:.2f} left the grid")
    _place_missing(ctx, api, p)


def st_exit(ctx, reason):
    # Orders stay on the book across restarts and failovers; an operator's stop takes them off.
    if reason.type == "manual":
        p = _params(ctx)
        ctx.api.bybit[p["account"]].cancel_all_orders(category="linear", symbol=p["symbol"])
        ctx.state["placed"] = []
    ctx.log.info("grid exiting (%s) after %d fills", reason.type, ctx.state["fills"])


def _safe(strategy_id):
    """Bybit allows only [A-Za-z0-9_-] in an orderLinkId, 36 characters at most."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", strategy_id)[:20]


def _params(ctx):
    return {**DEFAULTS, **ctx.params}


def _note_fills(ctx, api, p, price):
    book = api.get_open_orders(category="linear", symbol=p["symbol"])["result"]["list"]
    resting = {order["orderLinkId"] for order in book}
    cancelled = False
    for link in [link for link in ctx.state["placed"] if link not in resting]:
        status = _status(api, p, link)
        if status not in ENDED:
            continue  # not in the history yet (the exchange's lists lag a moment): look again next tick
        ctx.state["placed"].remove(link)
        if status == "Filled":
            ctx.state["filled"].append(link)
            ctx.state["fills"] += 1
            ctx.log.info("filled %s near %.2f", link, price)
            ctx.send({"filled": link, "near": round(price, 2)})  # shows in `qlab events` and `qlab up`
        else:
            cancelled = True
            ctx.log.info("cancelled %s (%s), not filled", link, status)
    if cancelled:  # its level stays taken in this round (its orderLinkId is used): start a new one
        _recenter(ctx, api, p, price, "orders were cancelled")


def _status(api, p, link):
    """The order's orderStatus at the exchange ("Filled", "Cancelled", ...); "" when not found."""
    rows = api.get_order_history(category="linear", symbol=p["symbol"], orderLinkId=link)["result"]["list"]
    return rows[0]["orderStatus"] if rows else ""


def _recenter(ctx, api, p, price, why):
    api.cancel_all_orders(category="linear", symbol=p["symbol"])
    ctx.state.update(round=ctx.state["round"] + 1, center=price, placed=[], filled=[])
    ctx.log.info("%s: round %d centred at %.2f", why, ctx.state["round"], price)


def _place_missing(ctx, api, p):
    center, step = ctx.state["center"], float(p["step"])
    done = set(ctx.state["placed"]) | set(ctx.state["filled"])
    for k in range(1, int(p["levels"]) + 1):
        for side, price in (("Buy", center * (1 - k * step)), ("Sell", center * (1 + k * step))):
            link = f"{_safe(ctx.id)}-r{ctx.state['round']}-{side[0]}{k}"
            if link in done:
                continue
            try:
                api.place_order(category="linear", symbol=p["symbol"], side=side, orderType="Limit",
                                qty=p["qty"], price=f"{price:.2f}", orderLinkId=link)
            except ApiHaltedError:
                return  # halted since this tick began: wait for `qlab resume`
            except ApiError as e:
                if e.ret_code != DUPLICATE_LINK_ID:
                    raise
            ctx.state["placed"].append(link)
