"""The Work record's lifecycle: one pure module of named transitions.

Four fields say where a strategy is in its life, and only this module writes
them: ``desired`` (what the operator wants), ``assignment`` (who holds it),
``epoch`` (the fence) and ``result.status`` with ``result.reason`` (what
people see). Every writer (the operator's commands, `qlab apply`, the
director, the worker) applies a transition through the store's
compare-and-swap (``apply``); a transition gets the Work as it is now and
returns the new one (or None: delete it) with the events to record, or raises
``Refused`` when it does not apply any more. It may run again on a newer Work
when another writer got there first, so it decides only from what it is given.

The rules, in the order a Work lives them:

- **The epoch is the fence.** Only the holder whose assignment carries the
  Work's current epoch may act for it: tick it, send its orders, write its
  state and status. Placing raises the epoch, and so does every change that
  takes the Work from its holder: a removal, a new placement or new accounts,
  a lost worker, a settled stop that was never adopted.
- **A holder lets go before anyone else holds.** A change that raises the
  epoch while a worker has *adopted* the Work (its child may run) keeps the
  assignment: the holder is now *draining*. It stops its child at once with
  its exchange calls closed, and releases the Work when the child is gone.
  The director places a Work only once nobody holds it, so a removed and
  re-created strategy, or a moved one, never runs twice. A draining holder
  whose worker dies is released by the director when the worker's lease
  expires (its children died with it, or were killed by its own fence).
- **Adoption is a write.** A worker runs a Work only after ``adopt`` landed:
  the assignment still names it at the current epoch. Until then the director
  (or the operator's stop) can take it back without waiting for anyone.
- **Every state has a way out.** A stop of a Work nobody adopted settles at
  once; one a worker adopted settles when that worker's child has stopped
  (``release``) or when the worker is lost (``expire_worker``); ``settle``
  catches anything left over on every director pass.

Over 400 lines: every transition stands beside the others, so the whole lifecycle reads in one place.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, TypeVar

import msgspec

from quantlab.errors import NotFound, QuantlabError
from quantlab.store.records import (
    Assignment,
    Event,
    EventKind,
    ExitReason,
    StrategyResult,
    StrategySpec,
    Work,
)
from quantlab.store.store import Store, record_events

#: The reason a Work shows until the director places it.
WAITING = "waiting for the director to place it"
#: What a Work whose stop completed after someone asked to start it again shows until it is placed.
STARTED_AGAIN = "started again while stopping; waiting for the director to place it"
#: Settled statuses: nothing runs, nothing will until someone asks.
SETTLED = ("stopped", "failed")

Outcome = Literal["stopped", "failed", "released", "handed_back"]


class Refused(QuantlabError):
    """The transition does not apply to the Work as it is now."""


class Change(msgspec.Struct, kw_only=True):
    """What a transition makes of a Work: the new record (None: delete it) and the events to record."""

    work: Work | None
    events: list[Event] = []


Transition = Callable[[Work], Change]
S = TypeVar("S", bound=msgspec.Struct)


# ---- reading a Work ----


def holds(work: Work, worker: str, epoch: int | None = None) -> bool:
    """``worker`` holds the Work (at ``epoch``, when given), current or draining."""
    a = work.assignment
    return a is not None and a.worker == worker and (epoch is None or a.epoch == epoch)


def current(work: Work, worker: str, epoch: int) -> bool:
    """``worker`` may act for the Work at ``epoch``: it holds it and the epoch is the Work's."""
    return holds(work, worker, epoch) and work.epoch == epoch


def placed_on(work: Work, worker: str) -> bool:
    """``worker`` is to run the Work: it holds it at the current epoch and the operator wants it running."""
    a = work.assignment
    return a is not None and work.desired == "running" and current(work, worker, a.epoch)


def draining(work: Work) -> bool:
    """Its holder was fenced off and has yet to let go."""
    return work.assignment is not None and work.assignment.epoch < work.epoch


def wants_a_worker(work: Work) -> bool:
    return work.desired == "running" and work.assignment is None and work.result.status != "failed"


def occupies(work: Work) -> bool:
    """Counts against its worker's capacity: its child runs, or is about to."""
    a = work.assignment
    return a is not None and (a.adopted or work.desired == "running")


def exit_reason(work: Work | None, worker: str, epoch: int) -> ExitReason | None:
    """Why the holder of ``(worker, epoch)`` must stop its child at once, fenced; None while it may run."""
    if work is None:
        return ExitReason(type="removed", message="strategy removed")
    if current(work, worker, epoch):
        return None
    if work.desired == "removed":
        return ExitReason(type="removed", message="strategy removed")
    if work.assignment is not None and work.assignment.worker != worker:
        return ExitReason(type="reassigned", message=f"assigned to {work.assignment.worker} now")
    if holds(work, worker, epoch):
        return ExitReason(type="moved_away", message="its placement or accounts changed: placed anew")
    return ExitReason(type="lease_lost", message="assignment dropped: this worker's lease ran out")


