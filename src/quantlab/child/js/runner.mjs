/**
 * The Node strategy child: one incarnation of one JavaScript strategy, driven
 * by its worker over the same channel and protocol as quantlab/child/runner.py.
 *
 *   node runner.mjs child ENDPOINT RUNTIME_DIR   (the worker's zygote execs this; the token on stdin)
 *   node runner.mjs check FILE RUNTIME_DIR       (`qlab strategy assign` runs this)
 *
 *   child                              worker
 *   Hello(pid, token)           ->     (binds this connection to the strategy: quantlab/protocol.py)
 *                               <-     Init(file, params, state, accounts, log)
 *   import file, st_init(ctx)
 *   Ready                       ->
 *                               <-     Tick            (only after the last one was answered)
 *   st_heartbeat(ctx, tick)
 *   Heartbeat(seq, state?)      ->     (or TickExpired(seq) once the tick's lease_until has passed)
 *                               <-     Message         -> st_message(ctx, data), if exported
 *                               <-     Stop(reason)    -> st_exit(ctx, reason)
 *   Exited(reason, state?)      ->     and exit 0
 *
 * An exception in a hook is sent as Error (message and the stack's head); st_exit
 * then gets its chance (reason type "error") and the child exits 1.
 */

import { readSync } from "node:fs";
import { logSender } from "./budget.mjs";
import { Channel, loadRuntime } from "./channel.mjs";
import { Context } from "./context.mjs";
import { NotJson } from "./errors.mjs";
import { toJson } from "./json.mjs";
import { captureConsole, LogFile, strategyLogger } from "./logfile.mjs";
import { MethodNames } from "./methods.mjs";
import { loadStrategy } from "./strategy.mjs";

/** Lines of stack trace kept in last_error. */
const TRACEBACK_LINES = 12;

/** A hook threw; already reported to the worker. */
class HookFailed extends Error {}

/** Seconds on CLOCK_MONOTONIC (libuv's hrtime on Linux): the clock of the worker's lease_until. */
const monotonic = () => Number(process.hrtime.bigint()) / 1e9;

class Runner {
  constructor(channel, init) {
    this.channel = channel;
    this.init = init;
    const file = new LogFile(1, init.limits.log); // fd 1: the log the zygote opened
    captureConsole(file);
    this.ctx = new Context(init, {
      call: (account, method, kwargs) => channel.call(account, method, kwargs),
      methods: new MethodNames(),
      send: logSender(channel, init.limits),
      log: strategyLogger(file),
    });
    this.hooks = null;
    this.sentState = "";
  }

  async run() {
    try {
      this.hooks = (await this.guard("load", () => loadStrategy(this.init.file))).hooks;
      await this.call("st_init", this.ctx);
      this.channel.send({ type: "ready" });
      return await this.serve();
    } catch (e) {
      if (e instanceof HookFailed) return 1;
      throw e;
    }
  }

  async serve() {
    for (;;) {
      const msg = await this.channel.next();
      if (msg.type === "tick") {
        if (monotonic() >= msg.lease_until) {
          // The worker's lease ran out before we got here: the strategy may run elsewhere by now.
          this.channel.send({ type: "tick_expired", seq: msg.tick.seq });
          continue;
        }
        this.ctx.halted = Boolean(msg.halted);
        const started = monotonic();
        await this.call("st_heartbeat", this.ctx, msg.tick);
        const hookSeconds = monotonic() - started;
        const state = await this.changedState("st_heartbeat");
        this.channel.send({ type: "heartbeat", seq: msg.tick.seq, state, hook_seconds: hookSeconds });
      } else if (msg.type === "message") {
        if (typeof this.hooks.st_message === "function") await this.call("st_message", this.ctx, msg.data);
      } else if (msg.type === "stop") {
        return this.finish(msg.reason);
      }
      if (this.ctx.stopReason !== null) return this.finish({ type: "manual", message: this.ctx.stopReason });
    }
  }

  async finish(reason) {
    await this.call("st_exit", this.ctx, reason);
    this.channel.send({ type: "exited", reason, state: await this.changedState("st_exit") });
    return 0;
  }

