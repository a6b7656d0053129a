"""Orders are fenced at send time: a paused worker's queued orders never reach the exchange."""

from __future__ import annotations

import ctypes
import json
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import Lab, pid_alive, wait_for
from tests.fakes.bybit import FakeBybit, keyed_fake

SECRET = "s3cr3t-Fence-8xQ2vN7mL4kR9w"
KEY = "FENCEKEY123"
CREATE = "/v5/order/create"
PR_CAPBSET_DROP = 24

ORDERS = '''
import os
ACCOUNTS = ["live"]
def st_init(ctx):
    ctx.state.setdefault("n", 0)
def st_heartbeat(ctx, tick):
    ctx.state["n"] += 1
    try:
        ctx.api.bybit["live"].place_order(category="linear", symbol="BTCUSDT", side="Buy", orderType="Limit",
                                          qty="0.01", price="100", orderLinkId=f"{ctx.pid}-{ctx.state['n']}")
    except Exception as e:
        ctx.state["last_error"] = str(e)
def st_exit(ctx, reason):
    pass
'''


@pytest.fixture
def fake() -> Iterator[FakeBybit]:
    yield from keyed_fake(KEY, SECRET)


def accounts_file(lab: Lab, fake: FakeBybit, rate_limit: float) -> Path:
    path = lab.home / "env.jsonl"
    line = {"name": "live", "type": "bybit", "api_key": KEY, "api_secret_env": "QLAB_FENCE_SECRET",
            "endpoint": fake.url, "timeout": 2.0, "max_retries": 1, "rate_limit": rate_limit}
    path.write_text(json.dumps(line) + "\n")
    return path


def test_a_paused_workers_queued_orders_never_reach_the_exchange(lab: Lab, fake: FakeBybit) -> None:
    """An order queued in the pool is fenced when it is signed, not when it arrived: none leaves after the lease."""
    lab.director()
    worker = lab.worker("w1", "--accounts", str(accounts_file(lab, fake, rate_limit=1.0)), "--lease-ttl", "2",
                        "--drain-timeout", "1", env={"QLAB_FENCE_SECRET": SECRET})
    for i in range(4):  # four strategies, one order each in flight: the 1/s limit keeps three queued
        lab.assign(lab.strategy(f"orders{i}", ORDERS), "--interval", "0.05")
    # Each start reads the account first (reconciliation), in turn with the orders under the 1/s limit.
    wait_for(lambda: all(lab.work(f"orders{i}").result.pid for i in range(4)), timeout=30, what="four children")
    wait_for(lambda: fake.accepted(CREATE) >= 3, timeout=20, what="orders reaching the exchange")
    pids = {str(lab.work(f"orders{i}").result.pid) for i in range(4)}
    worker.send_signal(signal.SIGSTOP)
    try:  # past the lease (2 s) and its margin: the director gives the strategies up
        wait_for(lambda: any(e.worker == "w1" for e in lab.events("worker_lost")), timeout=15, what="w1's lease to expire")
    finally:
        resumed = time.monotonic()
        worker.send_signal(signal.SIGCONT)
    # What the resumed worker would send, it sends once it runs again: let it live a few heartbeats.
    wait_for(lambda: not any(pid_alive(int(pid)) for pid in pids), what="the old children to end")
    first = wait_for(lambda: lab.store.find_resource("w1"), what="w1 to register again")
    wait_for(lambda: (r := lab.store.find_resource("w1")) is not None and r.state.renewals >= first.state.renewals + 3,
             what="w1 to renew")
    # Orders from the children that ran under the lost lease; new children (the director may place
    # the strategies here again, with a new epoch) place their own, which is fine.
    late = [r for r in fake.requests if r.path == CREATE and r.arrived > resumed
            and r.params["orderLinkId"].split("-")[0] in pids]
    assert late == [], f"{len(late)} order(s) of the old children reached the exchange after the lease ran out"


#: ORDERS, with each call's outcome in calls-PID.txt beside it: "ok", or the error it met.
TRACED = ORDERS.replace('''    except Exception as e:
        ctx.state["last_error"] = str(e)''', '''        _note(ctx, "ok")
    except Exception as e:
        ctx.state["last_error"] = str(e)
        _note(ctx, str(e).replace("\\n", " "))
def _note(ctx, text):
    with open(os.path.join(os.path.dirname(__file__), f"calls-{ctx.pid}.txt"), "a") as f:
        f.write(text + "\\n")''')


def fleet(lab: Lab, manifest: Path, file: Path, worker: str) -> None:
    """`qlab apply` of four strategies running ``file``, every one pinned to ``worker``."""
    manifest.write_text("".join(f'[strategies.orders{i}]\nfile = "{file}"\nworker = "{worker}"\ninterval = 0.05\n\n'
                                for i in range(4)))
    lab.run("apply", str(manifest))


