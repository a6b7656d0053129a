"""The chaos soak's attacker: a strategy with no account that keeps trying to reach past its ctx.

scripts/chaos.py (``--attacker``) copies this file into a folder of its own
outside the soak's home, as a desk would deploy a strategy, and assigns it
beside the fleet. It finds its worker (its parent), the zygote and its
neighbours (their process titles in /proc) and the worker's channel (on its
own call stack); the soak tells it the home, the accounts file and the
directors in ``targets.json`` beside it. Every ROUND_EVERY seconds it tries
each attack of tests/integration/test_sandbox.py, test_channel.py and
test_hostile_calls.py once, and keeps in ctx.state ``{"rounds": N, "tries": {attack: [tries, done,
last outcome]}}``: an outcome is "refused: why" or "DONE: what it did".
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
from typing import Any, Callable

ROUND_EVERY = 2.0  #: seconds between rounds of attacks
LAST = {"round": 0.0}
libc = ctypes.CDLL(None, use_errno=True)


def st_init(ctx: Any) -> None:
    ctx.state.setdefault("rounds", 0)
    ctx.state.setdefault("tries", {})


def st_heartbeat(ctx: Any, tick: Any) -> None:
    if time.monotonic() < LAST["round"] + ROUND_EVERY:
        return
    LAST["round"] = time.monotonic()
    ctx.state["rounds"] += 1
    for name, action in attacks(ctx).items():
        outcome = attempt(action)
        tries, done, _ = ctx.state["tries"].get(name, [0, 0, ""])
        ctx.state["tries"][name] = [tries + 1, done + outcome.startswith("DONE"), outcome[:160]]


def st_exit(ctx: Any, reason: Any) -> None:
    pass


def attempt(action: Callable[[], object]) -> str:
    try:
        return "DONE: " + str(action())[:120]
    except Exception as e:  # OSError, ApiError, KeyError: each a refusal
        return f"refused: {type(e).__name__}: {e}"


# ---- finding its targets ----


def targets(ctx: Any) -> dict[str, Any]:
    """Its worker, that worker's zygote and strategies (their titles), and what the soak wrote in
    targets.json beside it: the home, the accounts file, the directors, each worker's children (from
    inside its PID namespace it sees no other process, so it is told their pids as the machine has them)."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "targets.json")) as f:
        told = json.load(f)
    worker = ctx.worker_pid
    mine = [(p, c) for p, c in told["children"].get(str(worker), []) if p != ctx.pid]
    return {
        **told, "worker": worker,
        "zygote": next((p for p, c in mine if c.startswith("qlab zygote")), 0),
        "neighbours": [(p, c.split()[2]) for p, c in mine if c.startswith("qlab strategy ") and len(c.split()) > 2],
        "director": (told["directors"] or [0])[0],
    }  # fmt: skip


def channel_endpoint() -> str:
    frame: Any = sys._getframe()
    while frame is not None:
        found = frame.f_locals.get("endpoint")
        if isinstance(found, str) and found.startswith("ipc://"):
            return found
        frame = frame.f_back
    raise RuntimeError("no endpoint on the stack")


# ---- the attacks ----


