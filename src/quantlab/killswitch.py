"""The kill switch as the operator works it: `qlab halt`, `qlab halt --repair` and `qlab resume`.

Each writes the halts document (quantlab/exchange/halts.py) and an event. A halt then waits
until no live order signed before it can still be taken by an exchange, and says until when.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Callable, cast

from quantlab.errors import NotFound
from quantlab.exchange import halts
from quantlab.store.records import Event, EventKind
from quantlab.store.store import Store, record_events

Clock = Callable[[], float]


def halt(store: Store, scope: str, target: str, *, cancel_orders: bool = False, clock: Clock = time.time,
         sleep: Callable[[float], None] = time.sleep) -> str:
    """Write a halt, and its event, then wait until no order signed before it can land; what was done, in words."""
    written = halts.halt(store, cast(halts.Scope, scope), target, cancel_orders=cancel_orders, clock=clock)
    committed = time.monotonic()
    whose = "the strategy's" if scope == "strategy" else "its accounts'"
    also = f"; {whose} open orders are being cancelled" if cancel_orders else ""
    message = f"halted: {written.label}: calls that open or increase exposure are refused{also}"
    _halt_event(store, EventKind.HALTED, scope, target, message, clock)
    return f"{message}\n{_orders_landed(store, written.ts, committed, sleep)}"


def repair_halts(store: Store, *, clock: Clock = time.time, sleep: Callable[[float], None] = time.sleep) -> str:
    """Replace a halts document that does not decode with a halt on everything, and its event."""
    written = halts.repair(store, clock)
    committed = time.monotonic()
    message = ("halted (repaired): the halts document did not decode: replaced with a halt on everything; "
               "`qlab resume --all` lifts it")
    _halt_event(store, EventKind.HALTED, "all", "", message, clock)
    return f"{message}\n{_orders_landed(store, written.ts, committed, sleep)}"


def _orders_landed(store: Store, halted_at: float, committed: float, sleep: Callable[[float], None]) -> str:
    """Wait until no live order signed before the halt (committed at monotonic ``committed``) can land."""
    wait = halts.landing_wait(store)
    left = committed + wait - time.monotonic()
    if left > 0:
        sleep(left)
    return f"halted at {_clock_time(halted_at)}; no order signed before it can land after {_clock_time(halted_at + wait)}"


def _clock_time(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]


def resume(store: Store, scope: str, target: str, *, clock: Clock = time.time) -> str:
    label = "all" if scope == "all" else f"{scope} {target}"
    if not halts.resume(store, cast(halts.Scope, scope), target):
        raise NotFound(f"no halt on {label}")
    _halt_event(store, EventKind.RESUMED, scope, target, f"resumed: {label}", clock)
    return f"resumed: {label}"


def _halt_event(store: Store, kind: EventKind, scope: str, target: str, detail: str, clock: Clock) -> None:
    record_events(store, [Event(ts=clock(), kind=kind, strategy=target if scope == "strategy" else None,
                                worker=target if scope == "worker" else None, detail=detail)])
