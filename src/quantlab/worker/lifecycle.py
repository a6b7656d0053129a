"""The worker's lifecycle: st_worker_init, st_worker_heartbeat, st_worker_exit.

The worker is a living thing: it registers itself and holds a lease, starts
what the director assigned to it, heals its strategies, reports its own load,
and on the way out stops its strategies before it unregisters. A profile may
add user hooks of the same names; they run after the built-in steps.
"""

from __future__ import annotations

import collections
import time

import msgspec

from quantlab.errors import CorruptRecord
from quantlab.store.leases import fence_margin, holder_deadline
from quantlab.store.records import EventKind, ExitReason, TickInfo
from quantlab.worker.context import WorkerContext
from quantlab.worker.halting import follow_halts
from quantlab.worker.registration import claim_record

#: Worker heartbeats between writes of the strategies' heartbeat counts and times.
COUNTS_EVERY = 5
#: Heartbeat counts written a second on average at most, whatever the number of strategies.
COUNT_WRITES_PER_SECOND = 20


def st_worker_init(wctx: WorkerContext) -> None:
    wctx.log.info(
        "worker %s starting: region %s, accounts %s, max %d strategies",
        wctx.worker.id, wctx.worker.region, ", ".join(wctx.apis.names) or "none", wctx.options.max_strategies,
    )
    detail = claim_record(wctx.fenced_store.store, wctx.resource, say=wctx.log.warning)
    renew_lease(wctx, wctx.fenced_store.clock())
    follow_halts(wctx)  # before the first tick: a strategy starting under a halt sees ctx.halted
    wctx.fenced_store.event(EventKind.WORKER_JOINED, worker=wctx.worker.id, detail=f"region {wctx.worker.region}: {detail}")
    _user_hook(wctx, "st_worker_init", wctx)


def st_worker_heartbeat(wctx: WorkerContext, tick: TickInfo) -> None:
    now = tick.ts
    renew_lease(wctx, now)
    wctx.manager.note_usage(wctx.meter.usage)
    follow_changes(wctx, counts=_counts_due(wctx))
    wctx.notifier.ready()  # registered, and what was assigned here is reconciled
    wctx.notifier.status(status_line(wctx))
    metrics = wctx.manager.metrics
    if metrics is not None:  # statuses and the lease are read at each scrape (WorkerMetrics.follow)
        metrics.set_halts(wctx.manager.halts.by_scope())  # unreadable halts: one of everything, as the API pool treats them
    _user_hook(wctx, "st_worker_heartbeat", wctx, tick)


def follow_changes(wctx: WorkerContext, *, counts: bool = False) -> None:
    """Act on what changed in the store: halts, assignments to start or stop, messages to deliver.

    Run by every heartbeat, and between heartbeats whenever the store changed. The lease is
    renewed on the heartbeat's own schedule only: most changes are this worker's own status
    writes, and a renewal on each would put two fsyncs between a restarted child's Hello and
    its Init.
    """
    follow_halts(wctx)
    if not wctx.stopping:
        fresh = wctx.view.refresh()
        # Inboxes are looked at when the feed says a message came (or after a full pass), not on
        # every heartbeat for every strategy: that was one listing (or one query) each per second.
        wctx.mail.update(c.key for c in fresh.others if c.kind == "inbox")
        if fresh.full:
            wctx.mail.update(wctx.view.works)
        wctx.manager.reconcile(list(wctx.view.works.values()))
        deliver_messages(wctx)
    wctx.manager.flush(counts=counts)


def status_line(wctx: WorkerContext) -> str:
    """What `systemctl status` shows: strategies here by status, and how much lease is left."""
    # The statuses as written, not probed in /proc for each child (statuses_now): this runs each heartbeat.
    counts = collections.Counter(slot.result.status for slot in wctx.manager.slots.values())
    shown = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no strategies"
    left = wctx.manager.lease_until - time.monotonic()
    lease = f"lease ok ({left:.0f}s left)" if left > 0 else "LEASE LOST: strategies stopped"
    return f"{shown}; {lease}"


def _counts_due(wctx: WorkerContext) -> bool:
    """Heartbeat counts go to the store every COUNTS_EVERY worker heartbeats (statuses at once); with
    many strategies less often, COUNT_WRITES_PER_SECOND of them a second on average (each is a record
    version: a file made, linked and pruned on the file store)."""
    now = time.monotonic()
    if now < wctx.next_counts:
        return False
    every = max(COUNTS_EVERY * wctx.options.heartbeat, len(wctx.manager.slots) / COUNT_WRITES_PER_SECOND)
    wctx.next_counts = now + every
    return True