# ---- the operator ----


def submit(work_id: str, spec: StrategySpec, now: float) -> Work:
    """A new Work: desired=running, waiting for the director (the store sets its first epoch)."""
    return Work(id=work_id, spec=spec, desired="running", created=now,
                result=StrategyResult(status="pending", reason=WAITING, updated=now, since=now))


def resubmit(spec: StrategySpec, now: float) -> Transition:
    """`assign` of an id whose Work is being removed: the new one waits for the old holder to let go."""

    def resubmitted(work: Work) -> Change:
        if work.desired != "removed":
            raise Refused(f"strategy {work.id!r} already exists")
        fresh = submit(work.id, spec, now)
        if work.assignment is not None:
            fresh.result.reason = f"waiting for its previous run on {work.assignment.worker} to stop"
        new = _replace(work, spec=spec, desired="running", created=now, result=fresh.result)
        return Change(work=new, events=[_event(now, EventKind.SUBMITTED, work, spec.file)])

    return resubmitted


def request_stop(now: float, *, detail: str = "") -> Transition:
    """desired=stopped; a Work no worker adopted stops at once, an adopted one when its child has."""

    def stop(work: Work) -> Change:
        _refuse_removed(work)
        event = _event(now, EventKind.STOP_REQUESTED, work, detail)
        stopped: Work | None = _replace(work, desired="stopped")
        if work.assignment is None or not work.assignment.adopted:
            stopped = _settle_unheld(_fence(_replace(work, desired="stopped")), "stopped by operator", now)
        return Change(work=stopped, events=[event])

    return stop


def request_start(now: float, *, restart: bool = False, detail: str = "") -> Transition:
    """desired=running; a settled Work goes back to placement with a fresh error count.

    ``restart``: a running child is restarted too (its holder sees ``restart_seq`` change).
    """

    def start(work: Work) -> Change:
        _refuse_removed(work)
        work = _wanted_running(work, now)
        if restart:
            work = _replace(work, spec=_replace(work.spec, restart_seq=work.spec.restart_seq + 1))
        kind = EventKind.RESTART_REQUESTED if restart else EventKind.START_REQUESTED
        return Change(work=work, events=[_event(now, kind, work, detail)])

    return start


def update_spec(spec: StrategySpec, now: float, *, detail: str = "") -> Transition:
    """A new spec (`qlab apply`): the child restarts with it; a new placement or new accounts place it anew."""

    def update(work: Work) -> Change:
        _refuse_removed(work)
        moves = work.spec.placement != spec.placement or work.spec.accounts != spec.accounts
        work = _wanted_running(work, now)
        work = _replace(work, spec=_replace(spec, restart_seq=work.spec.restart_seq + 1))
        if moves and work.assignment is not None:
            work = _fence(work)
            if work.assignment is None:
                work = _waiting(work, WAITING, now)
            else:
                work = _waiting(work, f"moving: waiting for {work.assignment.worker} to stop it", now)
        return Change(work=work, events=[_event(now, EventKind.RESTART_REQUESTED, work, detail)])

    return update


def remove(now: float, *, detail: str = "") -> Transition:
    """Forget the Work. One a worker adopted is fenced at once and deleted when its holder lets go."""

    def removed(work: Work) -> Change:
        _refuse_removed(work)
        event = _event(now, EventKind.REMOVED, work, detail)
        work = _fence(_replace(work, desired="removed"))
        if work.assignment is None:
            return Change(work=None, events=[event])
        result = _replace(work.result, status="stopping",
                          reason=f"removed; waiting for {work.assignment.worker} to stop it", updated=now)
        return Change(work=_replace(work, result=result), events=[event])

    return removed


# ---- the director ----


def place(worker: str, now: float) -> Transition:
    """Hand the Work to ``worker`` at a new epoch; the worker adopts it before it runs it."""

    def placed(work: Work) -> Change:
        if not wants_a_worker(work):
            raise Refused(f"strategy {work.id!r} does not want a worker now")
        epoch = work.epoch + 1
        result = _replace(_no_child(work.result), status="assigned", reason="", updated=now)
        work = _replace(work, epoch=epoch, assignment=Assignment(worker=worker, epoch=epoch), result=result)
        return Change(work=work, events=[_event(now, EventKind.ASSIGNED, work, f"epoch {epoch}", worker=worker)])

    return placed


