"""ctx.api end to end: strategy -> worker -> paper account or real pybit -> fake Bybit -> back."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import Lab, wait_for
from tests.fakes.bybit import FakeBybit

SECRET = "s3cr3t-Zq8vN2mX7pL4kR9w"
KEY = "TESTKEY123"

PROBE = '''
from quantlab import ApiError, ApiNetworkError, ApiPermissionError
def st_init(ctx):
    ctx.state.setdefault("seen", [])
def st_heartbeat(ctx, tick):
    try:
        reply = ctx.api.bybit["live"].get_wallet_balance(accountType="UNIFIED")
        outcome = ["ok", reply["retCode"]]
    except ApiNetworkError as e:
        outcome = ["network", e.ret_code]
    except ApiPermissionError as e:
        outcome = ["permission", e.ret_code]
    except ApiError as e:
        outcome = ["api", e.ret_code]
    if not ctx.state["seen"] or ctx.state["seen"][-1] != outcome:
        ctx.state["seen"].append(outcome)
def st_exit(ctx, reason):
    pass
'''

TICKER = '''
def st_init(ctx): pass
def st_heartbeat(ctx, tick):
    ctx.state["n"] = ctx.state.get("n", 0) + 1
def st_exit(ctx, reason): pass
'''


@pytest.fixture
def fake() -> Iterator[FakeBybit]:
    with FakeBybit(slow_delay=3.0) as server:
        server.add_key(KEY, SECRET)
        yield server


def write_accounts(lab: Lab, fake: FakeBybit) -> Path:
    path = lab.home / "env.jsonl"
    lines = [
        {"name": "live", "type": "bybit", "api_key": KEY, "api_secret_env": "QLAB_TEST_SECRET",
         "endpoint": fake.url, "timeout": 0.5, "max_retries": 1, "rate_limit": 50},
        {"name": "paper", "type": "paper", "seed": 3},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


@pytest.fixture
def live(lab: Lab, fake: FakeBybit) -> Lab:
    accounts = write_accounts(lab, fake)
    lab.director()
    lab.worker("w1", "--accounts", str(accounts), env={"QLAB_TEST_SECRET": SECRET})
    return lab


def seen(lab: Lab, work_id: str) -> list[list[object]]:
    return lab.state(work_id).get("seen", [])


def test_paper_orders_positions_and_persistence(lab: Lab) -> None:
    source = '''
ACCOUNTS = ["paper"]
def st_init(ctx): pass
def st_heartbeat(ctx, tick):
    api = ctx.api.bybit["paper"]
    if "order" not in ctx.state:
        reply = api.place_order(category="linear", symbol="BTCUSDT", side="Buy", orderType="Market",
                                qty="0.01", orderLinkId="probe-1")
        ctx.state["order"] = reply["result"]["orderId"]
    pos = api.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"][0]
    ctx.state["size"] = pos["size"]
def st_exit(ctx, reason): pass
'''
    lab.director()
    worker = lab.worker("w1")
    lab.assign(lab.strategy("buyer", source), "--interval", "0.1")
    assert wait_for(lambda: lab.state("buyer").get("size"), what="a position") == "0.01"
    worker.send_signal(signal.SIGTERM)
    worker.wait(15)
    # a new worker process: the paper account is in the store, so the position and the used orderLinkId remain
    lab.worker("w2")
    lab.run("strategy", "restart", "buyer")
    dup = '''
from quantlab import ApiError
def st_init(ctx): pass
def st_heartbeat(ctx, tick):
    try:
        ctx.api.bybit["paper"].place_order(category="linear", symbol="BTCUSDT", side="Buy",
                                           orderType="Market", qty="0.01", orderLinkId="probe-1")
        ctx.state["dup"] = "accepted"
    except ApiError as e:
        ctx.state["dup"] = e.ret_code
    ctx.state["size"] = ctx.api.bybit["paper"].get_positions(category="linear", symbol="BTCUSDT")["result"]["list"][0]["size"]
def st_exit(ctx, reason): pass
'''
    lab.assign(lab.strategy("dup", dup), "--interval", "0.1", "--account", "paper")
    state = wait_for(lambda: (s := lab.state("dup")).get("dup") and s, what="the duplicate's answer")
    assert state["dup"] == 110072
    assert state["size"] == "0.01"


def test_permission_errors_raise_in_the_strategy(lab: Lab) -> None:
    source = '''
from quantlab import ApiPermissionError
def st_init(ctx): pass
def st_heartbeat(ctx, tick):
    out = {}
    for name, call in (("other", lambda: ctx.api.bybit["someone-else"].get_positions(category="linear")),
                       ("method", lambda: ctx.api.bybit["paper"].not_a_pybit_method()),
                       ("private", lambda: ctx.api.bybit["paper"]._submit_request())):
        try:
            call()
            out[name] = "allowed"
        except (ApiPermissionError, AttributeError) as e:
            out[name] = type(e).__name__ + ": " + str(e)
    ctx.state.update(out)
def st_exit(ctx, reason): pass
'''
    lab.director()
    lab.worker("w1")
    lab.assign(lab.strategy("nosy", source), "--interval", "0.1", "--account", "paper")
    state = wait_for(lambda: (s := lab.state("nosy")).get("other") and s, what="the strategy's findings")
    assert state["other"].startswith("ApiPermissionError") and "someone-else" in state["other"]
    assert state["method"].startswith("ApiPermissionError") and "not_a_pybit_method" in state["method"]
    assert state["private"].startswith("AttributeError")


def test_real_pybit_against_fake_bybit_with_faults(live: Lab, fake: FakeBybit) -> None:
    live.assign(live.strategy("probe", PROBE), "--interval", "0.05", "--account", "live")
    live.assign(live.strategy("bystander", TICKER), "--interval", "0.05")
    wait_for(lambda: ["ok", 0] in seen(live, "probe"), what="a first good call")
    assert any(r.verified for r in fake.requests), "the fake verified a signature"
    expected = {
        "bad_key": ["api", 10003],
        "http_500": ["api", 500],
        "http_403": ["api", 403],
        "garbage": ["api", 0],
        "drop": ["network", 0],
        "slow": ["network", 0],
    }
    for fault, outcome in expected.items():
        before = len(seen(live, "probe"))
        ticks = live.state("bystander").get("n", 0)
        fake.inject(fault)
        wait_for(lambda: outcome in seen(live, "probe")[before - 1:], what=f"{fault} -> {outcome}")
        # the other strategy kept ticking, and the probe recovers
        wait_for(lambda: live.state("bystander").get("n", 0) > ticks + 3, what="bystander ticks")
        wait_for(lambda: seen(live, "probe")[-1] == ["ok", 0], what=f"recovery after {fault}")
    fake.inject("rate_limit")  # pybit's 10006 with a reset time: the pool waits and retries
    wait_for(lambda: sum(1 for r in fake.requests if r.fault == "rate_limit") == 1, what="the 10006 reply")
    wait_for(lambda: seen(live, "probe")[-1] == ["ok", 0], what="a call after the rate limit")
    assert live.work("probe").result.status == "running"


def test_account_placement(lab: Lab, fake: FakeBybit) -> None:
    lab.director()
    lab.worker("plain")  # serves only the default paper account
    lab.assign(lab.strategy("probe", PROBE), "--interval", "0.1", "--account", "live")
    pending = wait_for(lambda: "live" in (w := lab.work("probe")).result.reason and w, what="a pending reason")
    assert pending.result.status == "pending" and "serves account live" in pending.result.reason
    accounts = write_accounts(lab, fake)
    lab.worker("trader", "--accounts", str(accounts), env={"QLAB_TEST_SECRET": SECRET})
    lab.wait_status("probe", "running")
    assert lab.work("probe").assignment.worker == "trader"  # type: ignore[union-attr]
    resource = lab.store.find_resource("trader")
    assert resource is not None and sorted(resource.spec.accounts) == ["live", "paper"]


def assert_no_secret_in(pid: int) -> None:
    """SECRET is in neither the environment, the command line nor the memory of process ``pid``."""
    secret = SECRET.encode()
    assert secret not in Path(f"/proc/{pid}/environ").read_bytes()
    assert secret not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert not any(secret in chunk for chunk in _process_memory(pid)), f"secret in the memory of pid {pid}"


def _process_memory(pid: int) -> Iterator[bytes]:
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                yield mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue


def test_secret_never_reaches_a_strategy_or_any_output(live: Lab, fake: FakeBybit) -> None:
    live.assign(live.strategy("probe", PROBE), "--interval", "0.05", "--account", "live")
    wait_for(lambda: ["ok", 0] in seen(live, "probe"), what="a signed call")
    fake.inject("bad_key")
    wait_for(lambda: ["api", 10003] in seen(live, "probe"), what="an error reply")
    pid = live.work("probe").result.pid
    assert pid
    assert_no_secret_in(pid)
    secret = SECRET.encode()
    outputs = [live.run(*args).stdout for args in (("status", "--json"), ("events",), ("strategy", "logs", "probe"),
                                                    ("worker", "list", "--json"), ("strategy", "list", "--json"))]
    assert not any(SECRET in out for out in outputs)
    for path in live.home.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), f"secret in {path}"


def test_bad_accounts_file_stops_the_worker_with_the_line_number(lab: Lab) -> None:
    bad = lab.home / "bad.jsonl"
    bad.write_text('{"name": "paper", "type": "paper"}\n{"name": "x", "type": "bybit"\n')
    result = lab.run("worker", "start", "--region", "JP", "--id", "w1", "--accounts", str(bad), check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "bad.jsonl:2" in lines[0], result.stderr
    assert lab.store.find_resource("w1") is None
    missing_env = lab.home / "noenv.jsonl"
    missing_env.write_text('{"name": "x", "type": "bybit", "api_key": "k", "api_secret_env": "QLAB_NOPE_UNSET"}\n')
    env_result = lab.run("worker", "start", "--region", "JP", "--id", "w1", "--accounts", str(missing_env), check=False)
    assert env_result.returncode != 0 and "QLAB_NOPE_UNSET" in env_result.stderr
    assert os.environ.get("QLAB_NOPE_UNSET") is None


def test_async_hooks_await_api_calls(lab: Lab) -> None:
    source = '''
ACCOUNTS = ["paper"]
async def st_init(ctx):
    reply = await ctx.api.bybit["paper"].get_server_time()
    ctx.state["time_ok"] = reply["retCode"] == 0
async def st_heartbeat(ctx, tick):
    reply = await ctx.api.bybit["paper"].get_tickers(category="linear", symbol="ETHUSDT")
    ctx.state["last"] = reply["result"]["list"][0]["lastPrice"]
async def st_exit(ctx, reason): pass
'''
    lab.director()
    lab.worker("w1")
    lab.assign(lab.strategy("asyncapi", source), "--interval", "0.05")
    state = wait_for(lambda: (s := lab.state("asyncapi")).get("last") and s, what="an awaited call")
    assert state["time_ok"] is True and float(state["last"]) > 0


def test_grid_example_never_duplicates_orders_across_restarts(lab: Lab) -> None:
    grid = Path(__file__).resolve().parents[2] / "strategies" / "grid_paper.py"
    lab.director()
    lab.worker("w1")
    lab.assign(grid, "--interval", "0.1", "--backoff", "0", "--param", "step=0.05")  # a wide grid: no fills
    wait_for(lambda: len(lab.state("grid_paper").get("placed", [])) == 6, what="six grid orders")
    for _ in range(2):
        pid = lab.work("grid_paper").result.pid
        assert pid
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: (w := lab.work("grid_paper")).result.pid not in (None, pid) and w.result.heartbeats > 0
                 and w.result.status == "running", what="the grid bot back")
    restarted = lab.work("grid_paper")
    heartbeats = restarted.result.heartbeats
    wait_for(lambda: lab.work("grid_paper").result.heartbeats > heartbeats + 3, what="more grid heartbeats")
    account = json.loads(lab.store.get_blob("paper", "paper") or b"{}")
    links = [o["link_id"] for o in account["open"]]
    assert len(links) == 6 and len(set(links)) == 6, links
    assert not account["closed"], "no order was filled or cancelled"
    monitor = Path(__file__).resolve().parents[2] / "strategies" / "positions_monitor.py"
    lab.assign(monitor, "--interval", "0.1")
    wait_for(lambda: lab.work("positions_monitor").result.heartbeats >= 3, what="the monitor running")
    assert lab.work("positions_monitor").result.error_count == 0