def st_worker_exit(wctx: WorkerContext, reason: ExitReason) -> None:
    wctx.log.info("worker %s exiting: %s %s", wctx.worker.id, reason.type, reason.message)
    wctx.notifier.stopping(f"stopping: {len(wctx.manager.slots)} strategies get st_exit")
    wctx.stopping = True
    renew_lease(wctx, wctx.fenced_store.clock())
    wctx.manager.stop_all(ExitReason(type="worker_exit", message=reason.message))
    # Until its last child is gone the worker still owns its strategies: letting the lease
    # lapse here would let the director start them elsewhere while st_exit still runs.
    wctx.run_until(lambda: not wctx.manager.slots, wctx.options.drain_timeout + 1.0,
                   lambda: renew_lease(wctx, wctx.fenced_store.clock()))
    _user_hook(wctx, "st_worker_exit", wctx, reason)
    wctx.fenced_store.unregister_resource(wctx.worker.id, wctx.resource.spec.instance)
    wctx.fenced_store.event(EventKind.WORKER_STOPPED, worker=wctx.worker.id, detail=reason.message)
    wctx.apis.close()
    wctx.meter.close()


def _hold_until(wctx: WorkerContext, started: float) -> None:
    """Act until the lease minus its margin; kill what is left half-way into the margin."""
    ttl = wctx.options.lease_ttl
    wctx.manager.set_lease(holder_deadline(started, ttl), grace=fence_margin(ttl) / 2)


def renew_lease(wctx: WorkerContext, now: float) -> None:
    """Report load and status and extend the lease; self-fence when the lease is no longer ours.

    The manager may act until the lease's end minus a margin, counted on the monotonic
    clock from the start of the renewal (the write itself may stall). A renewal that
    finds the record gone (the director expired us while we were paused) or held by
    another process stops every strategy here at once (lease_lost) and registers anew;
    one that fails (a full disk, the store away) leaves the old deadline, which then runs out.
    """
    started = time.monotonic()
    running = sum(1 for slot in wctx.manager.slots.values() if slot.alive)
    state = msgspec.structs.replace(wctx.resource.state)
    state.load = wctx.meter.measure(running)
    state.status = "stopping" if wctx.stopping else ("busy" if running else "idle")
    state.last_seen = now
    state.lease_expires = now + wctx.options.lease_ttl
    try:
        renewed = wctx.fenced_store.update_resource_state(wctx.resource, state)
    except CorruptRecord:
        renewed = False  # whose it is nobody can tell: not ours any more, and claim_record replaces it
    reporter = wctx.manager.reporter
    if renewed:
        _hold_until(wctx, started)
        reporter.outage.renewed()
        return
    # The store away for longer than the lease is the usual cause, and the outage knows it; else
    # the worker itself was paused, or another process took its record.
    cause = reporter.outage.describe() or "its registration was gone, taken or undecodable at renewal"
    wctx.log.warning("worker %s lost its lease (%s): stopping its strategies", wctx.worker.id, cause)
    reporter.note(EventKind.LEASE_LOST, None, cause)
    wctx.manager.set_lease(0.0)
    if wctx.stopping:
        return
    wctx.resource.state = state
    detail = claim_record(wctx.fenced_store.store, wctx.resource, say=wctx.log.warning)
    reporter.note(EventKind.WORKER_JOINED, None, f"registered again after losing its lease: {detail}")
    if wctx.fenced_store.update_resource_state(wctx.resource, state):
        _hold_until(wctx, started)


def deliver_messages(wctx: WorkerContext) -> None:
    """Messages left in the store by `qlab strategy send`, to each strategy's st_message."""
    for strategy_id in list(wctx.mail):
        slot = wctx.strategies.get(strategy_id)
        if slot is None and strategy_id not in wctx.view.works:
            wctx.mail.discard(strategy_id)  # not ours: its own worker takes them
        elif slot is not None and slot.running:  # not before st_init returned, nor once a stop is under way
            wctx.mail.discard(strategy_id)
            for data in wctx.fenced_store.store.take_messages(strategy_id):
                wctx.send_to_strategy(strategy_id, data)


def _user_hook(wctx: WorkerContext, name: str, *args: object) -> None:
    hook = getattr(wctx.hooks, name, None)
    if hook is None:
        return
    try:
        hook(*args)
    except Exception:
        wctx.log.exception("user hook %s failed", name)