def mark_pending(reason: str, now: float) -> Transition:
    """No worker can take it: say why, in words a person can act on."""

    def pending(work: Work) -> Change:
        if not wants_a_worker(work):
            raise Refused(f"strategy {work.id!r} does not want a worker now")
        if work.result.status == "pending" and work.result.reason == reason:
            return Change(work=work)
        return Change(work=_waiting(work, reason, now), events=[_event(now, EventKind.PENDING, work, reason)])

    return pending


def expire_worker(worker: str, why: str, now: float) -> Transition:
    """``worker`` is gone (its lease ran out): what it held goes back to placement at a new epoch."""

    def expired(work: Work) -> Change:
        if not holds(work, worker):
            raise Refused(f"strategy {work.id!r} is not held by {worker}")
        event = _event(now, EventKind.REASSIGNED, work, why, worker=worker)
        settled = _settle_unheld(_unassign(_fence(work)), f"{why}; waiting for placement", now)
        return Change(work=settled, events=[event])

    return expired


def settle(now: float) -> Transition:
    """A Work that does not want to run and runs nowhere ends settled: stopped, or gone when removed."""

    def settled(work: Work) -> Change:
        held = work.assignment is not None and work.assignment.adopted
        if work.desired == "running" or held:
            raise Refused(f"strategy {work.id!r} is not for the director to settle")
        if work.assignment is None and (work.result.status in SETTLED and work.desired == "stopped"):
            raise Refused(f"strategy {work.id!r} is settled already")
        return Change(work=_settle_unheld(_unassign(_fence(work)), "stopped by operator", now))

    return settled


def needs_settling(work: Work) -> bool:
    """What ``settle`` would change: the director looks at these only."""
    if work.desired == "running" or (work.assignment is not None and work.assignment.adopted):
        return False
    return work.desired == "removed" or work.assignment is not None or work.result.status not in SETTLED


# ---- the worker ----


def adopt(worker: str, epoch: int, now: float) -> Transition:
    """The worker takes the Work it was placed on, before it forks anything."""

    def adopted(work: Work) -> Change:
        if not current(work, worker, epoch) or work.desired != "running":
            raise Refused(f"strategy {work.id!r} is no longer {worker}'s to run at epoch {epoch}")
        assert work.assignment is not None
        assignment = _replace(work.assignment, adopted=True)
        result = _replace(work.result, status="starting", reason="", updated=now)
        return Change(work=_replace(work, assignment=assignment, result=result))

    return adopted


#: Statuses a holder reports while its child lives; settled ones go through ``release``.
LIVE = ("starting", "running", "paused", "error", "stopping")


def report(worker: str, epoch: int, result: StrategyResult, now: float) -> Transition:
    """The holder's report on its running strategy (status, pid, counts), while the epoch is its own."""

    def reported(work: Work) -> Change:
        if not current(work, worker, epoch):
            raise Refused(f"strategy {work.id!r} is no longer assigned to {worker} at epoch {epoch}")
        if result.status not in LIVE:
            raise Refused(f"a report says {result.status!r}: a settled status is written by release")
        return Change(work=_replace(work, result=_replace(result, updated=now)))

    return reported


def release(worker: str, epoch: int, outcome: Outcome, result: StrategyResult, now: float, *,
            by_strategy: bool = False, restart_seq: int | None = None) -> Transition:
    """The holder's child is gone: it lets go of the Work, with the last word on how it ended.

    A draining holder's word is not the Work's any more (it was removed, moved or
    submitted anew): it only lets go. ``by_strategy`` (the strategy called ctx.stop())
    leaves the Work stopped, unless a start or restart came since (``restart_seq``).
    """

    def released(work: Work) -> Change:
        if not holds(work, worker, epoch):
            raise Refused(f"strategy {work.id!r} is no longer held by {worker} at epoch {epoch}")
        was_draining, work = draining(work), _unassign(work)
        if was_draining:
            return Change(work=_settle_unheld(work, WAITING, now))
        event = _event(now, _released_kind(outcome), work, result.reason, worker=worker)
        if by_strategy and work.desired == "running" and work.spec.restart_seq == restart_seq:
            work = _replace(work, desired="stopped")  # ctx.stop(): it stays stopped, unless a start came since
        work = _replace(work, result=_replace(_no_child(result), updated=now))
        return Change(work=_after(work, worker, outcome, result.reason, now), events=[event])

    return released


def _released_kind(outcome: Outcome) -> EventKind:
    return {"failed": EventKind.FAILED, "stopped": EventKind.STOPPED}.get(outcome, EventKind.RELEASED)


