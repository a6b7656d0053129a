"""Live orders are bounded by the exchange's own clock: on hosts whose clocks disagree, and by `qlab halt`.

A live order is signed with the exchange's time and a recv_window written into its intent before it
leaves; the exchange (here the fake Bybit) takes no copy once its clock has passed the two together.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import msgspec
import pytest

from quantlab.exchange import intents
from quantlab.exchange.accounts import Account
from quantlab.exchange.apipool import ApiPool, Caller
from quantlab.protocol import ApiCall, ApiResult
from quantlab.store.filestore import FileStore
from tests.conftest import Lab, wait_for
from tests.fakes.bybit import FakeBybit, keyed_fake

KEY, SECRET = "WINDOWKEY1", "s3cr3t-Window-4kP9qX2mZ7"
CREATE = "/v5/order/create"
S1 = Caller("s1", 1)
ORDER = {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": "0.01", "price": "100"}

#: Another host: a process whose Unix clock is ``skew`` seconds off this one's, reconciling strategy
#: s1 at epoch 2 (as a worker taking it over does) once told to, until it may start; one JSON line a try.
OTHER_HOST = '''
import json, sys, time
skew = float(sys.argv[1])
real = time.time
time.time = lambda: real() + skew
from pathlib import Path
import msgspec
from quantlab.exchange import reconcile
from quantlab.exchange.accounts import Account
from quantlab.exchange.apipool import ApiPool
from quantlab.store.filestore import FileStore
account = msgspec.json.decode(sys.argv[3].encode(), type=Account)
pool = ApiPool([account], FileStore(Path(sys.argv[2])), instance="host-b")
request = reconcile.Request(strategy="s1", epoch=2, accounts=[account.name])
print("ready", flush=True)
sys.stdin.readline()
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    found = reconcile.reconcile(pool, pool._store, request, lambda: float("inf"))
    print(json.dumps({"ok": found.ok, "error": found.error, "settled": found.settled}), flush=True)
    if found.ok:
        break
    time.sleep(0.05)
pool.close()
'''


@pytest.fixture
def fake() -> Iterator[FakeBybit]:
    yield from keyed_fake(KEY, SECRET, {"BTCUSDT": 100.0})


def account(fake: FakeBybit, **overrides: Any) -> Account:
    settings: dict[str, Any] = dict(name="live", type="bybit", api_key=KEY, api_secret=SECRET, endpoint=fake.url,
                                    rate_limit=1000.0, timeout=0.3, max_retries=1)
    return Account(**{**settings, **overrides})


def lease(seconds: float) -> Callable[[], float]:
    until = time.monotonic() + seconds
    return lambda: until


def forever() -> float:
    return math.inf


def seconds(clock_time: str) -> float:
    """Seconds since midnight of an ``HH:MM:SS.mmm`` that `qlab halt` prints."""
    hours, minutes, rest = clock_time.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(rest)


def send_held_order(pool: ApiPool, fake: FakeBybit, hold: float, lease_left: float) -> list[ApiResult]:
    """Send S1's order, which the exchange holds ``hold`` s before judging it; its answer, once given."""
    assert pool.call("live", "cancel_all_orders", {"category": "linear", "settleCoin": "USDT"}, ["live"], forever).ok
    fake.hold_delay = hold
    fake.inject("hold", path=CREATE)
    answers: list[ApiResult] = []
    pool.submit(ApiCall(call_id=1, account="live", method="place_order", kwargs=dict(ORDER)), ["live"],
                answers.append, lease(lease_left), S1)
    wait_for(lambda: any(r.path == CREATE for r in fake.requests), what="the order at the exchange")
    return answers


@pytest.mark.parametrize(("exchange_skew", "other_host_skew"), [(0.0, 30.0), (-30.0, -30.0)],
                         ids=["the-other-host-30s-ahead", "the-other-host-30s-behind"])
def test_a_live_intent_is_settled_by_the_exchanges_clock_on_a_host_whose_clock_differs(
        tmp_path: Path, fake: FakeBybit, exchange_skew: float, other_host_skew: float) -> None:
    """This host sends an order and stops with it on the wire; a host 30 s off takes the strategy over.

    The order is settled neither early (as absent, then landing) nor never: the other host waits
    until the exchange's own clock has closed the order's window, then finds the order.
    """
    fake.skew_ms = int(exchange_skew * 1000)  # this host's clock is 30 s ahead of the exchange's in the second case
    store_path = tmp_path / "store"
    other = subprocess.Popen(
        [sys.executable, "-c", OTHER_HOST, str(other_host_skew), str(store_path),
         msgspec.json.encode(account(fake)).decode()],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdin is not None
        assert other.stdout.readline().strip() == "ready", other.stderr.read() if other.stderr else ""
        pool = ApiPool([account(fake)], FileStore(store_path), instance="host-a")
        send_held_order(pool, fake, hold=0.8, lease_left=2.5)
        pool.close()  # this host stops: its intent stays open, its order still on the wire
        assert [i.link_id for i in intents.read(FileStore(store_path), "s1").open] == ["s1-1-1"]

        other.stdin.write("go\n")
        other.stdin.flush()
        tries = [json.loads(line) for line in other.stdout]
        assert other.wait(timeout=10) == 0, other.stderr.read() if other.stderr else ""
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert fake.outcomes(CREATE) == [0]
    assert "could still reach the exchange" in tries[0]["error"] and "by the exchange's clock" in tries[0]["error"]
    assert tries[-1]["ok"] and tries[-1]["settled"] == {"s1-1-1": "placed"}, tries[-1]


def test_qlab_halt_returns_once_no_order_signed_before_it_can_land(lab: Lab, fake: FakeBybit) -> None:
    """An order signed before the halt and held on the way lands before `qlab halt` returns, not after."""
    pool = ApiPool([account(fake, timeout=5.0)], lab.store, instance="host-a")
    try:
        answers = send_held_order(pool, fake, hold=1.5, lease_left=3.0)
        halted = lab.run("halt", "--all")
        assert fake.outcomes(CREATE) == [0], "the order signed before the halt landed after `qlab halt` returned"
        said = re.search(r"halted at (\S+); no order signed before it can land after (\S+)", halted.stdout)
        assert said, halted.stdout
        waited = seconds(said[2]) - seconds(said[1])
        assert 1.0 < waited <= 3.0 + 1.0, said[0]  # the order's window (under its 3 s lease) and a second
        wait_for(lambda: answers, what="the order's answer")
        assert answers[0].ok
        refused = pool.call("live", "place_order", dict(ORDER), ["live"], lease(3.0), S1)
        assert refused.kind == "halted"
    finally:
        pool.close()

