"""The worker's strategy channel under attack: impostors, garbage and floods from strategies on the same worker.

Each test runs the real director, worker and strategy children. The hostile
strategies find the worker's channel the way any strategy code can: the
endpoint is a local of the frames that started them (``run_child``).
"""

from __future__ import annotations

import json
import os
import random
import time

import msgspec
import zmq

from quantlab.protocol import LIMITS
from tests.conftest import COUNTER, Lab, wait_for

#: Strategy code that finds its own worker's channel endpoint on its call stack.
FIND_ENDPOINT = '''
import json, os, sys, time
def channel_endpoint():
    frame = sys._getframe()
    while frame is not None:
        found = frame.f_locals.get("endpoint")
        if isinstance(found, str) and found.startswith("ipc://"):
            return found
        frame = frame.f_back
    raise RuntimeError("no endpoint on the stack")
def here(name):
    return os.path.join(os.path.dirname(__file__), name)
'''

VICTIM = COUNTER

#: Opens DEALER sockets under the victim's old-style routing ids and random ones, and keeps
#: saying Hello (with guessed tokens, and its own token again) and placing orders on the victim's
#: account; it writes down every frame it gets and how many rounds it sent.
ATTACKER = FIND_ENDPOINT + '''
import threading, zmq, msgspec
def own_token():
    frame = sys._getframe()
    while frame is not None:
        found = frame.f_locals.get("token")
        if isinstance(found, bytes):
            return found
        frame = frame.f_back
    return os.urandom(16)
def attack(endpoint, victim, token):
    context = zmq.Context()
    ids = [f"{victim}#{n}".encode() for n in range(1, 6)] + [os.urandom(16) for _ in range(3)]
    sockets = []
    for rid in ids:
        s = context.socket(zmq.DEALER)
        s.setsockopt(zmq.ROUTING_ID, rid)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        sockets.append(s)
    rounds = 0
    while True:
        rounds += 1
        for i, s in enumerate(sockets):
            hellos = [os.urandom(16), token]
            calls = [{"type": "api_call", "call_id": rounds, "account": "paper", "method": "place_order",
                      "kwargs": {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Market",
                                 "qty": "0.001", "orderLinkId": f"hijacked-{rounds}-{i}"}}]
            for msg in [{"type": "hello", "pid": os.getpid(), "token": t} for t in hellos] + calls:
                try:
                    s.send(msgspec.msgpack.encode(msg), zmq.NOBLOCK)
                except zmq.Again:
                    pass
            while s.poll(0):
                got = msgspec.msgpack.decode(s.recv())
                with open(here("stolen.jsonl"), "a") as f:
                    f.write(json.dumps(got, default=repr) + "\\n")
        with open(here("rounds.txt"), "w") as f:
            f.write(str(rounds))
        time.sleep(0.05)
def st_init(ctx):
    threading.Thread(target=attack, args=(channel_endpoint(), ctx.params["victim"], own_token()), daemon=True).start()
def st_heartbeat(ctx, tick):
    pass
def st_exit(ctx, reason):
    pass
'''


def rounds(lab: Lab) -> int:
    path = lab.home / "rounds.txt"
    text = path.read_text() if path.exists() else ""
    return int(text) if text else 0


def stolen(lab: Lab) -> list[dict[str, object]]:
    path = lab.home / "stolen.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def hijacked_orders(lab: Lab) -> bool:
    return b"hijacked" in (lab.store.get_blob("paper", "paper") or b"")