def test_orders_queued_when_their_strategy_moves_away_never_reach_the_exchange(lab: Lab, fake: FakeBybit, tmp_path: Path) -> None:
    """The epoch half of the send-time fence: w1's lease holds throughout, but its strategies move to w2
    (a new epoch each) while their orders wait in w1's account queue: none of those leaves once the epoch rose."""
    lab.director()
    accounts = accounts_file(lab, fake, rate_limit=1.0)
    for name in ("w1", "w2"):
        lab.worker(name, "--accounts", str(accounts), env={"QLAB_FENCE_SECRET": SECRET})
    file, manifest = lab.strategy("orders", TRACED), tmp_path / "fleet.toml"
    fleet(lab, manifest, file, "w1")
    works = wait_for(lambda: all(lab.work(f"orders{i}").result.pid for i in range(4))
                     and [lab.work(f"orders{i}") for i in range(4)], timeout=30, what="four children on w1")
    wait_for(lambda: fake.accepted(CREATE) >= 3, timeout=20, what="orders reaching the exchange")
    fleet(lab, manifest, file, "w2")  # the 1/s limit keeps about three orders queued at this moment
    raised: dict[str, float] = {}  # strategy -> when the test saw its new epoch (it rose before)

    def all_raised() -> bool:
        for work in works:
            if work.id not in raised and lab.work(work.id).epoch > work.epoch:
                raised[work.id] = time.monotonic()
        return len(raised) == len(works)

    wait_for(all_raised, timeout=20, what="every strategy's epoch to rise")
    old = {str(w.result.pid): w.id for w in works}
    wait_for(lambda: not any(pid_alive(int(pid)) for pid in old), timeout=20, what="the old children to end")
    late = [r for r in fake.requests if r.path == CREATE and (sid := old.get(r.params["orderLinkId"].split("-")[0]))
            and r.arrived > raised[sid]]
    assert late == [], f"{len(late)} order(s) of the moved strategies' old children left after their epoch rose"
    refused = [line for pid in old if (path := lab.home / f"calls-{pid}.txt").exists()
               for line in path.read_text().splitlines() if "refused" in line]
    assert refused, "no call of an old child was refused: the move caught none in flight"


# ---- secrets stay in the worker ----

#: Drops every capability (a root test run would read any /proc file), then reads the worker's
#: environment and memory as a same-user process would: the strategy's parent is the worker.
SNOOP = '''
import ctypes, os
ACCOUNTS = ["live"]

class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

def drop_capabilities():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.capset(ctypes.byref(_Header(0x20080522, 0)), (_Data * 2)()) != 0:
        raise OSError(ctypes.get_errno(), "capset")

def read_memory(pid, secret):
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                if secret in mem.read(end - start):
                    return "found"
            except (OSError, ValueError, OverflowError):
                continue
    return "read, not found"

def attempt(fn):
    try:
        return fn()
    except OSError as e:
        return f"denied: {type(e).__name__}"

def st_init(ctx):
    drop_capabilities()
    worker, secret = ctx.worker_pid, ctx.params["secret"].encode()
    ctx.state["worker"] = worker
    ctx.state["environ"] = attempt(lambda: "found" if secret in open(f"/proc/{worker}/environ", "rb").read() else "read, not found")
    ctx.state["memory"] = attempt(lambda: read_memory(worker, secret))
    ctx.state["proxy_env"] = os.environ.get("HTTPS_PROXY", "")

def st_heartbeat(ctx, tick):
    pass

def st_exit(ctx, reason):
    pass
'''


def without_capabilities() -> None:
    """Run in the worker's process before exec: empty its capability bounding set.

    A root process then gets no capability at exec, and neither do its children: the worker
    and its strategies are plain processes of one user, as in production. (Running them as
    ``nobody`` instead is not possible here: the interpreter lives under /root, mode 0700.)
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # past the last capability: EINVAL, ignored


def test_a_strategy_reading_the_workers_environment_and_memory_gets_nothing(lab: Lab, fake: FakeBybit) -> None:
    """A strategy running as the worker's user finds no secret in /proc/<worker pid>/environ, mem or cmdline."""
    lab.director()
    proxy_password = "Pr0xyPassw0rd-zz9"
    env = {"QLAB_FENCE_SECRET": SECRET, "HTTPS_PROXY": f"http://user:{proxy_password}@127.0.0.1:9"}
    worker = lab.worker("w1", "--accounts", str(accounts_file(lab, fake, rate_limit=50)), env=env,
                        preexec_fn=without_capabilities)
    lab.assign(lab.strategy("snoop", SNOOP), "--interval", "0.2", "--param", f"secret={SECRET}")
    state = wait_for(lambda: (s := lab.state("snoop")).get("memory") and s, timeout=15, what="the snoop's findings")
    assert state["worker"] == worker.pid
    assert state["environ"].startswith("denied"), state
    assert state["memory"].startswith("denied"), state
    assert proxy_password not in state["proxy_env"] and state["proxy_env"] == "http://127.0.0.1:9"


def test_proxy_credentials_on_the_command_line_are_refused(lab: Lab) -> None:
    result = lab.run("worker", "start", "--region", "JP", "--id", "w1", "--proxy", "http://user:pw@127.0.0.1:3128",
                     check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "credentials" in lines[0], result.stderr
    assert "pw@" not in result.stderr
    assert lab.store.find_resource("w1") is None