  /** ctx.state as JSON when it changed since the last one sent (null otherwise); HookFailed when it is not JSON. */
  async changedState(after) {
    const state = await this.guard(`ctx.state after ${after}`, () => stateJson(this.ctx.state, this.init.limits.state_bytes));
    const text = Buffer.from(state).toString();
    if (text === this.sentState) return null;
    this.sentState = text;
    return state;
  }

  async call(hook, ...args) {
    const fn = this.hooks[hook]; // called bare, so its stack frame reads "at st_heartbeat"
    await this.guard(hook, () => fn(...args));
  }

  async guard(hook, fn) {
    try {
      return await fn();
    } catch (e) {
      await this.report(hook, e);
      throw new HookFailed(hook);
    }
  }

  async report(hook, e) {
    const error = e instanceof Error ? e : new Error(String(e));
    const message = error instanceof NotJson ? `${hook}: ${error.message}` : `${hook}: ${error.name}: ${error.message}`;
    const traceback = (error.stack ?? message).split("\n").slice(0, TRACEBACK_LINES).join("\n");
    this.ctx.log.error("%s\n%s", message, traceback);
    const chars = this.init.limits.error_chars; // the worker takes no more: the log above has it all
    this.channel.send({ type: "error", hook, message: message.slice(0, chars), traceback: traceback.slice(-chars) });
    if (!["st_exit", "load", "ctx.state after st_exit"].includes(hook)) await this.lastWords(message);
  }

  /** After an error, st_exit still gets its chance to clean up. */
  async lastWords(message) {
    try {
      await this.hooks?.st_exit(this.ctx, { type: "error", message });
    } catch (e) {
      this.ctx.log.error("st_exit failed after an error\n%s", e?.stack ?? e);
    }
  }
}

function stateJson(state, limit) {
  if (state === null || typeof state !== "object" || Array.isArray(state)) {
    throw new NotJson(`state: must be an object, not ${Array.isArray(state) ? "array" : state === null ? "null" : typeof state}`);
  }
  const json = toJson(state, "state");
  if (json.length > limit) throw new NotJson(`state: ${json.length} bytes of JSON, over the limit of ${limit}`);
  return json;
}

/** The incarnation's token: all of stdin, a pipe the zygote wrote it to and closed before the exec. */
function readToken() {
  const chunks = [];
  const buffer = Buffer.alloc(64);
  for (;;) {
    const n = readSync(0, buffer, 0, buffer.length, null);
    if (n === 0) return Buffer.concat(chunks);
    chunks.push(Buffer.from(buffer.subarray(0, n)));
  }
}

async function runChild(endpoint, runtimeDir) {
  const token = readToken();
  const channel = new Channel(loadRuntime(runtimeDir), endpoint);
  let code = 2;
  try {
    channel.send({ type: "hello", pid: process.pid, token });
    const first = await channel.next();
    if (first.type === "stop") {
      // The Work moved away before we connected: nothing ran, nothing to clean up.
      channel.send({ type: "exited", reason: first.reason });
      code = 0;
    } else if (first.type === "init") {
      channel.limits = first.limits;
      code = await new Runner(channel, first).run();
    }
  } finally {
    await channel.close();
  }
  return code;
}

/** Load the module as the child would; print its ACCOUNTS as JSON on the last line, or the error on stderr. */
async function check(file) {
  try {
    const { accounts } = await loadStrategy(file);
    process.stdout.write(`\n${JSON.stringify({ accounts })}\n`);
    return 0;
  } catch (e) {
    process.stderr.write(`${e.name === "StrategyFileError" ? e.message : `${file}: cannot load: ${e.name}: ${e.message}`}\n`);
    return 1;
  }
}

const [mode, ...args] = process.argv.slice(2);
// Leave at once, whatever the strategy left running (timers, sockets): the lingering frames still go out.
if (mode === "child") process.exit(await runChild(args[0], args[1]));
else if (mode === "check") process.exit(await check(args[0]));
else {
  process.stderr.write("usage: runner.mjs child ENDPOINT RUNTIME_DIR (token on stdin) | check FILE\n");
  process.exit(2);
}
