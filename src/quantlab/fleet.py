"""The fleet as the commands read it: one strategy, one worker, the leadership, and all of it at once.

Flat dicts built from the store's records, with what a reader needs beside the
records (uptime, a lease's liveness on this host's clock). `qlab status`
prints `snapshot` (quantlab.views draws it), `status --check` judges it
(quantlab.health), and `qlab top` redraws it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from quantlab.errors import CorruptRecord
from quantlab.exchange import halts
from quantlab.store.records import Resource, Work, flat
from quantlab.store.store import Store


def strategy_view(work: Work, now: float) -> dict[str, Any]:
    """One Work as flat fields, plus where it runs (``worker``), where it may (``region``) and
    for how long its child has been running (``uptime``, seconds; None unless it runs)."""
    entry = flat(work)
    entry["worker"] = work.assignment.worker if work.assignment else None
    entry["region"] = work.spec.placement.region
    since = work.result.since
    entry["uptime"] = max(0.0, now - since) if since and work.result.status == "running" else None
    return entry


def worker_view(resource: Resource, now: float) -> dict[str, Any]:
    entry = flat(resource)
    entry["alive"] = resource.state.lease_expires > now
    return entry


def leader_view(store: Store, now: float) -> dict[str, Any] | None:
    """The director leadership lease, with ``live``: renewed within its TTL on this host's clock; None: never taken.

    A director killed while leading keeps its Director record (role leader) until another
    director drops it, so only the lease tells whether anyone leads now. A one-shot command
    sees one reading of it: it compares the renewal time with its own clock, as the worker
    list does with each worker's lease.
    """
    try:
        leader = store.find_leader()
    except CorruptRecord as e:
        return {"director": "", "epoch": 0, "renewed": 0.0, "ttl": 0.0, "live": False, "problem": str(e)}
    if leader is None:
        return None
    live = bool(leader.director) and leader.renewed + leader.ttl > now
    return {"director": leader.director, "epoch": leader.epoch, "renewed": leader.renewed, "ttl": leader.ttl,
            "live": live, "problem": None}


def snapshot(store: Store, now: float) -> dict[str, Any]:
    """Directors, the leadership, workers, strategies and halts as `qlab status --json` prints them."""
    found, problem = halts.read_or_closed(store)
    return {
        "directors": [msgspec.to_builtins(d) for d in store.list_directors()],
        "leader": leader_view(store, now),
        "workers": [worker_view(r, now) for r in store.list_resources()],
        "strategies": [strategy_view(w, now) for w in store.list_works()],
        "halts": [{**msgspec.to_builtins(h), "problem": problem} for h in found.halts],
    }
