"""`qlab status --check`'s rules over snapshots: each problem one line, none when the fleet does as asked."""

from __future__ import annotations

from typing import Any

import pytest

from quantlab import health
from quantlab.errors import BadInput

NOW = 10_000.0
BOUNDS = health.Bounds(pending_after=60, stuck_after=60)


def strategy(work_id: str, status: str, since: float, *, worker: str | None = "w1", reason: str = "") -> dict[str, Any]:
    return {"id": work_id, "status": status, "since": since, "updated": NOW, "created": 1.0, "worker": worker,
            "reason": reason}


def worker(worker_id: str, left: float, ttl: float = 15.0) -> dict[str, Any]:
    return {"id": worker_id, "host": "h1", "lease_expires": NOW + left, "lease_ttl": ttl}


LEADER = {"director": "d1", "epoch": 3, "renewed": NOW - 1, "ttl": 10.0, "live": True, "problem": None}


def snapshot(strategies: list[dict[str, Any]] = [], workers: list[dict[str, Any]] = [],
             leader: dict[str, Any] | None = LEADER, halts: list[dict[str, Any]] = []) -> dict[str, Any]:
    return {"directors": [], "leader": leader, "workers": workers, "strategies": strategies, "halts": halts}


def test_a_fleet_that_does_as_asked_has_no_problem() -> None:
    fleet = snapshot([strategy("a", "running", NOW - 5000), strategy("b", "starting", NOW - 59),
                      strategy("c", "stopped", NOW - 9000, worker=None)], [worker("w1", left=14.0)])
    assert health.problems(fleet, NOW, BOUNDS) == []


@pytest.mark.parametrize("status", health.PASSING)
def test_a_state_passed_through_counts_once_it_lasts_past_the_bound(status: str) -> None:
    found = health.problems(snapshot([strategy("a", status, NOW - 61, reason="why")]), NOW, BOUNDS)
    assert found == [f"a {status} on w1 for 61s (bound 60s): why"]
    assert health.problems(snapshot([strategy("a", status, NOW - 59)]), NOW, BOUNDS) == []


def test_failed_and_long_pending_as_before() -> None:
    found = health.problems(snapshot([strategy("a", "failed", NOW, reason="3 errors"),
                                      strategy("b", "pending", NOW - 61, worker=None, reason="no live worker")]),
                            NOW, BOUNDS)
    assert found == ["a failed: 3 errors", "b pending for 61s: no live worker"]


def test_a_record_written_before_since_was_kept_counts_from_its_last_write() -> None:
    old = {**strategy("a", "starting", 0.0), "updated": NOW - 100}
    assert health.problems(snapshot([old]), NOW, BOUNDS) == ["a starting on w1 for 100s (bound 60s)"]


@pytest.mark.parametrize("leader, says", [
    (None, "no director has led this store"),
    ({**LEADER, "live": False, "renewed": NOW - 42}, "the last leader, d1, renewed its lease 42s ago"),
    ({**LEADER, "live": False, "director": ""}, "the last leader gave the lease up"),
])
def test_no_director_leads_while_works_exist(leader: dict[str, Any] | None, says: str) -> None:
    works = [strategy("a", "running", NOW - 5)]
    assert health.problems(snapshot(works, leader=leader), NOW, BOUNDS) == [
        f"no director leads ({says}): 1 strategy cannot be placed or moved; start one with `qlab director start`"]
    assert health.problems(snapshot([], leader=leader), NOW, BOUNDS) == []  # nothing to place: nothing missing


def test_a_halt_counts_unless_allowed() -> None:
    halted = snapshot(halts=[{"scope": "account", "target": "main", "ts": NOW - 30, "problem": None}])
    (line,) = health.problems(halted, NOW, BOUNDS)
    assert line.startswith("halted: account main (since 30s): ") and "--allow-halted" in line
    assert health.problems(halted, NOW, health.Bounds(allow_halted=True)) == []


def test_a_short_or_expired_lease() -> None:
    workers = [worker("w1", left=5.9), worker("w2", left=6.1), worker("w3", left=-12), worker("w4", left=-NOW)]
    assert health.problems(snapshot(workers=workers), NOW, BOUNDS) == [
        "worker w1 on h1: lease short, 5.9s of 15s left: it has not renewed for 9s",
        "worker w3 on h1: lease expired 12s ago: its strategies are stopped",
        "worker w4 on h1: registered, but it has not taken its lease",
    ]


@pytest.mark.parametrize("bounds, says", [
    (health.Bounds(stuck_after=float("nan")), "--stuck-after must be zero or more, got nan"),
    (health.Bounds(pending_after=-1), "--pending-after must be zero or more, got -1"),
])
def test_bounds_are_checked(bounds: health.Bounds, says: str) -> None:
    with pytest.raises(BadInput, match=says):
        health.problems(snapshot(), NOW, bounds)
