/**
 * The pybit methods a strategy may call, read from quantlab/exchange/methods.py
 * (a generated static literal, the one list both runners use), and the mapping
 * from the original JavaScript names (`getPositions`) to pybit's (`get_positions`).
 */

import { readFileSync } from "node:fs";

const METHODS_PY = new URL("../../exchange/methods.py", import.meta.url);

/** @returns {Set<string>} pybit's public request method names */
export function publicMethods() {
  const text = readFileSync(METHODS_PY, "utf8");
  return new Set([...text.matchAll(/^\s+"([a-z0-9_]+)",$/gm)].map((m) => m[1]));
}

/** `placeOrder` -> `place_order`; a snake_case name stays as it is. */
export function snakeCase(name) {
  return name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}
