"""Watches positions and balance on its accounts; logs changes, reports drawdowns.

    qlab strategy assign strategies/positions_monitor.py --account paper --param max_loss=50

Read-only: it never places an order. A position whose unrealised loss passes
``max_loss`` (USDT) is reported to the worker with ``ctx.send``, which records
it in the events log (`qlab events`).
"""

ACCOUNTS = ["paper"]

DEFAULTS = {"settle_coin": "USDT", "max_loss": 100.0}


def st_init(ctx):
    ctx.state.setdefault("last", {})
    ctx.log.info("monitoring %s", ", ".join(ctx.api.bybit))


def st_heartbeat(ctx, tick):
    p = {**DEFAULTS, **ctx.params}
    for name in ctx.api.bybit:
        summary = _summary(ctx.api.bybit[name], p["settle_coin"])
        if summary != ctx.state["last"].get(name):
            ctx.log.info("%s: %s", name, summary)
            ctx.state["last"][name] = summary
        for symbol, pnl in summary["pnl"].items():
            if pnl < -float(p["max_loss"]):
                ctx.send({"alert": "drawdown", "account": name, "symbol": symbol, "unrealised_pnl": pnl})


def st_exit(ctx, reason):
    ctx.log.info("monitor exiting: %s", reason.type)


def _summary(account, coin):
    positions = account.get_positions(category="linear", settleCoin=coin)["result"]["list"]
    wallet = account.get_wallet_balance(accountType="UNIFIED")["result"]["list"][0]
    return {
        "equity": wallet["totalEquity"],
        "positions": {p["symbol"]: f'{p["side"]} {p["size"]}' for p in positions if float(p["size"])},
        "pnl": {p["symbol"]: float(p["unrealisedPnl"] or 0) for p in positions if float(p["size"])},
    }
