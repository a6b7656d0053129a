"""The smallest useful strategy: counts its heartbeats in ctx.state and logs every tenth.

    qlab up strategies/heartbeat_demo.py
"""


def st_init(ctx):
    ctx.state.setdefault("beats", 0)
    ctx.log.info("heartbeat_demo %s starting at beat %d with params %s", ctx.id, ctx.state["beats"], ctx.params)


def st_heartbeat(ctx, tick):
    ctx.state["beats"] += 1
    if ctx.state["beats"] % 10 == 0:
        ctx.log.info("beat %d (tick %d, %d overruns)", ctx.state["beats"], tick.seq, tick.overruns)


def st_exit(ctx, reason):
    ctx.log.info("heartbeat_demo exiting after %d beats: %s %s", ctx.state["beats"], reason.type, reason.message)
