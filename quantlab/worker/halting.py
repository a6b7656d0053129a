"""The worker's side of the kill switch: follow the halts in the store, cancel orders when asked.

The API pool enforces halts by itself, reading the store as each call that
opens exposure is signed; this keeps the manager's copy fresh (for
``ctx.halted`` in every tick) and performs ``qlab halt --cancel-orders`` for
the accounts this worker serves.
"""

from __future__ import annotations

import logging
from typing import Callable

from quantlab.exchange import halts
from quantlab.exchange.halts import Halt
from quantlab.protocol import ApiCall, ApiResult
from quantlab.worker.context import WorkerContext

#: What --cancel-orders cancels on each account: every open linear USDT order (Bybit wants a scope).
CANCEL_ALL = {"category": "linear", "settleCoin": "USDT"}


def follow_halts(wctx: WorkerContext) -> None:
    """Read the halts (fail closed), hand them to the manager, cancel orders a new halt asks for."""
    found, problem = halts.read_or_closed(wctx.pool.store)
    if problem != wctx.halt_problem:
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


def _covered(wctx: WorkerContext, halt: Halt) -> list[str]:
    served = wctx.apis.names
    if halt.scope == "all" or (halt.scope == "worker" and halt.target == wctx.worker.id):
        return served
    if halt.scope == "account" and halt.target in served:
        return [halt.target]
    return []  # a strategy's own orders are not known here (control refuses --cancel-orders for it)


def _cancel_orders(wctx: WorkerContext, halt: Halt) -> None:
    if not wctx.manager.lease_ok():
        return  # tried again at a heartbeat that holds the lease
    for name in _covered(wctx, halt):
        wctx.log.warning("halt (%s): cancelling every open order on %s", halt.label, name)
        call = ApiCall(call_id=0, account=name, method="cancel_all_orders", kwargs=dict(CANCEL_ALL))
        wctx.apis.submit(call, [name], _report(wctx.log, halt, name), lambda: wctx.manager.lease_until)
    halts.mark_cancelled(wctx.pool.store, halt, wctx.worker.id)


def _report(log: logging.Logger, halt: Halt, account: str) -> Callable[[ApiResult], None]:
    def done(result: ApiResult) -> None:  # on a pool thread: only the log
        if result.ok:
            cancelled = len((result.result or {}).get("result", {}).get("list", []))
            log.warning("halt (%s): cancelled %d open order(s) on %s", halt.label, cancelled, account)
        else:
            log.error("halt (%s): cancelling orders on %s failed: %s", halt.label, account, result.error)

    return done
