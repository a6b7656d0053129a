"""The kill switch end to end: `qlab halt` during a burst of orders, against the fake Bybit."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import Lab, wait_for
from tests.fakes.bybit import FakeBybit, keyed_fake

SECRET = "s3cr3t-Halt-7yQ2vN7mL4kR9w"
KEY = "HALTKEY123"
CREATE, CANCEL, CANCEL_ALL = "/v5/order/create", "/v5/order/cancel", "/v5/order/cancel-all"

BURST = '''
from quantlab import ApiError, ApiHaltedError
ACCOUNTS = ["live"]
def st_init(ctx):
    ctx.state.setdefault("n", 0)
def st_heartbeat(ctx, tick):
    api = ctx.api.bybit["live"]
    ctx.state["n"] += 1
    n = ctx.state["n"]
    ctx.state["halted"] = ctx.halted
    if ctx.halted:
        ctx.state["saw_halted"] = True
    try:
        api.place_order(category="linear", symbol="BTCUSDT", side="Buy", orderType="Limit", qty="0.01",
                        price="100", orderLinkId=f"{ctx.id}-{n}")
        ctx.state.setdefault("open", []).append(f"{ctx.id}-{n}")
    except ApiHaltedError:
        ctx.state["refused"] = ctx.state.get("refused", 0) + 1
    if ctx.halted and ctx.state.get("open"):  # cancels pass a halt: its orders placed before it go one by one
        try:
            api.cancel_order(category="linear", symbol="BTCUSDT", orderLinkId=ctx.state["open"].pop(0))
        except ApiError:
            pass
def st_exit(ctx, reason):
    pass
'''


@pytest.fixture
def fake() -> Iterator[FakeBybit]:
    yield from keyed_fake(KEY, SECRET)


def accounts_file(lab: Lab, fake: FakeBybit) -> Path:
    accounts = lab.home / "env.jsonl"
    accounts.write_text(json.dumps({"name": "live", "type": "bybit", "api_key": KEY, "api_secret_env": "QLAB_HALT_SECRET",
                                    "endpoint": fake.url, "timeout": 2.0, "rate_limit": 500}) + "\n")
    return accounts


def test_halt_during_a_burst_of_orders(lab: Lab, fake: FakeBybit) -> None:
    """The kill switch: nothing that opens exposure leaves once `qlab halt` returned."""
    lab.director()
    lab.worker("w1", "--accounts", str(accounts_file(lab, fake)), env={"QLAB_HALT_SECRET": SECRET})
    for i in range(2):
        lab.assign(lab.strategy(f"burst{i}", BURST), "--interval", "0.02")
    wait_for(lambda: fake.accepted(CREATE) >= 20, timeout=20, what="a burst of orders")

    lab.run("halt", "--all")
    halted_at = time.monotonic()
    cancels = len([r for r in fake.requests if r.path == CANCEL])
    wait_for(lambda: all(lab.state(f"burst{i}").get("refused", 0) >= 3 for i in range(2)), what="refused orders")
    wait_for(lambda: len([r for r in fake.requests if r.path == CANCEL]) > cancels + 3, what="cancels going on")
    late = [r for r in fake.requests if r.path == CREATE and r.arrived > halted_at]
    assert late == [], f"{len(late)} order(s) left after the halt was written"
    wait_for(lambda: lab.state("burst0").get("saw_halted"), what="ctx.halted in the strategy")
    assert all(lab.work(f"burst{i}").result.status == "running" for i in range(2))  # still ticking
    status = lab.status()
    assert [(h["scope"], h["target"]) for h in status["halts"]] == [("all", "")]
    assert "HALTED: all" in lab.run("status").stdout

    assert "resumed: all" in lab.run("resume", "--all").stdout
    accepted = fake.accepted(CREATE)
    wait_for(lambda: fake.accepted(CREATE) > accepted + 5, what="orders again after resume")
    wait_for(lambda: lab.state("burst0").get("halted") is False, what="ctx.halted cleared")
    assert lab.status()["halts"] == []

    lab.run("halt", "--account", "live", "--cancel-orders")
    wait_for(lambda: any(r.path == CANCEL_ALL for r in fake.requests), what="the worker cancelling every order")
    assert fake.outcomes(CANCEL_ALL) == [0]
    wait_for(lambda: lab.status()["halts"][0]["cancelled_by"] == ["w1"], what="the cancel noted")
    wait_for(lambda: lab.events("halt_cancelled"), what="the cancel's event")
    assert [e.detail.split(":")[0] for e in lab.events("halted")] == ["halted", "halted"]
    assert [e.detail for e in lab.events("resumed")] == ["resumed: all"]


RESTING = '''
ACCOUNTS = ["live"]
def st_init(ctx):
    ctx.state["found"] = sorted(o["orderLinkId"] for o in ctx.open_orders)
def st_heartbeat(ctx, tick):
    if tick.seq <= 2:  # two resting orders, with orderLinkIds made by quantlab
        ctx.api.bybit["live"].place_order(category="linear", symbol="BTCUSDT", side="Buy", orderType="Limit",
                                          qty="0.01", price="100")
def st_exit(ctx, reason):
    pass
'''


def test_halt_of_one_strategy_cancels_its_own_orders_only(lab: Lab, fake: FakeBybit) -> None:
    """--cancel-orders with --strategy: its orders are known by their orderLinkIds."""
    lab.director()
    lab.worker("w1", "--accounts", str(accounts_file(lab, fake)), env={"QLAB_HALT_SECRET": SECRET})
    for name in ("one", "two"):
        lab.assign(lab.strategy(name, RESTING), "--interval", "0.05")
    wait_for(lambda: len(fake.orders()) == 4, what="two resting orders each")
    lab.run("halt", "--strategy", "one", "--cancel-orders")
    wait_for(lambda: lab.events("halt_cancelled"), what="the cancel's event")
    left = {o["orderLinkId"]: o["orderStatus"] for o in fake.orders()}
    assert left == {"one-1-1": "Cancelled", "one-1-2": "Cancelled", "two-1-1": "New", "two-1-2": "New"}
    assert "cancelled 2 open order(s) on live" in lab.events("halt_cancelled")[0].detail


def test_halt_input_errors(lab: Lab) -> None:
    both = lab.run("halt", "--all", "--account", "x", check=False)
    assert both.returncode == 2 and "exactly one" in both.stderr
    bad_name = lab.run("halt", "--strategy", "no/such", check=False)
    assert bad_name.returncode == 1 and bad_name.stderr.startswith("Error: ")
    nothing = lab.run("resume", "--worker", "w9", check=False)
    assert nothing.returncode == 1 and "no halt" in nothing.stderr
