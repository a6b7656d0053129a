/**
 * Python's `difflib.get_close_matches`, for the "did you mean" of a mistyped method name: the
 * same Ratcliff/Obershelp ratio (no junk; names are far below difflib's 200-character autojunk),
 * the same cutoff and order, so both runners suggest the same names.
 */

/** Longest common block of a[alo:ahi] and b[blo:bhi], the earliest of equal length: [i, j, size]. */
function longest(a, b, b2j, alo, ahi, blo, bhi) {
  let best = [alo, blo, 0];
  let lengths = new Map();
  for (let i = alo; i < ahi; i++) {
    const next = new Map();
    for (const j of b2j.get(a[i]) ?? []) {
      if (j < blo) continue;
      if (j >= bhi) break;
      const k = (lengths.get(j - 1) ?? 0) + 1;
      next.set(j, k);
      if (k > best[2]) best = [i - k + 1, j - k + 1, k];
    }
    lengths = next;
  }
  return best;
}

/** `SequenceMatcher(None, a, b).ratio()`: twice the matched characters over both lengths. */
export function ratio(a, b) {
  const b2j = new Map();
  [...b].forEach((c, j) => b2j.set(c, [...(b2j.get(c) ?? []), j]));
  let matched = 0;
  const queue = [[0, a.length, 0, b.length]];
  while (queue.length) {
    const [alo, ahi, blo, bhi] = queue.pop();
    const [i, j, k] = longest(a, b, b2j, alo, ahi, blo, bhi);
    if (!k) continue;
    matched += k;
    if (alo < i && blo < j) queue.push([alo, i, blo, j]);
    if (i + k < ahi && j + k < bhi) queue.push([i + k, ahi, j + k, bhi]);
  }
  const total = a.length + b.length;
  return total ? (2 * matched) / total : 1;
}

/** `difflib.get_close_matches(word, possibilities, n, cutoff)`: best first, ties by the later name. */
export function closeMatches(word, possibilities, n = 3, cutoff = 0.6) {
  return [...possibilities]
    .map((name) => [ratio(word, name), name])
    .filter(([score]) => score >= cutoff)
    .sort(([s1, n1], [s2, n2]) => s2 - s1 || (n1 < n2 ? 1 : n1 > n2 ? -1 : 0))
    .slice(0, n)
    .map(([, name]) => name);
}
