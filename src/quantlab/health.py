"""What `qlab status --check` fails on, read from one snapshot (quantlab.fleet.snapshot).

Each problem is one line a person can act on; none means the fleet does what it
was asked. Every rule reads the snapshot and a time only, so a test feeds it a
snapshot and compares the lines:

- a strategy that failed;
- a strategy pending longer than ``pending_after``;
- a strategy in a state it should pass through (assigned, starting, stopping)
  for longer than ``stuck_after``: its worker does not take it, or its child
  does not start or stop;
- Works exist and no director leads: nothing places or moves them;
- a halt is in force (unless ``allow_halted``): nothing that opens exposure is sent;
- a worker's lease is short or has run out: it is about to stop its strategies,
  or has stopped them.
"""

from __future__ import annotations

from typing import Any, Iterator

import msgspec

from quantlab.errors import BadInput
from quantlab.numbers import Range
from quantlab.store.leases import fence_margin

Entry = dict[str, Any]

#: States a strategy passes through on its way to running or stopped; one that stays is stuck.
PASSING = ("assigned", "starting", "stopping")
#: `--pending-after` and `--stuck-after`: seconds (NaN would compare false, and nothing would count).
SECONDS = Range(at_least=0)


def lease_short(ttl: float) -> float:
    """Seconds left on a worker's lease below which it counts as short.

    Twice the fence margin: a worker stops acting one margin before its lease ends (it
    has missed its renewals for most of the lease by then), so this says so one margin
    ahead. A worker renewing on its heartbeat (shorter than the lease) never gets there.
    """
    return 2 * fence_margin(ttl)


class Bounds(msgspec.Struct, frozen=True, kw_only=True):
    """The bounds `status --check` applies; its options."""

    pending_after: float = 60.0  #: seconds a strategy may wait for a worker
    stuck_after: float = 60.0  #: seconds a strategy may stay assigned, starting or stopping
    allow_halted: bool = False  #: a halt in force is meant: not a problem

    def checked(self) -> Bounds:
        for flag, value in (("--pending-after", self.pending_after), ("--stuck-after", self.stuck_after)):
            if (problem := SECONDS.problem(value)) is not None:
                raise BadInput(f"{flag} {problem}")
        return self


def problems(snapshot: dict[str, Any], now: float, bounds: Bounds) -> list[str]:
    """Every problem in ``snapshot`` at ``now``, one line each: strategies, leadership, halts, workers."""
    bounds.checked()
    return [*_strategies(snapshot["strategies"], now, bounds), *_leadership(snapshot, now),
            *([] if bounds.allow_halted else _halts(snapshot.get("halts", []), now)),
            *_workers(snapshot["workers"], now)]


def since(entry: Entry) -> float:
    """When the strategy's status became what it is (records written before that was kept: their last write)."""
    return float(entry.get("since") or entry["updated"] or entry["created"])


def _strategies(entries: list[Entry], now: float, bounds: Bounds) -> Iterator[str]:
    for entry in entries:
        status, held = entry["status"], now - since(entry)
        if status == "failed":
            yield f"{entry['id']} failed: {entry['reason']}"
        elif status == "pending" and held > bounds.pending_after:
            yield f"{entry['id']} pending for {held:.0f}s: {entry['reason']}"
        elif status in PASSING and held > bounds.stuck_after:
            where = f" on {entry['worker']}" if entry.get("worker") else ""
            why = f": {entry['reason']}" if entry["reason"] else ""
            yield f"{entry['id']} {status}{where} for {held:.0f}s (bound {bounds.stuck_after:g}s){why}"


def _leadership(snapshot: dict[str, Any], now: float) -> Iterator[str]:
    count = len(snapshot["strategies"])
    leader = snapshot.get("leader")
    if count == 0 or (leader is not None and leader["live"]):
        return
    if leader is None:
        was = "no director has led this store"
    elif leader["problem"]:
        was = f"the leadership record does not decode ({leader['problem']})"
    elif not leader["director"]:
        was = "the last leader gave the lease up"
    else:
        was = f"the last leader, {leader['director']}, renewed its lease {now - leader['renewed']:.0f}s ago"
    yield (f"no director leads ({was}): {count} strateg{'y' if count == 1 else 'ies'} cannot be placed or moved; "
           f"start one with `qlab director start`")


def _halts(entries: list[Entry], now: float) -> Iterator[str]:
    for halt in entries:
        what = "all" if halt["scope"] == "all" else f"{halt['scope']} {halt['target']}"
        why = halt["problem"] or f"since {now - halt['ts']:.0f}s"
        yield f"halted: {what} ({why}): orders that open exposure are refused; `qlab resume` lifts it, " \
              f"--allow-halted accepts it"


def _workers(entries: list[Entry], now: float) -> Iterator[str]:
    for worker in entries:
        left, ttl = worker["lease_expires"] - now, worker["lease_ttl"]
        if not worker["lease_expires"]:  # written once it first renews, right after it registers
            yield f"worker {worker['id']} on {worker['host']}: registered, but it has not taken its lease"
        elif left <= 0:
            yield (f"worker {worker['id']} on {worker['host']}: lease expired {-left:.0f}s ago: "
                   f"its strategies are stopped")
        elif left < lease_short(ttl):
            yield (f"worker {worker['id']} on {worker['host']}: lease short, {left:.1f}s of {ttl:g}s left: "
                   f"it has not renewed for {ttl - left:.0f}s")