def _after(work: Work, worker: str, outcome: Outcome, reason: str, now: float) -> Work | None:
    """What a Work its holder let go of shows, by how its child ended there."""
    if outcome == "failed":
        return _replace(work, result=_replace(work.result, status="failed"))
    if outcome == "handed_back":
        return _waiting(work, f"worker {worker} stopped; waiting for placement", now)
    if outcome == "released":
        return _settle_unheld(work, f"{reason}; waiting for placement", now)
    if work.desired == "running":
        return _waiting(work, STARTED_AGAIN, now)
    return _stopped(work, reason, now)


# ---- applying a transition ----


def apply(store: Store, work_id: str, transition: Transition) -> Change:
    """Apply ``transition`` through the store's compare-and-swap, then record its events.

    Raises Refused (nothing written) or NotFound. A transition that deletes the Work is
    applied as a conditional removal: the Work is deleted only while the transition, run on
    the record as it is at that moment, still deletes it.
    """
    for _ in range(100):
        landed: Change | None = None

        def update(work: Work) -> Work | None:
            nonlocal landed
            landed = transition(work)
            if landed.work is None:
                raise _Deletes
            landed.work = with_since(work, landed.work)
            return landed.work

        try:
            store.update_work(work_id, update)
        except _Deletes:
            if not store.remove_work(work_id, only_if=lambda w: transition(w).work is None):
                continue  # it changed since: decide again on the new record
        assert landed is not None
        record_events(store, landed.events)  # the transition has landed: an event it cannot write is a warning
        return landed
    raise Refused(f"strategy {work_id!r} kept changing under a deletion")


def with_since(old: Work, new: Work) -> Work:
    """``new`` with ``result.since`` moved when, and only when, its status differs from ``old``'s.

    Done here for every transition, whoever wrote the result: a worker's report carries the
    result it keeps, whose ``since`` is its own copy's; the status change is the store's fact.
    A transition that changes the status stamps ``updated`` with its time, which ``since`` takes.
    """
    since = old.result.since if new.result.status == old.result.status else new.result.updated
    if new.result.since == since:
        return new
    return _replace(new, result=_replace(new.result, since=since))


def try_apply(store: Store, work_id: str, transition: Transition) -> Change | None:
    """``apply``, where a refusal or a vanished Work means the store moved on: None."""
    try:
        return apply(store, work_id, transition)
    except (Refused, NotFound):
        return None


class _Deletes(Exception):
    """Raised out of a compare-and-swap update whose transition deletes the record."""


# ---- pieces ----


def _refuse_removed(work: Work) -> None:
    if work.desired == "removed":
        raise Refused(f"strategy {work.id!r} is being removed")


def _fence(work: Work) -> Work:
    """A new epoch: the holder may act no more. One that never adopted the Work lets go at once."""
    work = _replace(work, epoch=work.epoch + 1)
    if work.assignment is not None and not work.assignment.adopted:
        work = _unassign(work)
    return work


def _unassign(work: Work) -> Work:
    return _replace(work, assignment=None, result=_no_child(work.result))


def _no_child(result: StrategyResult) -> StrategyResult:
    """What a result shows once no child runs: no pid, and none of the child's measurements."""
    return _replace(result, pid=None, cpu=None, memory=None)


def _settle_unheld(work: Work, why: str, now: float) -> Work | None:
    """What a Work nobody holds (or one still draining) shows for its ``desired``; None: delete."""
    if work.desired == "removed":
        return None if work.assignment is None else work
    if work.desired == "stopped":
        return work if work.assignment is not None else _stopped(work, "stopped by operator", now)
    if work.result.status == "failed":
        return work
    return _waiting(work, why, now)


def _wanted_running(work: Work, now: float) -> Work:
    work = _replace(work, desired="running")
    if work.assignment is None and work.result.status in SETTLED:
        return _waiting(_replace(work, result=_replace(work.result, error_count=0)), WAITING, now)
    return work


def _waiting(work: Work, reason: str, now: float) -> Work:
    return _replace(work, result=_replace(work.result, status="pending", reason=reason, updated=now))


def _stopped(work: Work, reason: str, now: float) -> Work:
    return _replace(work, result=_replace(work.result, status="stopped", reason=reason or "stopped", updated=now))


def _event(now: float, kind: EventKind, work: Work, detail: str = "", *, worker: str | None = None) -> Event:
    return Event(ts=now, kind=kind, strategy=work.id, worker=worker, detail=detail)


def _replace(record: S, **changes: Any) -> S:
    return msgspec.structs.replace(record, **changes)
