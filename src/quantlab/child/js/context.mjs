/**
 * What a JavaScript strategy sees: `ctx` and `ctx.api`, as the Python runner's
 * quantlab/child/context.py gives them.
 *
 * `await ctx.api.bybit["acct"].getPositions({category: "linear"})` does not talk
 * to Bybit: it sends an ApiCall to the worker, which runs pybit's
 * `get_positions(category="linear")` with its own client and answers with the
 * response or an error. The child never holds a key or a secret. Only the
 * accounts of the strategy's Work and pybit's public request methods are
 * reachable (by pybit's names, camelCase or not, or by the `bybit-api` package's:
 * `submitOrder` is `place_order`); anything else rejects with ApiPermissionError,
 * naming the nearest names, before a message is sent.
 */

import * as errors from "./errors.mjs";
import { toJson } from "./json.mjs";

/** @typedef {(account: string, method: string, kwargs: object) => Promise<object>} ApiCaller */

/** Property names JavaScript itself looks up (await, inspection): never an account or a method. */
const NOT_NAMES = new Set(["then", "toJSON", "constructor", "inspect"]);

/** One account: any pybit method by its name in pybit, in camelCase, or in bybit-api (methods.mjs), returning a Promise. */
function accountApi(name, caller, methods) {
  return new Proxy(Object.create(null), {
    get(_, prop) {
      if (typeof prop !== "string" || NOT_NAMES.has(prop)) return undefined;
      const method = methods.resolve(prop);
      if (method === null) {
        return async () => {
          throw new errors.ApiPermissionError(methods.unknown(prop), 0);
        };
      }
      return (params = {}) => caller(name, method, params);
    },
  });
}

/** `ctx.api.bybit`: the accounts this strategy's Work names, by name. */
function accounts(names, caller, methods) {
  const known = new Map(names.map((name) => [name, accountApi(name, caller, methods)]));
  return new Proxy(Object.create(null), {
    get(_, name) {
      if (typeof name !== "string" || NOT_NAMES.has(name)) return undefined;
      if (known.has(name)) return known.get(name);
      const allowed = names.join(", ") || "none";
      throw new errors.ApiPermissionError(
        `account '${name}' is not named by this strategy's Work (allowed: ${allowed}); assign it with --account`, 0);
    },
    has: (_, name) => known.has(name),
    ownKeys: () => [...known.keys()],
    getOwnPropertyDescriptor: (_, name) =>
      known.has(name) ? { value: known.get(name), enumerable: true, configurable: true } : undefined,
  });
}

/** `ctx`: passed to every hook of one strategy incarnation. */
export class Context {
  /**
   * @param {object} init the Init message
   * @param {object} deps
   * @param {ApiCaller} deps.call
   * @param {import("./methods.mjs").MethodNames} deps.methods
   * @param {(data: unknown) => void} deps.send
   * @param {object} deps.log
   */
  constructor(init, { call, methods, send, log }) {
    this.id = init.id;
    /** this process's pid and its worker's as the machine numbers them (`qlab status`, `ps`); inside its
     * PID namespace `process.pid` is 1, and neither pid names a process there */
    this.pid = init.pid ?? 0;
    this.workerPid = init.worker_pid ?? 0;
    this.params = init.params;
    /** persisted after every heartbeat, restored on restart */
    this.state = init.state;
    this.log = log;
    this.api = { bybit: accounts(init.accounts, call, methods) };
    /** orders and positions found by reconciliation when this incarnation started */
    this.openOrders = init.open_orders ?? [];
    this.positions = init.positions ?? [];
    /** a halt covers this strategy: calls that open exposure are refused; updated with every tick */
    this.halted = false;
    /** ApiError and its subclasses, for `instanceof` */
    this.errors = errors;
    this.stopReason = null;
    this._send = send;
  }

  /** Report something to the worker; it is recorded as an event. `data` must be JSON (NotJson otherwise). */
  send(data) {
    toJson(data, "data");
    this._send(data);
  }

  /** Ask to stop after the current hook: st_exit runs with reason type 'manual'. */
  stop(reason = "") {
    this.stopReason = reason || "stopped by the strategy";
  }
}
