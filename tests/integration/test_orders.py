"""Order intents and reconciliation end to end: real workers and children, real pybit, the fake Bybit.

A crash between send and acknowledgement, a lost reply, a worker killed with
an order on the wire: no order is duplicated, every intent
settles, and the next start sees the open orders (or has the stale ones
cancelled) before its first tick.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Iterator

import msgspec
import pytest

from quantlab.exchange import intents
from quantlab.exchange.intents import IntentLog
from quantlab.exchange.risk import RISK_REFUSED
from tests.conftest import Lab, wait_for
from tests.fakes.bybit import FakeBybit, keyed_fake
from tests.fakes.bybit_limits import Untidy

SECRET = "s3cr3t-Orders-5tH8kW2qZ9"
KEY = "ORDERSKEY42"
CREATE = "/v5/order/create"

#: Places one resting order, unless its start found one: a restart must not place a second.
ONCE = '''
ACCOUNTS = ["live"]
def st_init(ctx):
    ctx.state["seen"] = sorted(o["orderLinkId"] for o in ctx.open_orders)
    ctx.state["starts"] = ctx.state.get("starts", 0) + 1
def st_heartbeat(ctx, tick):
    if not ctx.open_orders and "placed" not in ctx.state:
        reply = ctx.api.bybit["live"].place_order(category="linear", symbol="BTCUSDT", side="Buy",
                                                  orderType="Limit", qty="0.01", price="100")
        ctx.state["placed"] = reply["result"]["orderLinkId"]
        ctx.state["reply"] = reply["retMsg"]
def st_exit(ctx, reason):
    pass
'''


@pytest.fixture(params=["tidy", "untidy"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakeBybit]:
    """The fake Bybit, tidy and as untidy as Bybit: late lists, lagging history, pages, enforced rate limits."""
    yield from keyed_fake(KEY, SECRET, {"BTCUSDT": 50_000.0}, Untidy() if request.param == "untidy" else None)


def live_worker(lab: Lab, fake: FakeBybit, worker_id: str, *args: str) -> subprocess.Popen[bytes]:
    path = lab.home / "env.jsonl"
    path.write_text(json.dumps({"name": "live", "type": "bybit", "api_key": KEY, "api_secret_env": "QLAB_ORDERS_SECRET",
                                "endpoint": fake.url, "timeout": 5.0, "max_retries": 1}) + "\n")
    return lab.worker(worker_id, "--accounts", str(path), *args, env={"QLAB_ORDERS_SECRET": SECRET})


def intent_log(lab: Lab, strategy: str) -> IntentLog:
    raw = lab.store.get_blob(intents.BLOB_KIND, strategy)
    return IntentLog() if raw is None else msgspec.json.decode(raw, type=IntentLog)


def order_arrived(fake: FakeBybit) -> bool:
    return any(r.path == CREATE for r in fake.requests)


def test_a_strategy_killed_between_send_and_ack_finds_its_order_on_restart(lab: Lab, fake: FakeBybit) -> None:
    fake.hold_delay = 1.5  # the order is on the wire while the child dies
    fake.inject("hold", 1, path=CREATE)
    lab.director()
    live_worker(lab, fake, "w1")
    lab.assign(lab.strategy("once", ONCE), "--interval", "0.1", "--backoff", "0.1")
    wait_for(lambda: order_arrived(fake), what="the order reaching the exchange")
    # Its status (with the pid) may be written up to 50 ms after the child started (PUBLISH_GATHER).
    pid = wait_for(lambda: lab.work("once").result.pid, what="the child's pid in the store")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: lab.state("once").get("starts", 0) >= 1 and lab.work("once").result.restarts >= 1
             and lab.work("once").result.status == "running", timeout=15, what="the restarted strategy")
    wait_for(lambda: lab.work("once").result.heartbeats >= 5, what="heartbeats after the restart")
    placed = fake.orders()
    assert len(placed) == 1, placed
    assert lab.state("once")["seen"] == [placed[0]["orderLinkId"]]  # st_init saw it, and placed nothing more
    log = intent_log(lab, "once")
    assert log.open == [] and [(i.link_id, i.status) for i in log.settled] == [(placed[0]["orderLinkId"], "placed")]


def test_a_lost_reply_reaches_the_strategy_as_the_order_found_by_query(lab: Lab, fake: FakeBybit) -> None:
    lab.director()
    live_worker(lab, fake, "w1")
    fake.inject("ack_lost", 1, path=CREATE)
    lab.assign(lab.strategy("once", ONCE), "--interval", "0.1")
    wait_for(lambda: "placed" in lab.state("once"), timeout=20, what="the order's reply")
    assert "found by its orderLinkId" in lab.state("once")["reply"]
    assert len(fake.orders()) == 1 and fake.accepted(CREATE) == 1
    assert len([r for r in fake.requests if r.path == CREATE]) == 1  # never sent again
    assert intent_log(lab, "once").settled[0].status == "placed"


def test_a_worker_killed_with_an_order_on_the_wire_its_successor_settles_it_and_cancels_it_as_stale(
        lab: Lab, fake: FakeBybit) -> None:
    fake.hold_delay = 1.0  # inside the order's window: the exchange takes it after the worker died
    fake.inject("hold", 1, path=CREATE)
    lab.director()
    w1 = live_worker(lab, fake, "w1", "--lease-ttl", "5", "--drain-timeout", "1")
    lab.assign(lab.strategy("once", ONCE), "--interval", "0.1", "--cancel-stale-orders")
    wait_for(lambda: order_arrived(fake), what="the order reaching the exchange")
    first = lab.work("once").assignment
    w1.kill()
    live_worker(lab, fake, "w2", "--lease-ttl", "5", "--drain-timeout", "1")
    moved = wait_for(lambda: (a := lab.work("once").assignment) is not None and a.worker == "w2" and a, timeout=30,
                     what="the strategy on w2")
    assert first is not None and moved.epoch > first.epoch
    wait_for(lambda: lab.work("once").result.status == "running" and lab.state("once").get("starts") == 1,
             timeout=30, what="the strategy running on w2")
    settled = lab.wait_event("orders_settled", strategy="once")[0]
    stale = lab.wait_event("stale_orders", strategy="once")[0]
    old = f"once-{first.epoch}-1"
    assert f"{old} placed" in settled.detail and "cancelled" in stale.detail and old in stale.detail
    wait_for(lambda: "placed" in lab.state("once"), what="w2's own order")
    by_link = {o["orderLinkId"]: o["orderStatus"] for o in fake.orders()}
    assert by_link == {old: "Cancelled", f"once-{moved.epoch}-2": "New"}
    assert lab.state("once")["seen"] == []  # the stale order was cancelled before st_init


#: Places three resting orders at once under --max-open-orders 2, then amends and cancels the first by its
#: orderId at once: on Bybit a new order is listed only a moment after it was taken.
BURST = '''
from quantlab import ApiRiskError
ACCOUNTS = ["live"]
def st_init(ctx):
    pass
def st_heartbeat(ctx, tick):
    if "done" in ctx.state:
        return
    live = ctx.api.bybit["live"]
    order = dict(category="linear", symbol="BTCUSDT", side="Buy", orderType="Limit", qty="0.01", price="100")
    placed = [live.place_order(**order)["result"] for _ in range(2)]
    try:
        live.place_order(**order)
        ctx.state["third"] = "placed"
    except ApiRiskError as e:
        ctx.state["third"] = e.message
    first = dict(category="linear", symbol="BTCUSDT", orderId=placed[0]["orderId"])
    ctx.state["amended"] = live.amend_order(**first, qty="0.002")["retCode"]
    ctx.state["cancelled"] = live.cancel_order(**first)["retCode"]
    ctx.state["done"] = [p["orderLinkId"] for p in placed]
def st_exit(ctx, reason):
    pass
'''


def test_open_order_limits_amends_and_cancels_hold_before_the_exchange_lists_an_order(
        lab: Lab, fake: FakeBybit) -> None:
    lab.director()
    live_worker(lab, fake, "w1")
    lab.assign(lab.strategy("burst", BURST), "--interval", "0.2", "--max-open-orders", "2",
               "--max-order-notional", "5000")
    done = wait_for(lambda: lab.state("burst").get("done"), timeout=20, what="the burst")
    state = lab.state("burst")
    assert "strategy burst has 2 open order(s)" in state["third"], state
    assert (state["amended"], state["cancelled"]) == (0, 0), state
    by_link = {o["orderLinkId"]: (o["orderStatus"], o["qty"]) for o in fake.orders()}
    assert by_link == {done[0]: ("Cancelled", "0.002"), done[1]: ("New", "0.01")}


RISKY = '''
from quantlab import ApiRiskError
ACCOUNTS = ["paper"]
def st_init(ctx):
    pass
def st_heartbeat(ctx, tick):
    try:
        ctx.api.bybit["paper"].place_order(category="linear", symbol="BTCUSDT", side="Buy", orderType="Limit",
                                           qty="1", price="1000")
    except ApiRiskError as e:
        ctx.state["refused"] = [e.ret_code, e.message]
def st_exit(ctx, reason):
    pass
'''


def test_an_order_over_a_risk_limit_raises_in_the_strategy_and_is_an_event(lab: Lab) -> None:
    lab.director()
    lab.worker("w1")
    lab.assign(lab.strategy("risky", RISKY), "--max-order-notional", "500")
    wait_for(lambda: "refused" in lab.state("risky"), what="the refusal")
    code, message = lab.state("risky")["refused"]
    assert code == RISK_REFUSED and "max-order-notional 500.00" in message
    assert "max-order-notional" in lab.wait_event("risk_refused", strategy="risky")[0].detail
    assert intent_log(lab, "risky").settled == []  # refused before any intent was written


def test_risk_options_are_checked_at_assign(lab: Lab) -> None:
    bad = lab.run("strategy", "assign", str(lab.strategy("risky", RISKY)), "--max-order-notional", "-1", check=False)
    assert bad.returncode == 1 and bad.stderr == "Error: --max-order-notional must be positive, got -1\n"
