/**
 * A rate budget kept as a token bucket: `rate` messages a second on average,
 * `burst` at once at most, as quantlab/protocol.py's TokenBucket; and ctx.send's
 * check of its size and rate against the limits Init gives (the worker checks again).
 */

import { OverBudget } from "./errors.mjs";

/** Seconds on a monotonic clock. */
const monotonic = () => Number(process.hrtime.bigint()) / 1e9;

export class TokenBucket {
  /** @param {{rate: number, burst: number}} budget @param {() => number} [clock] seconds */
  constructor({ rate, burst }, clock = monotonic) {
    this.rate = rate;
    this.burst = burst;
    this.clock = clock;
    this.tokens = burst;
    this.at = clock();
  }

  /** True while the budget allows one more message (or `cost` characters) now; nothing is taken otherwise. */
  take(cost = 1) {
    const now = this.clock();
    this.tokens = Math.min(this.burst, this.tokens + Math.max(0, now - this.at) * this.rate);
    this.at = now;
    if (this.tokens < cost) return false;
    this.tokens -= cost;
    return true;
  }
}

/** ctx.send's way to the worker: a Log frame, within the size and rate the worker takes (Init.limits). */
export function logSender(channel, limits) {
  const bucket = new TokenBucket(limits.send);
  return (data) => {
    const frame = channel.encode({ type: "log", data });
    if (frame.length > limits.send_bytes) {
      throw new OverBudget(`ctx.send: the message takes ${frame.length} bytes, over the limit of ${limits.send_bytes}; it was not sent`);
    }
    if (!bucket.take()) {
      const { rate, burst } = limits.send;
      throw new OverBudget(`ctx.send: over the budget of ${rate} messages a second (bursts of ${burst}); this one was not sent`);
    }
    channel.sendFrame(frame);
  };
}
