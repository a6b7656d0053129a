/**
 * ctx.log and console output into the strategy's own log: the file the zygote
 * opened on fd 1 before the child's sandbox, which grants no path under the
 * home (quantlab/worker/sandbox.py); the worker rotates it by size
 * (quantlab/worker/logrotate.py). Same line format as the Python runner's, so
 * `qlab strategy logs` reads both alike; within the same budget of characters
 * (Init's `limits.log`): output over it is dropped, and the next line that fits
 * is preceded by one saying how much.
 */

import { writeSync } from "node:fs";
import { format } from "node:util";
import { TokenBucket } from "./budget.mjs";

const LEVELS = { debug: 10, info: 20, warning: 30, error: 40, critical: 50 };
/** Records below this level are dropped, as the Python runner's logger does. */
const MIN_LEVEL = LEVELS.info;

export class LogFile {
  /**
   * @param {number} fd the log, open for appending
   * @param {{rate: number, burst: number}} budget characters a second, and at once
   */
  constructor(fd, budget) {
    this.fd = fd;
    this.budget = budget;
    this.bucket = new TokenBucket(budget);
    this.dropped = 0; // characters dropped since the last line written
  }

  /** Append `text` when the budget allows it. */
  write(text) {
    if (!this.bucket.take(text.length)) {
      this.dropped += text.length;
      return;
    }
    if (this.dropped) {
      const { rate, burst } = this.budget;
      const note = `quantlab: dropped ${this.dropped} characters of ctx.log and console output: over the log budget of ${rate} a second (bursts of ${burst})\n`;
      this.dropped = 0;
      writeSync(this.fd, note);
    }
    writeSync(this.fd, text);
  }
}

/** `2026-11-29 07:33:14,123`: Python logging's asctime, local time. */
function asctime(date = new Date()) {
  const two = (n) => String(n).padStart(2, "0");
  const day = `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())}`;
  const time = `${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}`;
  return `${day} ${time},${String(date.getMilliseconds()).padStart(3, "0")}`;
}

/**
 * `ctx.log`: `info("beat %d", n)` (util.format placeholders), `warn`, `error`, `debug`.
 * @param {LogFile} file
 */
export function strategyLogger(file) {
  const at = (level) => (...args) => {
    if (LEVELS[level] >= MIN_LEVEL) file.write(`${asctime()} ${level.toUpperCase()} ${format(...args)}\n`);
  };
  return { debug: at("debug"), info: at("info"), warn: at("warning"), warning: at("warning"), error: at("error"), critical: at("critical") };
}

/** console.log and friends write through the same file, so they rotate with it (like print() in Python). */
export function captureConsole(file) {
  const write = (...args) => file.write(`${format(...args)}\n`);
  for (const name of ["log", "info", "warn", "error", "debug"]) console[name] = write;
}
