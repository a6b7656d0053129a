/**
 * Load a strategy module: ESM (`export async function st_init`) or CommonJS
 * (`module.exports = { st_init, ... }`), `.js` or `.mjs`.
 */

import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

export const HOOKS = ["st_init", "st_heartbeat", "st_exit"];

export class StrategyFileError extends Error {
  constructor(message) {
    super(message);
    this.name = "StrategyFileError";
  }
}

/**
 * Import `file` (runs its top level) and pick its hooks.
 * @param {string} file an absolute path
 * @returns {Promise<{hooks: Record<string, Function>, accounts: string[]}>}
 */
export async function loadStrategy(file) {
  let mod;
  try {
    mod = await import(pathToFileURL(file).href);
  } catch (e) {
    if (e instanceof SyntaxError) throw new StrategyFileError(`${file}${errorPlace(file, e.message)}: syntax error: ${e.message}`);
    throw e;
  }
  const pick = (name) => mod[name] ?? mod.default?.[name];
  const hooks = Object.fromEntries([...HOOKS, "st_message"].map((name) => [name, pick(name)]));
  const missing = HOOKS.filter((name) => typeof hooks[name] !== "function");
  if (missing.length) {
    throw new StrategyFileError(`${file}: missing hook(s) ${missing.join(", ")}: a strategy exports ${HOOKS.join(", ")}`);
  }
  const named = pick("ACCOUNTS") ?? pick("ACCOUNT") ?? [];
  return { hooks, accounts: [named].flat().filter((name) => typeof name === "string") };
}

/**
 * ":LINE:COLUMN" of a syntax error in `file`. An import's SyntaxError does not say where, and
 * `node --check FILE` says nothing at all of a `.js` file that is neither marked a module nor
 * CommonJS. So its source is checked on stdin as each kind, and the check whose error is the
 * import's says where.
 */
function errorPlace(file, message) {
  const source = readFileSync(file, "utf8");
  let first = "";
  for (const kind of file.endsWith(".mjs") ? ["module"] : ["module", "commonjs"]) {
    const { stderr } = spawnSync(process.execPath, [`--input-type=${kind}`, "--check"], { input: source, encoding: "utf8" });
    const place = reportedPlace(stderr ?? "");
    if (place && stderr.includes(`SyntaxError: ${message}`)) return place;
    first ||= place;
  }
  return first;
}

/** ":LINE:COLUMN" from a check's report: `[stdin]:LINE`, the source line, then carets under the token. */
function reportedPlace(report) {
  const lines = report.split("\n");
  const at = lines.findIndex((line) => /^\[stdin\]:\d+$/.test(line));
  if (at < 0) return "";
  const line = lines[at].slice("[stdin]:".length);
  const caret = (lines[at + 2] ?? "").indexOf("^");
  return caret < 0 ? `:${line}` : `:${line}:${caret + 1}`;
}
