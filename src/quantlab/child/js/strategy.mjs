/**
 * Load a strategy module: ESM (`export async function st_init`) or CommonJS
 * (`module.exports = { st_init, ... }`), `.js` or `.mjs`.
 */

import { spawnSync } from "node:child_process";
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
    if (e instanceof SyntaxError) throw new StrategyFileError(`${file}${errorLine(file)}: syntax error: ${e.message}`);
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

/** ":LINE" of a syntax error in `file` (an import's SyntaxError does not say where; `node --check` does). */
function errorLine(file) {
  const { stderr } = spawnSync(process.execPath, ["--check", file], { encoding: "utf8" });
  const line = /^.*:(\d+)$/m.exec(stderr ?? "")?.[1];
  return line ? `:${line}` : "";
}
