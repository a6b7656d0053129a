"""Where a Work may run: a pure function of the works and the live workers.

The director calls `choose_worker` for each unplaced Work with the workers
whose lease it has not seen expire (it judges leases by watching them renew,
see quantlab/store/leases.py, never by comparing clocks). No I/O here, so the
rules are unit-tested directly: region, account and pin must match, the worker
must not be stopping and be under `max_strategies`; among the eligible, the
least loaded (fewest assigned strategies, then CPU) wins. No eligible worker: a
reason a person can act on.
"""

from __future__ import annotations

from collections import Counter

import msgspec

from quantlab.store.records import Resource, Work
from quantlab.store.workmachine import occupies


#: The reason when no worker at all is live (`qlab up` leaves it out: it starts its worker itself).
NO_LIVE_WORKER = "no live worker: start one with `qlab worker start --region R`"


class Choice(msgspec.Struct, frozen=True):
    worker: str | None  #: the chosen worker id, or None
    reason: str = ""  #: why no worker was chosen


def takes_work(resource: Resource) -> bool:
    return resource.state.status != "stopping"


def assigned_counts(works: list[Work]) -> Counter[str]:
    """Strategies per worker that run there or are about to (a settled stop frees its place)."""
    return Counter(w.assignment.worker for w in works if w.assignment is not None and occupies(w))


def choose_worker(work: Work, resources: list[Resource], counts: Counter[str]) -> Choice:
    """``resources``: the workers that hold a live lease."""
    spec = work.spec
    live = [r for r in resources if takes_work(r)]
    if not live:
        return Choice(None, NO_LIVE_WORKER)
    candidates = live
    pin = spec.placement.worker
    if pin is not None:
        candidates = [r for r in candidates if r.id == pin]
        if not candidates:
            return Choice(None, f"pinned worker {pin!r} is not alive")
    region = spec.placement.region
    if region is not None:
        candidates = [r for r in candidates if r.spec.region == region]
        if not candidates:
            return Choice(None, f"no live worker in region {region!r}")
    missing = [a for a in spec.accounts if not any(a in r.spec.accounts for r in candidates)]
    candidates = [r for r in candidates if set(spec.accounts) <= set(r.spec.accounts)]
    if not candidates:
        where = f" in region {region!r}" if region else ""
        names = ", ".join(missing) or ", ".join(spec.accounts)
        return Choice(None, f"no live worker{where} serves account {names}")
    free = [r for r in candidates if counts[r.id] < r.spec.max_strategies]
    if not free:
        full = ", ".join(f"{r.id} ({counts[r.id]}/{r.spec.max_strategies})" for r in candidates)
        return Choice(None, f"every eligible worker is full: {full}")
    best = min(free, key=lambda r: (counts[r.id] / r.spec.max_strategies, r.state.load.cpu, r.id))
    return Choice(best.id)
