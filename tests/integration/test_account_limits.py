"""An account's max_open_orders holds across workers and hosts: real workers, one paper account, one store.

Two strategies, each on its own worker (regions pin them), place an order on the same account in
the same round; the account allows one open order. Round after round, exactly one is accepted
and the other refused by the risk limit, on the file store and on PostgreSQL, where each worker
is a "host" with its own connection to the database.
"""

from __future__ import annotations

import json

import pytest

from quantlab.exchange.accounts import Account
from quantlab.exchange.paper import PaperExchange
from tests.conftest import Lab, wait_for

ROUNDS = 4
ACCOUNT = Account(name="shared", type="paper", max_open_orders=1, rate_limit=1000)

#: Places one order on the shared account for each new round the test writes into round.txt.
ONE_ORDER_A_ROUND = '''
import os
from quantlab import ApiRiskError
ACCOUNTS = ["shared"]
def st_init(ctx):
    pass
def st_exit(ctx, reason):
    pass
def st_heartbeat(ctx, tick):
    try:
        with open(os.path.join(os.path.dirname(__file__), "round.txt")) as f:
            round_ = int(f.read())
    except (FileNotFoundError, ValueError):
        return
    if round_ <= ctx.state.get("round", 0):
        return
    ctx.state["round"] = round_
    try:
        ctx.api.bybit["shared"].place_order(category="linear", symbol="BTCUSDT", side="Buy", orderType="Limit",
                                            qty="0.001", price="1000", orderLinkId=f"{ctx.id}-r{round_}")
        outcome = "accepted"
    except ApiRiskError:
        outcome = "refused"
    ctx.state.setdefault("outcomes", {})[str(round_)] = outcome
'''


def outcomes_of(lab: Lab, round_: int) -> list[str]:
    """What became of each strategy's order of ``round_``; [] until both know."""
    found = [lab.state(s).get("outcomes", {}).get(str(round_)) for s in ("a", "b")]
    return [] if None in found else found


def one_order_accepted_per_round(lab: Lab) -> None:
    accounts = lab.home / "env.jsonl"
    accounts.write_text(json.dumps({"name": "shared", "type": "paper", "max_open_orders": 1, "rate_limit": 1000}) + "\n")
    lab.director()
    for worker, region in (("w1", "JP"), ("w2", "US")):
        lab.worker(worker, "--accounts", str(accounts), region=region)
    source = lab.strategy("one_order", ONE_ORDER_A_ROUND)
    for strategy, region in (("a", "JP"), ("b", "US")):
        lab.assign(source, "--id", strategy, "--region", region, "--interval", "0.02")
    for strategy in ("a", "b"):
        lab.wait_status(strategy, "running", timeout=20)
    assert {lab.work(s).assignment.worker for s in ("a", "b")} == {"w1", "w2"}  # type: ignore[union-attr]

    exchange = PaperExchange(ACCOUNT, lab.store)
    for round_ in range(1, ROUNDS + 1):
        (lab.home / "round.txt").write_text(str(round_))
        outcomes = wait_for(lambda: outcomes_of(lab, round_), timeout=15, what=f"both strategies' orders of round {round_}")
        assert sorted(outcomes) == ["accepted", "refused"], (round_, outcomes)
        listed = exchange.call("get_open_orders", {"category": "linear", "symbol": "BTCUSDT"})["result"]["list"]
        assert len(listed) == 1, listed
        exchange.call("cancel_all_orders", {"category": "linear", "symbol": "BTCUSDT"})  # a free place for the next round
    refused = lab.events("risk_refused")
    assert len(refused) == ROUNDS and all("max-open-orders" in e.detail or "open orders" in e.detail for e in refused)


def test_max_open_orders_of_an_account_hold_for_two_workers_on_the_file_store(lab: Lab) -> None:
    one_order_accepted_per_round(lab)


@pytest.mark.timeout(90)
def test_max_open_orders_of_an_account_hold_for_two_hosts_on_postgresql(pg_lab: Lab) -> None:
    one_order_accepted_per_round(pg_lab)