def attacks(ctx: Any) -> dict[str, Callable[[], object]]:
    t = targets(ctx)
    home, worker, zygote, director = t["home"], t["worker"], t["zygote"], t["director"]
    victim, victim_id = t["neighbours"][0] if t["neighbours"] else (0, "s01")
    return {
        "read the accounts file": lambda: read(t["accounts"]),
        "list the store": lambda: os.listdir(os.path.join(home, "store")),
        "read a neighbour's records": lambda: read(os.path.join(home, "records", f"{victim_id}.jsonl")),
        "poison a neighbour": lambda: append(os.path.join(home, "poison", victim_id)),
        "write into the home": lambda: append(os.path.join(home, "pwned")),
        "find a secret in its environment": lambda: secret_in(dict(os.environ)),
        "read the worker's environ": lambda: read(f"/proc/{worker}/environ"),
        "read the zygote's environ": lambda: read(f"/proc/{zygote}/environ"),
        "read a neighbour's /proc mem": lambda: proc_mem(victim),
        "ptrace a neighbour": lambda: seize(victim),
        "place an order on paper": lambda: ctx.api.bybit["paper"].place_order(
            category="linear", symbol="BTCUSDT", side="Buy", orderType="Market", qty="0.001", orderLinkId="atk-order"),
        "amend a neighbour's order": lambda: ctx.api.bybit["paper"].amend_order(
            category="linear", symbol="BTCUSDT", orderLinkId=f"{victim_id}-1", qty="50"),
        "upload a file": lambda: ctx.api.bybit["paper"].upload_chat_file(upload_file=t["accounts"]),
        "pose as a neighbour on the channel": lambda: hijack(channel_endpoint(), victim_id, ctx.state["rounds"]),
        "SIGKILL a neighbour": lambda: signal_to(victim, signal.SIGKILL),
        "SIGKILL a neighbour's group": lambda: group_signal(victim, signal.SIGKILL),
        "SIGKILL the zygote": lambda: signal_to(zygote, signal.SIGKILL),
        "SIGSTOP the worker": lambda: signal_to(worker, signal.SIGSTOP),
        "SIGTERM the worker": lambda: signal_to(worker, signal.SIGTERM),
        "SIGKILL the director": lambda: signal_to(director, signal.SIGKILL),
    }  # fmt: skip


def read(path: str) -> str:
    with open(path, "rb") as f:
        return f"read {len(f.read())} bytes of {path}"


def append(path: str) -> str:
    with open(path, "a") as f:
        f.write("attacker was here\n")
    return f"wrote {path}"


def secret_in(env: dict[str, str]) -> str:
    found = [k for k in env if k == "QLAB_STORE" or "SECRET" in k.upper() or "API_KEY" in k.upper()]
    if not found:
        raise PermissionError("none there")
    return f"found {', '.join(found)}"


def signal_to(pid: int, sig: signal.Signals) -> str:
    if not pid:
        raise ProcessLookupError("no such process found")
    os.kill(pid, sig)
    return f"sent {sig.name} to pid {pid}"


def group_signal(pid: int, sig: signal.Signals) -> str:
    if not pid:
        raise ProcessLookupError("no such process found")
    os.killpg(pid, sig)
    return f"sent {sig.name} to group {pid}"


def fail() -> None:
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err))


def seize(pid: int) -> str:
    if libc.ptrace(0x4206, pid, 0, 0) != 0:  # PTRACE_SEIZE
        fail()
    libc.ptrace(17, pid, 0, 0)  # PTRACE_DETACH: an attacker that got this far would stay; the soak only needs to know
    return f"attached to pid {pid}"


def proc_mem(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        address = next(int(line.split("-")[0], 16) for line in f if line.split()[1].startswith("r"))
    with open(f"/proc/{pid}/mem", "rb") as f:
        f.seek(address)
        return f"read {len(f.read(64))} bytes of pid {pid}'s memory"


def hijack(endpoint: str, victim: str, round_: int) -> str:
    """Sockets under the neighbour's guessed routing ids and random ones: Hello with guessed tokens, an order
    on its account. Anything that comes back is an effect."""
    import msgspec
    import zmq

    context = zmq.Context()
    sockets = []
    try:
        for rid in [f"{victim}#{n}".encode() for n in range(1, 4)] + [os.urandom(16)]:
            s = context.socket(zmq.DEALER)
            s.setsockopt(zmq.ROUTING_ID, rid)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(endpoint)
            sockets.append(s)
        call = {"type": "api_call", "call_id": 1, "account": "paper", "method": "place_order",
                "kwargs": {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Market",
                           "qty": "0.001", "orderLinkId": f"atk-hijack-{round_}"}}  # fmt: skip
        for s in sockets:
            for msg in ({"type": "hello", "pid": os.getpid(), "token": os.urandom(16)}, call):
                s.send(msgspec.msgpack.encode(msg), zmq.NOBLOCK)
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            for s in sockets:
                if s.poll(10):
                    return f"got {msgspec.msgpack.decode(s.recv())!r}"
        raise PermissionError("no answer to any of its sockets")
    finally:
        for s in sockets:
            s.close()
        context.term()
