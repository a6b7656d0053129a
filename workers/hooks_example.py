"""An example worker hook file: what a worker's own hooks can do with ``wctx``.

Name it in a worker profile (workers/NAME.toml), from the worker's working directory
or as an absolute path:

    hooks = "workers/hooks_example.py"

Every hook is optional and runs after the worker's own step of the same name.
This file logs who the worker is and what it serves when it starts; greets each
strategy whose params say ``"hello": true`` once it runs; every ``EVERY`` worker
heartbeats logs one summary line and tells every strategy here the worker's load
(through the strategies' ``st_message`` hooks); and logs how the worker ended.
Every line it writes goes to the worker's own log (``logs/worker-ID.log``) and
starts with ``hooks:``.

The rules are in docs/worker-hooks.md: a hook runs on the worker's loop, so it
returns quickly; an exception in it is logged and the worker goes on.
"""

EVERY = 5  #: worker heartbeats between two summaries

greeted = set()  #: strategies already greeted; a module's globals live as long as the worker


def st_worker_init(wctx):
    me = wctx.worker
    wctx.log.info(
        "hooks: init %s (%s) in region %s on host %s: heartbeat %gs, at most %d strategies, accounts %s",
        me.id, me.name, me.region, me.host, wctx.options.heartbeat, wctx.options.max_strategies,
        ", ".join(wctx.apis.names) or "none",
    )


def st_worker_heartbeat(wctx, tick):
    for strategy_id, strategy in wctx.strategies.items():
        if strategy_id in greeted or strategy.status != "running":
            continue
        work = wctx.pool.get_work(strategy_id)
        if work is not None and work.spec.params.get("hello") and wctx.send_to_strategy(
            strategy_id, {"hello": wctx.worker.id}
        ):
            greeted.add(strategy_id)
            wctx.log.info("hooks: greeted %s (pid %s)", strategy_id, strategy.pid)
    if tick.seq % EVERY:
        return
    state = wctx.state
    mine = wctx.pool.get_assigned_works(wctx.worker.id)
    shown = ", ".join(
        f"{strategy_id} {s.status} (errors {s.error_count}, last heartbeat {s.last_heartbeat or 0:.0f})"
        for strategy_id, s in sorted(wctx.strategies.items())
    )
    wctx.log.info(
        "hooks: beat %d: %s, cpu %.1f%%, memory %.1f MiB, %d running, %d assigned; %s",
        tick.seq, state.status, state.load.cpu, state.load.memory, state.load.running_strategies, len(mine),
        shown or "no strategies",
    )
    told = wctx.broadcast_to_all({"worker": wctx.worker.id, "cpu": state.load.cpu, "beat": tick.seq})
    wctx.log.info("hooks: told %d strategies the load", told)


def st_worker_exit(wctx, reason):
    wctx.log.info("hooks: exit %s (%s), %d strategies left", reason.type, reason.message, len(wctx.strategies))
