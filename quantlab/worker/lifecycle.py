"""The worker's lifecycle: st_worker_init, st_worker_heartbeat, st_worker_exit.

The worker is a living thing: it registers itself and holds a lease, starts
what the director assigned to it, heals its strategies, reports its own load,
and on the way out stops its strategies before it unregisters. A profile may
add user hooks of the same names; they run after the built-in steps.
"""

from __future__ import annotations

from quantlab.pool.records import ExitReason, TickInfo
from quantlab.worker.context import WorkerContext


def st_worker_init(wctx: WorkerContext) -> None:
    wctx.log.info(
        "worker %s starting: region %s, accounts %s, max %d strategies",
        wctx.worker.id, wctx.worker.region, ", ".join(wctx.apis.names) or "none", wctx.options.max_strategies,
    )
    renew_lease(wctx, wctx.pool.clock())
    wctx.pool.event("worker_joined", worker=wctx.worker.id, detail=f"region {wctx.worker.region}")
    _user_hook(wctx, "st_worker_init", wctx)


def st_worker_heartbeat(wctx: WorkerContext, tick: TickInfo) -> None:
    now = tick.ts
    renew_lease(wctx, now)
    if not wctx.stopping:
        wctx.manager.reconcile(wctx.pool.store.list_works(), now)
        deliver_messages(wctx)
    wctx.manager.flush()
    _user_hook(wctx, "st_worker_heartbeat", wctx, tick)


def st_worker_exit(wctx: WorkerContext, reason: ExitReason) -> None:
    wctx.log.info("worker %s exiting: %s %s", wctx.worker.id, reason.type, reason.message)
    wctx.stopping = True
    now = wctx.pool.clock()
    renew_lease(wctx, now)
    wctx.manager.stop_all(ExitReason(type="worker_exit", message=reason.message), now)
    wctx.run_until(lambda: not wctx.manager.slots, wctx.options.stop_timeout + 1.0)
    _user_hook(wctx, "st_worker_exit", wctx, reason)
    wctx.pool.unregister_resource(wctx.worker.id)
    wctx.pool.event("worker_stopped", worker=wctx.worker.id, detail=reason.message)
    wctx.apis.close()
    wctx.meter.close()


def renew_lease(wctx: WorkerContext, now: float) -> None:
    """Report load and status, and extend the lease (re-registering if the director dropped us)."""
    running = sum(1 for slot in wctx.manager.slots.values() if slot.alive)
    state = wctx.state
    state.load = wctx.meter.measure(running)
    state.status = "stopping" if wctx.stopping else ("busy" if running else "idle")
    state.last_seen = now
    state.lease_expires = now + wctx.options.lease_ttl
    if wctx.registered and wctx.pool.store.find_resource(wctx.worker.id) is None:
        wctx.log.warning("worker %s was dropped by the director (lease lost?): registering again", wctx.worker.id)
        wctx.pool.event("worker_joined", worker=wctx.worker.id, detail="registered again after losing its lease")
    wctx.pool.update_resource_state(wctx.resource, state)
    wctx.registered = True
    wctx.manager.lease_valid_until = state.lease_expires


def deliver_messages(wctx: WorkerContext) -> None:
    """Messages left in the store by `qlab strategy send`, to each strategy's st_message."""
    for strategy_id, slot in list(wctx.strategies.items()):
        if slot.phase == "running":  # not before st_init returned: the child could not take it
            for data in wctx.pool.store.take_messages(strategy_id):
                wctx.send_to_strategy(strategy_id, data)


def _user_hook(wctx: WorkerContext, name: str, *args: object) -> None:
    hook = getattr(wctx.hooks, name, None)
    if hook is None:
        return
    try:
        hook(*args)
    except Exception:
        wctx.log.exception("user hook %s failed", name)
