"""The worker's side of the kill switch: follow the halts in the store, cancel orders when asked.

The API pool enforces halts by itself, reading the store as each call that
opens exposure is signed; this keeps the manager's copy fresh (for
``ctx.halted`` in every tick) and performs ``qlab halt --cancel-orders``: for
the accounts this worker serves, or for a strategy it runs (its own orders,
known by their orderLinkIds).
"""

from __future__ import annotations

from typing import Callable

from quantlab.exchange import halts
from quantlab.exchange.halts import Halt
from quantlab.store.records import EventKind
from quantlab.worker.context import WorkerContext


def follow_halts(wctx: WorkerContext) -> None:
    """Read the halts (fail closed), hand them to the manager, cancel orders a new halt asks for."""
    found, problem = halts.read_or_closed(wctx.fenced_store.store)
    # Said when the halts become unreadable and when readable again, not at each new wording of
    # the failure: a store away alternates between two of them at every read.
    if (problem is None) != (wctx.halt_problem is None):
        if problem:
            wctx.log.error("%s", problem)
        else:
            wctx.log.warning("halt state readable again")
    wctx.halt_problem = problem
    wctx.manager.halts = found
    if problem is None:
        for halt in found.halts:
            if halt.cancel_orders and wctx.worker.id not in halt.cancelled_by:
                _cancel_orders(wctx, halt)


def _covered(wctx: WorkerContext, halt: Halt) -> tuple[list[str], str]:
    """The accounts whose orders this worker cancels for ``halt``, and the strategy they are limited to."""
    served = wctx.apis.names
    if halt.scope == "all" or (halt.scope == "worker" and halt.target == wctx.worker.id):
        return served, ""
    if halt.scope == "account" and halt.target in served:
        return [halt.target], ""
    slot = wctx.manager.slots.get(halt.target) if halt.scope == "strategy" else None
    if slot is not None:  # the worker that runs a strategy cancels its orders
        return slot.work.spec.accounts, slot.id
    return [], ""


def _cancel_orders(wctx: WorkerContext, halt: Halt) -> None:
    if not wctx.manager.lease_ok():
        return  # tried again at a heartbeat that holds the lease
    accounts, strategy = _covered(wctx, halt)
    if accounts:
        whose = f"{strategy}'s open orders" if strategy else "every open order"
        wctx.log.warning("halt (%s): cancelling %s on %s", halt.label, whose, ", ".join(accounts))
        wctx.apis.cancel_orders(accounts, strategy, lambda: wctx.manager.lease_until, _report(wctx, halt, accounts))
    halts.mark_cancelled(wctx.fenced_store.store, halt, wctx.worker.id)


def _report(wctx: WorkerContext, halt: Halt, accounts: list[str]) -> Callable[[int, str], None]:
    def done(cancelled: int, error: str) -> None:  # on an API pool thread: the log and the store only
        where = ", ".join(accounts)
        if error:
            wctx.log.error("halt (%s): cancelling orders on %s failed: %s", halt.label, where, error)
            detail = f"{halt.label}: cancelling orders on {where} failed: {error}"
        else:
            wctx.log.warning("halt (%s): cancelled %d open order(s) on %s", halt.label, cancelled, where)
            detail = f"{halt.label}: cancelled {cancelled} open order(s) on {where}"
        wctx.fenced_store.event(EventKind.HALT_CANCELLED, strategy=halt.target if halt.scope == "strategy" else None,
                                worker=wctx.worker.id, detail=detail)

    return done
