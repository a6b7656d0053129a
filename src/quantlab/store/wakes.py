"""Who a Work commit wakes: the feed line it leaves for the processes that must look.

Loops read only what changed since their cursor (Store.changes), so a commit
that nobody needs to see (a result written on every heartbeat, an adoption)
should leave no line, and one that changes what should run or where should
name the worker that must look.
"""

from __future__ import annotations

from typing import Any

from quantlab.store.records import Work


def work_hint(old: Work | None, new: Work | None) -> str | None:
    """The feed line for a Work commit: who must look (its worker), or None when nobody must.

    Results a worker writes on every heartbeat (counts, times) wake nobody; a change of
    what should run, where, or of the status does. An adoption wakes nobody either: the
    worker that wrote it is the only one it concerns, and a director deciding on a view
    that has not seen it decides again on the record itself (workmachine.apply).
    """
    if old is not None and new is not None:
        if _control(old) == _control(new) and old.result.status == new.result.status:
            return None
        if _adopted(old, new):
            return None
    current = new or old
    if current is None or current.assignment is None:
        return "" if old is None or old.assignment is None else old.assignment.worker
    return current.assignment.worker


def _adopted(old: Work, new: Work) -> bool:
    """``new`` is ``old`` adopted by the worker it was placed on, and nothing else that wakes anyone changed."""
    a, b = old.assignment, new.assignment
    return (a is not None and b is not None and not a.adopted and b.adopted and (a.worker, a.epoch) == (b.worker, b.epoch)
            and (old.desired, old.epoch, old.spec, old.created) == (new.desired, new.epoch, new.spec, new.created))


def _control(work: Work) -> tuple[Any, ...]:
    return (work.desired, work.epoch, work.assignment, work.spec, work.created)