def test_a_strategy_cannot_pose_as_another_on_the_channel(lab: Lab) -> None:
    lab.director()
    worker = lab.worker("w1")
    lab.assign(lab.strategy("vb", VICTIM), "--interval", "0.1", "--account", "paper", "--param", "secret=hunter2")
    first = lab.wait_heartbeats("vb", 2).result.pid
    lab.assign(lab.strategy("atk", ATTACKER), "--interval", "0.1", "--param", "victim=vb")
    wait_for(lambda: rounds(lab) >= 5, what="the attacker's sockets to be sending")
    lab.run("strategy", "restart", "vb")
    since = rounds(lab)

    def victim_back() -> bool:
        work = lab.work("vb")
        return work.result.pid not in (None, first) and work.result.status == "running" and work.result.heartbeats > 0

    def attack_landed() -> bool:
        return any(m.get("type") == "init" for m in stolen(lab)) and hijacked_orders(lab)

    wait_for(lambda: (victim_back() and rounds(lab) >= since + 20) or attack_landed(), timeout=20,
             what="the victim back, or the attack landed")
    effects = {
        "an Init reached the attacker": any(m.get("type") == "init" for m in stolen(lab)),
        "an order landed on the victim's account": hijacked_orders(lab),
        "the victim did not come back": not victim_back(),
    }
    assert [effect for effect, seen in effects.items() if seen] == []
    assert stolen(lab) == []  # nothing at all reached the impostors
    assert worker.poll() is None
    work = lab.work("vb")
    assert work.result.restarts >= 1 and work.result.error_count == 0
    log = (lab.home / "proc-1.err").read_text()
    assert "dropped" in log and "did not say Hello" in log


#: Finds the channel and writes its endpoint beside itself, then counts its ticks.
SCOUT = FIND_ENDPOINT + '''
def st_init(ctx):
    with open(here("endpoint.txt"), "w") as f:
        f.write(channel_endpoint())
def st_heartbeat(ctx, tick):
    pass
def st_exit(ctx, reason):
    pass
'''


def garbage(rng: random.Random) -> list[bytes]:
    """One random message for the channel: garbage bytes, msgpack of the wrong shapes, deep nesting, huge."""
    kinds = ["hello", "ready", "heartbeat", "tick_expired", "api_call", "log", "error", "exited", "init", "x"]
    shape = rng.randrange(7)
    if shape == 0:
        return [rng.randbytes(rng.randrange(0, 2000))]
    if shape == 1:
        return [rng.randbytes(rng.randrange(1, 50)) for _ in range(rng.randrange(2, 5))]  # more frames than one
    if shape == 2:
        value = rng.choice([None, -1, 2**63, 1.5, "x" * 100, b"\0" * 30, [1, [2]], {"a": {"b": 1}}])
        fields = {key: value for key in rng.sample(["pid", "token", "seq", "state", "data", "kwargs", "call_id",
                                                    "account", "method", "reason", "message", "hook"], 3)}
        return [msgspec.msgpack.encode({"type": rng.choice(kinds), **fields})]
    if shape == 3:
        depth = rng.choice([500, 3000, 20000])
        return [b"\x82\xa4type\xa3log\xa4data" + b"\x91" * depth + b"\xc0"]  # {"type": "log", "data": [[[...]]]}
    if shape == 4:
        return [b"\xdd\x7f\xff\xff\xff" + rng.randbytes(10)]  # an array that claims two billion items
    if shape == 5:
        state = b"{" + b'"a":1,' * (LIMITS.state_bytes // 6) + b'"b":2}'
        return [msgspec.msgpack.encode({"type": "heartbeat", "seq": 1, "state": state})]  # past every limit
    return [msgspec.msgpack.encode({"type": "log", "data": "x" * rng.randrange(10, 200_000)})]


def test_garbage_on_the_channel_harms_no_strategy_and_not_the_worker(lab: Lab) -> None:
    lab.director()
    worker = lab.worker("w1")
    lab.assign(lab.strategy("scout", SCOUT), "--interval", "0.1")
    lab.assign(lab.strategy("steady", VICTIM), "--interval", "0.1", "--account", "paper")
    endpoint = wait_for(lambda: (p := lab.home / "endpoint.txt").exists() and p.read_text(), what="the endpoint")
    before = {s: lab.wait_heartbeats(s, 2).result.heartbeats for s in ("scout", "steady")}
    rng = random.Random(int(os.environ.get("QLAB_FUZZ_SEED", "7")))
    context = zmq.Context()
    sockets = []
    try:
        for n in range(12):
            s = context.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDTIMEO, 200)
            rid = rng.choice([b"steady#1", b"scout#1", b"steady#2", rng.randbytes(rng.randrange(1, 255))])
            s.setsockopt(zmq.ROUTING_ID, rid)
            s.connect(endpoint)
            sockets.append(s)
        deadline = time.monotonic() + 4.0
        sent = 0
        while time.monotonic() < deadline and worker.poll() is None:
            try:
                rng.choice(sockets).send_multipart(garbage(rng))
                sent += 1
            except zmq.Again:
                pass
        print(f"fuzz: {sent} messages sent")
        huge = context.socket(zmq.DEALER)
        huge.setsockopt(zmq.LINGER, 0)
        huge.connect(endpoint)
        sockets.append(huge)
        huge.send(b"\0" * (64 << 20))  # far past the channel's frame limit
    finally:
        for s in sockets:
            s.close()
        context.term()
    assert worker.poll() is None, "the worker died"
    for name, count in before.items():
        work = lab.wait_heartbeats(name, count + 20, timeout=10)
        assert work.result.status == "running" and work.result.restarts == 0 and work.result.error_count == 0
    assert worker.poll() is None
    assert "did not say Hello with a valid token" in (lab.home / "proc-1.err").read_text()  # dropped, and counted


