/**
 * Is it JSON? `ctx.state` and `ctx.send` payloads are checked here, in the child,
 * so a strategy's mistake raises in the strategy and names the key path
 * (JSON.stringify would drop an `undefined` or turn NaN into null silently).
 */

import { NotJson } from "./errors.mjs";

/** Nesting deeper than this is reported (and a value that contains itself). */
const MAX_DEPTH = 200;

/**
 * `value` as JSON bytes, or NotJson naming the first value JSON cannot hold as it is.
 * @param {unknown} value
 * @param {string} name the path's root, e.g. "state"
 * @returns {Uint8Array}
 */
export function toJson(value, name) {
  check(value, name, 0);
  return new TextEncoder().encode(JSON.stringify(value));
}

function check(value, path, depth) {
  if (depth > MAX_DEPTH) {
    throw new NotJson(`${path.slice(0, 100)}...: nested deeper than ${MAX_DEPTH} levels (does it contain itself?)`);
  }
  if (value === null || typeof value === "string" || typeof value === "boolean") return;
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new NotJson(`${path}: ${value} is not a JSON number`);
    return;
  }
  if (Array.isArray(value)) {
    value.forEach((item, index) => check(item, `${path}[${index}]`, depth + 1));
    return;
  }
  if (typeof value === "object" && isPlain(value)) {
    for (const [key, item] of Object.entries(value)) check(item, `${path}['${key}']`, depth + 1);
    return;
  }
  const kind = value === undefined ? "undefined" : value?.constructor?.name ?? typeof value;
  throw new NotJson(`${path}: ${kind} is not JSON`);
}

function isPlain(value) {
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}
