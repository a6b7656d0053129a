/**
 * The smallest useful strategy, in JavaScript: counts its heartbeats in ctx.state and logs every tenth.
 *
 *     qlab js install            (once)
 *     qlab up strategies/heartbeat_demo.js
 */

export async function st_init(ctx) {
  ctx.state.beats ??= 0;
  ctx.log.info("heartbeat_demo %s starting at beat %d with params %j", ctx.id, ctx.state.beats, ctx.params);
}

export async function st_heartbeat(ctx, tick) {
  ctx.state.beats += 1;
  if (ctx.state.beats % 10 === 0) {
    ctx.log.info("beat %d (tick %d, %d overruns)", ctx.state.beats, tick.seq, tick.overruns);
  }
}

export async function st_exit(ctx, reason) {
  ctx.log.info("heartbeat_demo exiting after %d beats: %s %s", ctx.state.beats, reason.type, reason.message);
}
