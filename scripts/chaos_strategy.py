"""The chaos soak's strategy: records every heartbeat, places one paper order per tick.

scripts/chaos.py copies this file into the soak's home and assigns it N
times. Each child appends its records to ``records/ID.jsonl`` beside it (the
format is in scripts/chaos_checks.py); ``poison/ID`` beside it asks for one
heartbeat that leaves a value in ctx.state that is not JSON. The ``gen``
param is the Work's generation: the soak bumps it when it removes the
strategy and assigns it anew, and it goes into every record, into ctx.state
(so a restored state tells which generation wrote it) and into the order ids.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

ACCOUNTS = ["paper"]
HOME = os.path.dirname(os.path.abspath(__file__))
BAD_KEY = (1, 2)  # a tuple key: ctx.state can no longer be written as JSON


def st_init(ctx: Any) -> None:
    written_by = ctx.state.get("gen")  # None: fresh state
    ctx.state["gen"] = _gen(ctx)
    ctx.state.setdefault("n", 0)
    helper = None
    if ctx.params.get("helper"):
        # A process of the strategy's own that it never stops: the runtime must end it with the child.
        devnull = subprocess.DEVNULL
        helper = subprocess.Popen(["sleep", "3600"], stdin=devnull, stdout=devnull, stderr=devnull).pid
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
    _record(ctx, "beat", n=n, id=link, m0=m0, ok=ok, code=code, xt=xt, err=err, poisoned=poisoned, seq=tick.seq)


def st_exit(ctx: Any, reason: Any) -> None:
    _record(ctx, "exit", n=ctx.state.get("n"), reason=reason.type)


def _gen(ctx: Any) -> int:
    return int(ctx.params.get("gen", 0))


def _record(ctx: Any, kind: str, **fields: Any) -> None:
    """One line, one write, O_APPEND: lines of two processes never mix."""
    line = {"k": kind, "pid": os.getpid(), "ppid": os.getppid(), "m": time.monotonic(), "t": time.time(), "gen": _gen(ctx), **fields}
    fd = os.open(os.path.join(HOME, "records", ctx.id + ".jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def _place(ctx: Any, link: str) -> tuple[bool, int | None, int | None, str | None]:
    """(accepted, retCode, the exchange's time in ms, error); IOC at 1000 never rests, so the account stays small."""
    try:
        reply = ctx.api.bybit["paper"].place_order(
            category="linear", symbol="BTCUSDT", side="Buy", orderType="Limit", qty="0.001", price="1000",
            timeInForce="IOC", orderLinkId=link,
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
