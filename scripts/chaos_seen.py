"""What the chaos soak sees of an operator's commands from outside: a stop taking effect, an apply's plan.

Pure functions over what `qlab status` and `qlab apply` printed, so they can
be tested with hand-written looks (tests/unit/test_chaos_checks.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


# ---- an operator's stop, seen from outside ----


@dataclass(frozen=True)
class Seen:
    """One look at a strategy while an operator's stop (or removal) settles."""

    began: float  #: monotonic: the `qlab status` it came from began (what it shows was read after)
    returned: float  #: monotonic: that command returned
    status: str | None  #: the Work's status in it; None when the look asked no status
    alive: frozenset[int]  #: pids of the strategy's runners found alive once it returned


def took_effect(seen: Iterable[Seen], since: float, status: str | None) -> float | None:
    """When a stop (or removal) whose command returned at ``since`` took effect; None while it has not.

    It took effect at the first look begun after ``since`` that shows the
    Work in ``status`` (any, when None: a removed Work has none) with none of
    the runners it had still alive: a status that says stopped while a child
    of the Work still runs is not a stop that took effect. The look's return
    is the time: what it shows held by then, perhaps not before.
    """
    for look in seen:
        if look.began >= since and (status is None or look.status == status) and not look.alive:
            return look.returned
    return None


# ---- `qlab apply` ----

APPLY_ACTIONS = ("add", "update", "start", "stop", "remove")


def plan_mismatch(output: str, expected: set[tuple[str, str]]) -> str | None:
    """What an apply's printed plan did beyond, or short of, ``expected`` (action, strategy) steps; None when exactly that.

    The soak's manifest lists the whole fleet as it stands with one strategy
    changed, so any other step is the apply (or the soak's model of the
    fleet) changing what the manifest did not.
    """
    steps = set()
    for line in output.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in APPLY_ACTIONS:
            steps.add((words[0], words[1]))
    parts = []
    if extra := sorted(steps - expected):
        parts.append("planned also " + ", ".join(f"{a} {i}" for a, i in extra))
    if missing := sorted(expected - steps):
        parts.append("did not plan " + ", ".join(f"{a} {i}" for a, i in missing))
    return "; ".join(parts) or None
