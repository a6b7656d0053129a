"""A strategy's API calls are hostile input: a real worker, two strategies on one paper account, one an attacker.

The attacker asks the worker to upload a file it names, amends its own order past its notional
limit, amends and cancels the other strategy's order and sweeps the account with cancel_all_orders.
Each is refused (or, for the sweep, takes only the attacker's own order), and the other
strategy's order stays as it was placed.
"""

from __future__ import annotations

import json

from quantlab.exchange.accounts import Account
from quantlab.exchange.paper import PaperExchange
from tests.conftest import Lab, wait_for

#: Places one resting order (0.001 at 1,000) and keeps its ids in ctx.state.
VICTIM = '''
ACCOUNTS = ["shared"]
def st_init(ctx):
    pass
def st_exit(ctx, reason):
    pass
def st_heartbeat(ctx, tick):
    if "order" not in ctx.state:
        reply = ctx.api.bybit["shared"].place_order(category="linear", symbol="BTCUSDT", side="Buy",
                                                    orderType="Limit", qty="0.001", price="1000")
        ctx.state["order"] = reply["result"]
'''

#: Once another strategy's order rests on the account, tries each attack once; ctx.state["tried"] says how each went.
ATTACKER = '''
import os
ACCOUNTS = ["shared"]
SECRET_FILE = os.path.join(os.path.dirname(__file__), "secret.txt")
def st_init(ctx):
    pass
def st_exit(ctx, reason):
    pass
def outcome(call):
    try:
        return {"ok": call()}
    except Exception as e:
        return {"error": type(e).__name__, "message": str(e)}
def st_heartbeat(ctx, tick):
    if "tried" in ctx.state:
        return
    api = ctx.api.bybit["shared"]
    listed = api.get_open_orders(category="linear", symbol="BTCUSDT")["result"]["list"]
    theirs = [o for o in listed if not o["orderLinkId"].startswith(ctx.id + "-")]
    if not theirs:
        return
    victim = theirs[0]
    mine = api.place_order(category="linear", symbol="BTCUSDT", side="Buy", orderType="Limit", qty="0.001",
                           price="1000")["result"]
    at = dict(category="linear", symbol="BTCUSDT")
    ctx.state["tried"] = {
        "upload": outcome(lambda: api.upload_chat_file(upload_file=SECRET_FILE)),
        "amend_own_past_limit": outcome(lambda: api.amend_order(**at, orderId=mine["orderId"], qty="50")),
        "amend_theirs": outcome(lambda: api.amend_order(**at, orderId=victim["orderId"], qty="50")),
        "amend_theirs_by_link": outcome(lambda: api.amend_order(**at, orderLinkId=victim["orderLinkId"], price="2000")),
        "cancel_theirs": outcome(lambda: api.cancel_order(**at, orderId=victim["orderId"])),
        "cancel_theirs_by_link": outcome(lambda: api.cancel_order(**at, orderLinkId=victim["orderLinkId"])),
        "cancel_all": outcome(lambda: api.cancel_all_orders(**at)["result"]["list"]),
    }
    ctx.state["mine"] = mine
'''

REFUSED = {
    "upload": ("ApiPermissionError", "upload_chat_file"),
    "amend_own_past_limit": ("ApiRiskError", "max-order-notional 100.00"),
    "amend_theirs": ("ApiPermissionError", "is not strategy attacker's"),
    "amend_theirs_by_link": ("ApiPermissionError", "is not strategy attacker's"),
    "cancel_theirs": ("ApiPermissionError", "is not strategy attacker's"),
    "cancel_theirs_by_link": ("ApiPermissionError", "is not strategy attacker's"),
}


def test_an_attacker_strategys_calls_change_nothing_of_its_neighbours(lab: Lab) -> None:
    accounts = lab.home / "env.jsonl"
    accounts.write_text(json.dumps({"name": "shared", "type": "paper", "rate_limit": 1000}) + "\n")
    (lab.home / "secret.txt").write_text("QLAB_SECRET=never-to-leave-this-host\n")
    lab.director()
    lab.worker("w1", "--accounts", str(accounts))
    lab.assign(lab.strategy("victim", VICTIM), "--id", "victim", "--interval", "0.1")
    lab.assign(lab.strategy("attacker", ATTACKER), "--id", "attacker", "--interval", "0.1",
               "--max-order-notional", "100")

    tried = wait_for(lambda: lab.state("attacker").get("tried"), timeout=30, what="the attacker's tries")
    for attack, (error, words) in REFUSED.items():
        assert tried[attack].get("error") == error and words in tried[attack]["message"], (attack, tried[attack])
    mine = lab.state("attacker")["mine"]
    assert tried["cancel_all"] == {"ok": [{"orderId": mine["orderId"], "orderLinkId": mine["orderLinkId"]}]}, tried

    theirs = lab.state("victim")["order"]
    exchange = PaperExchange(Account(name="shared", type="paper"), lab.store)
    listed = exchange.call("get_open_orders", {"category": "linear", "symbol": "BTCUSDT"})["result"]["list"]
    assert [(o["orderId"], o["qty"], o["price"]) for o in listed] == [(theirs["orderId"], "0.001", "1000")], listed
    assert lab.events("risk_refused", "attacker")