FLOODER = '''
import gc, msgspec, time
from quantlab.child.runner import Connection
def st_init(ctx):
    pass
def st_heartbeat(ctx, tick):
    # Past ctx.send's own check: straight onto its connection, as a hostile strategy would.
    conn = next(o for o in gc.get_objects() if isinstance(o, Connection))
    frame = msgspec.msgpack.encode({"type": "log", "data": {"spam": tick.seq}})
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        for _ in range(100):
            conn.socket.send(frame)
def st_exit(ctx, reason):
    pass
'''

STEADY = '''
import time
def st_init(ctx):
    ctx.state["gap"] = 0.0
def st_heartbeat(ctx, tick):
    now = time.monotonic()
    if LAST:
        ctx.state["gap"] = max(ctx.state["gap"], now - LAST[0])
    LAST[:] = [now]
def st_exit(ctx, reason):
    pass
LAST = []
'''


def test_a_flooding_strategy_does_not_starve_its_neighbour(lab: Lab) -> None:
    lab.director()
    worker = lab.worker("w1", "--lease-ttl", "3", "--drain-timeout", "1")  # a stall of 2.4s loses the lease
    lab.assign(lab.strategy("steady", STEADY), "--interval", "0.1")
    lab.wait_heartbeats("steady", 3)
    started = time.monotonic()
    lab.assign(lab.strategy("flood", FLOODER), "--interval", "0.1", "--backoff", "0.5")
    lab.wait_heartbeats("flood", 1)
    flooding = time.monotonic()
    wait_for(lambda: time.monotonic() > flooding + 5, timeout=10, what="five seconds of flooding")
    lasted = time.monotonic() - started
    gap = lab.state("steady")["gap"]
    events = lab.events(strategy="flood")
    messages = [e for e in events if e.kind == "strategy_message"]
    print(f"flood: largest tick gap of the 10 Hz neighbour {gap * 1000:.0f} ms; "
          f"{len(messages)} messages and {len(events)} events in all from the flooder in {lasted:.1f}s")
    assert worker.poll() is None
    assert lab.events("lease_lost") == []
    assert gap < 1.0
    bound = LIMITS.send.burst + LIMITS.send.rate * lasted
    assert len(messages) <= bound
    assert len(events) <= bound + 3 * lasted
    charged = [e for e in events if e.kind == "error" and "budget" in e.detail]
    assert charged, [e.detail for e in events if e.kind != "strategy_message"][:5]
    dropped = sum(int(e.detail.split()[1]) for e in events if e.kind == "over_budget")  # "dropped N messages ..."
    print(f"flood: {dropped} messages over budget dropped by the worker")
    assert dropped > 1000  # it did flood
