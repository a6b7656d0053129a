/**
 * strategies/grid_paper.py in JavaScript: a small grid bot on the paper account,
 * buying below the price and selling above it.
 *
 *     qlab js install            (once)
 *     qlab up strategies/grid_paper.js
 *
 * It places the same orders as the Python bot for the same prices (a test checks
 * it). Restarts never duplicate an order: every orderLinkId is derived from
 * ctx.state (the grid's round and level), which survives restarts; a duplicate
 * the exchange refuses (retCode 110072) counts as already placed. An order that
 * leaves the book is a fill only when the order history says "Filled": one
 * cancelled from outside (`qlab halt --cancel-orders`) starts a new round.
 */

export const ACCOUNTS = ["paper"]; // what `qlab strategy assign` uses when --account is not given

const DUPLICATE_LINK_ID = 110072;
const HALTED = 170999; // ApiHaltedError's retCode
// Bybit's orderStatus values of an order that is off the book for good
const ENDED = ["Filled", "Cancelled", "PartiallyFilledCanceled", "Rejected", "Deactivated"];
const DEFAULTS = { account: "paper", symbol: "BTCUSDT", levels: 3, step: 0.0005, qty: "0.001" };

export async function st_init(ctx) {
  ctx.state = { round: 0, center: null, placed: [], filled: [], fills: 0, ...ctx.state };
  const p = params(ctx);
  ctx.log.info("grid on %s %s, round %d", p.account, p.symbol, ctx.state.round);
}

export async function st_heartbeat(ctx, tick) {
  const p = params(ctx);
  const api = ctx.api.bybit[p.account];
  const tickers = await api.getTickers({ category: "linear", symbol: p.symbol });
  const price = Number(tickers.result.list[0].lastPrice);
  ctx.state.center ??= price;
  await noteFills(ctx, api, p, price);
  if (ctx.halted) return; // `qlab halt` refuses new orders (ApiHaltedError): wait for `qlab resume`
  if (Math.abs(price / ctx.state.center - 1) > Number(p.levels) * Number(p.step)) {
    await recenter(ctx, api, p, price, `price ${price.toFixed(2)} left the grid`);
  }
  await placeMissing(ctx, api, p);
}

export async function st_exit(ctx, reason) {
  // Orders stay on the book across restarts and failovers; an operator's stop takes them off.
  if (reason.type === "manual") {
    const p = params(ctx);
    await ctx.api.bybit[p.account].cancelAllOrders({ category: "linear", symbol: p.symbol });
    ctx.state.placed = [];
  }
  ctx.log.info("grid exiting (%s) after %d fills", reason.type, ctx.state.fills);
}

/** Bybit allows only [A-Za-z0-9_-] in an orderLinkId, 36 characters at most. */
function safe(strategyId) {
  return strategyId.replace(/[^A-Za-z0-9_-]/g, "_").slice(0, 20);
}

function params(ctx) {
  return { ...DEFAULTS, ...ctx.params };
}

async function noteFills(ctx, api, p, price) {
  const book = await api.getOpenOrders({ category: "linear", symbol: p.symbol });
  const resting = new Set(book.result.list.map((order) => order.orderLinkId));
  let cancelled = false;
  for (const link of ctx.state.placed.filter((link) => !resting.has(link))) {
    const status = await orderStatus(api, p, link);
    if (!ENDED.includes(status)) continue; // not in the history yet (the lists lag a moment): look again next tick
    ctx.state.placed = ctx.state.placed.filter((placed) => placed !== link);
    if (status === "Filled") {
      ctx.state.filled.push(link);
      ctx.state.fills += 1;
      ctx.log.info("filled %s near %s", link, price.toFixed(2));
      ctx.send({ filled: link, near: Math.round(price * 100) / 100 }); // shows in `qlab events` and `qlab up`
    } else {
      cancelled = true;
      ctx.log.info("cancelled %s (%s), not filled", link, status);
    }
  }
  // Its level stays taken in this round (its orderLinkId is used): start a new one.
  if (cancelled) await recenter(ctx, api, p, price, "orders were cancelled");
}

/** The order's orderStatus at the exchange ("Filled", "Cancelled", ...); "" when not found. */
async function orderStatus(api, p, link) {
  const history = await api.getOrderHistory({ category: "linear", symbol: p.symbol, orderLinkId: link });
  return history.result.list.length ? history.result.list[0].orderStatus : "";
}

async function recenter(ctx, api, p, price, why) {
  await api.cancelAllOrders({ category: "linear", symbol: p.symbol });
  Object.assign(ctx.state, { round: ctx.state.round + 1, center: price, placed: [], filled: [] });
  ctx.log.info("%s: round %d centred at %s", why, ctx.state.round, price.toFixed(2));
}

async function placeMissing(ctx, api, p) {
  const { center } = ctx.state;
  const step = Number(p.step);
  const done = new Set([...ctx.state.placed, ...ctx.state.filled]);
  for (let k = 1; k <= Number(p.levels); k++) {
    for (const [side, price] of [["Buy", center * (1 - k * step)], ["Sell", center * (1 + k * step)]]) {
      const link = `${safe(ctx.id)}-r${ctx.state.round}-${side[0]}${k}`;
      if (done.has(link)) continue;
      try {
        await api.placeOrder({ category: "linear", symbol: p.symbol, side, orderType: "Limit",
                               qty: p.qty, price: price.toFixed(2), orderLinkId: link });
      } catch (e) {
        if (e.retCode === HALTED) return; // halted since this tick began: wait for `qlab resume`
        if (e.retCode !== DUPLICATE_LINK_ID) throw e;
      }
      ctx.state.placed.push(link);
    }
  }
}
