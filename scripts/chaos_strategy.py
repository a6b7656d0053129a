"""The chaos soak's strategy: records every heartbeat, places one order per tick.

scripts/chaos.py copies this file into the soak's home and assigns it N
times. Each child appends its records to ``records/ID.jsonl`` beside it (the
format is in scripts/chaos_checks.py); ``poison/ID`` beside it asks for one
heartbeat that leaves a value in ctx.state that is not JSON; ``flood/ID``
(holding seconds) asks it to flood its worker for that long, and
``escape/ID`` to start two helpers that try to escape its cleanup
(scripts/chaos_isolation.py). Every helper's command line starts with
``HELPER_MARK`` and the home, so the soak finds any it leaves behind. The ``gen``
param is the Work's generation: the soak bumps it when it removes the
strategy and assigns it anew, and it goes into every record, into ctx.state
(so a restored state tells which generation wrote it) and into the order ids.
The ``account`` param names the account it trades on: ``paper`` (the file's
ACCOUNTS), or the live account on the fake Bybit (scripts/chaos_exchange.py).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import time
from typing import Any

import msgspec

ACCOUNTS = ["paper"]
HOME = os.path.dirname(os.path.abspath(__file__))
BAD_KEY = (1, 2)  # a tuple key: ctx.state can no longer be written as JSON
HELPER_MARK = "qlab-chaos-helper:"  #: argv[0] of every helper: with the home, unique to one soak
FLOOD_SLICE = 0.4  #: seconds of flooding per heartbeat: well inside the hang timeout, so only the budget can stop it
FLOODING = {"until": 0.0}  #: monotonic end of the flood under way


def st_init(ctx: Any) -> None:
    written_by = ctx.state.get("gen")  # None: fresh state
    ctx.state["gen"] = _gen(ctx)
    ctx.state.setdefault("n", 0)
    helper = None
    if ctx.params.get("helper"):
        # A process of the strategy's own that it never stops: the runtime must end it with the child.
        helper = _helper().pid
    _record(ctx, "init", n=ctx.state["n"], helper=helper, sgen=written_by)


def st_heartbeat(ctx: Any, tick: Any) -> None:
    m0 = time.monotonic()
    ctx.state.pop(BAD_KEY, None)
    ctx.state["n"] += 1  # before the order: a reused id means a rollback or a second runner
    n = ctx.state["n"]
    # A Work made anew starts its counter over: its ids must not be the removed one's, which the exchange has seen.
    link = f"{ctx.id}-{n}" if not _gen(ctx) else f"{ctx.id}g{_gen(ctx)}-{n}"
    _record(ctx, "send", n=n, id=link)
    ok, code, xt, err = _place(ctx, link)
    poisoned = _poison(ctx)
    _flood(ctx)
    _escape(ctx)
    _record(ctx, "beat", n=n, id=link, m0=m0, ok=ok, code=code, xt=xt, err=err, poisoned=poisoned, seq=tick.seq)


def st_exit(ctx: Any, reason: Any) -> None:
    _record(ctx, "exit", n=ctx.state.get("n"), reason=reason.type)


def _gen(ctx: Any) -> int:
    return int(ctx.params.get("gen", 0))


def _record(ctx: Any, kind: str, **fields: Any) -> None:
    """One line, one write, O_APPEND: lines of two processes never mix."""
    # Its pid and its worker's as the soak sees them: in its PID namespace os.getpid() is 1.
    line = {"k": kind, "pid": ctx.pid, "ppid": ctx.worker_pid, "m": time.monotonic(), "t": time.time(), "gen": _gen(ctx), **fields}
    fd = os.open(os.path.join(HOME, "records", ctx.id + ".jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def _place(ctx: Any, link: str) -> tuple[bool, int | None, int | None, str | None]:
    """(accepted, retCode, the exchange's time in ms, error). Neither order rests, so the account stays small:
    on paper an IOC at 1000, on the live account a market order."""
    account = ctx.params.get("account", "paper")
    shape = {"orderType": "Market"} if account != "paper" else {"orderType": "Limit", "price": "1000", "timeInForce": "IOC"}
    try:
        reply = ctx.api.bybit[account].place_order(
            category="linear", symbol="BTCUSDT", side="Buy", qty="0.001", orderLinkId=link, **shape
        )  # fmt: skip
    except Exception as e:  # ApiError and its kinds: refused, fenced off, or no answer
        return False, getattr(e, "ret_code", None), None, f"{type(e).__name__}: {e}"[:200]
    return reply.get("retCode") == 0, reply.get("retCode"), reply.get("time"), None


def _poison(ctx: Any) -> bool:
    try:
        os.unlink(os.path.join(HOME, "poison", ctx.id))
    except FileNotFoundError:
        return False
    ctx.state[BAD_KEY] = 1
    return True


def _helper(**popen: Any) -> subprocess.Popen[bytes]:
    devnull = subprocess.DEVNULL
    argv = [HELPER_MARK + HOME, "3600"]
    return subprocess.Popen(argv, executable="sleep", stdin=devnull, stdout=devnull, stderr=devnull, **popen)


def _request(ctx: Any, folder: str) -> str | None:
    """The text of a request file the soak left for this strategy (consumed), or None."""
    path = os.path.join(HOME, folder, ctx.id)
    try:
        with open(path) as f:
            text = f.read()
        os.unlink(path)
    except FileNotFoundError:
        return None
    return text


def _flood(ctx: Any) -> None:
    """While a flood lasts: ctx.send in a tight loop, and the same frames straight onto the channel, past the
    child's own budget check, as a hostile strategy would: the worker's budget is what must hold."""
    if (text := _request(ctx, "flood")) is not None:
        FLOODING["until"] = time.monotonic() + float(text)
    end = min(FLOODING["until"], time.monotonic() + FLOOD_SLICE)
    if time.monotonic() >= end:
        return
    from quantlab.child.runner import Connection

    conn = next(o for o in gc.get_objects() if isinstance(o, Connection))
    frame = msgspec.msgpack.encode({"type": "log", "data": {"flood": ctx.id}})
    sent = refused = raw = 0
    while time.monotonic() < end:
        try:
            ctx.send({"flood": ctx.id})
            sent += 1
        except Exception:  # OverBudget: the child's own check
            refused += 1
        for _ in range(50):
            conn.socket.send(frame)
        raw += 50
    _record(ctx, "flood", sent=sent, refused=refused, raw=raw)


def _escape(ctx: Any) -> None:
    """Two helpers that try to outlive this child: one in a new session, one double-forked into one."""
    if _request(ctx, "escape") is None:
        return
    session = _helper(start_new_session=True).pid
    _record(ctx, "escape", helpers=[session, _double_fork()])


def _double_fork() -> int:
    """A grandchild in a session of its own, its parent gone at once: it is nobody's child here."""
    read, write = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(read)
            os.setsid()
            grandchild = os.fork()
            if grandchild == 0:
                os.execvp("sleep", [HELPER_MARK + HOME, "3600"])
            os.write(write, str(grandchild).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(middle, 0)
    with os.fdopen(read) as f:
        return int(f.read() or 0)
