"""Strategies in JavaScript: the supervision rules and ctx.api, each with a Node child.

Real director, worker, zygote and Node runner. Without Node 20+ or the installed
runtime (`qlab js install`) these skip with one line; under CI=true they run and fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import msgspec
import pytest

from quantlab.exchange.accounts import Account
from quantlab.exchange.paper import PaperExchange
from tests.conftest import QLAB, Lab, needs_js, pid_alive, wait_for
from tests.fakes.bybit import FakeBybit
from tests.integration.test_exchange import SECRET, assert_no_secret_in, fake, live  # noqa: F401  (fixtures)


pytestmark = needs_js

#: ``once(name)``: true the first time only (a marker file beside the strategy);
#: ``note(ctx, text)``: a line in exit-ID.txt beside it. As tests/conftest.py's ONCE, in JavaScript.
ONCE = """
import { appendFileSync, existsSync, writeFileSync } from "node:fs";
const here = new URL(".", import.meta.url).pathname;
function once(name) {
  if (existsSync(here + name)) return false;
  writeFileSync(here + name, "");
  return true;
}
function note(ctx, text) { appendFileSync(`${here}exit-${ctx.id}.txt`, text + "\\n"); }
"""

COUNTER = """
export async function st_init(ctx) {
  ctx.state.n ??= 0;
  ctx.log.info("starting at %d", ctx.state.n);
}
export async function st_heartbeat(ctx, tick) {
  ctx.state.n += 1;
  BODY
}
export async function st_exit(ctx, reason) { note(ctx, reason.type); }
"""


def counter(body: str = "") -> str:
    return ONCE + COUNTER.replace("BODY", body)


@pytest.fixture
def running(lab: Lab) -> Lab:
    lab.director()
    lab.worker("w1")
    return lab


def js(lab: Lab, name: str, source: str) -> Path:
    return lab.strategy(name, source, suffix=".mjs")


def exits(lab: Lab, work_id: str) -> list[str]:
    path = lab.home / f"exit-{work_id}.txt"
    return path.read_text().split() if path.exists() else []


#: A heartbeat's line in beats-ID.txt: which run of the child it is and the counter it left in ctx.state.
#: Not its pid: in a PID namespace of its own every run is PID 1.
BEAT_LINE = ("appendFileSync(`${here}beats-${ctx.id}.txt`, "
             "`${globalThis.run ??= Math.random().toString(36).slice(2)} ${ctx.state.n}\\n`);")


def test_ticks_and_state_survive_a_restart(running: Lab) -> None:
    running.assign(js(running, "count", counter(BEAT_LINE)), "--interval", "0.05")
    pid = running.wait_heartbeats("count", 3).result.pid
    n = wait_for(lambda: running.state("count").get("n", 0) >= 3 and running.state("count")["n"], what="state")
    running.run("strategy", "restart", "count")
    wait_for(lambda: (w := running.work("count")).result.pid not in (None, pid) and w.result.status == "running")
    assert pid is not None and not pid_alive(pid)
    wait_for(lambda: running.state("count")["n"] > n + 1, what="counting on from the saved state")
    log = wait_for(lambda: "starting at 0" in (text := running.log("count")) and text.count("starting at") >= 2 and text)
    assert "WORKER spawn" in log and exits(running, "count") == ["manual"]
    beats = [line.split() for line in (running.home / "beats-count.txt").read_text().splitlines()]
    left = [int(n) for run, n in beats if run == beats[0][0]][-1]  # the first run's last beat
    restored = [int(x) for x in re.findall(r"starting at (\d+)", log)]
    assert restored[:2] == [0, left]  # a clean restart hands over exactly the last beat's state


def test_crash_is_restarted_after_its_backoff(running: Lab) -> None:
    source = counter('if (tick.seq === 2 && once("crashed")) process.exit(3);')
    running.assign(js(running, "crash", source), "--interval", "0.05", "--backoff", "0.2")
    crashed = running.wait_event("crashed", "crash")
    assert "exit code 3" in crashed[0].detail
    work = wait_for(lambda: (w := running.work("crash")).result.restarts >= 1 and w.result.heartbeats >= 3 and w)
    assert work.result.last_error is not None and "crashed: exit code 3" in work.result.last_error.message
    delay = re.search(r"WORKER restart in (\d+\.\d+)s", running.log("crash"))
    assert delay is not None and float(delay.group(1)) > 0.1  # the backoff, give or take its jitter


def test_exception_reports_its_stack_and_st_exit_runs(running: Lab) -> None:
    source = counter('if (tick.seq === 2 && once("raised")) throw new RangeError("bad tick");')
    running.assign(js(running, "boom", source), "--interval", "0.05", "--backoff", "0")
    running.wait_event("error", "boom")
    work = wait_for(lambda: (w := running.work("boom")).result.restarts >= 1 and w)
    assert work.result.last_error is not None
    assert work.result.last_error.message == "st_heartbeat: RangeError: bad tick"
    assert "at st_heartbeat" in work.result.last_error.traceback and "boom.mjs" in work.result.last_error.traceback
    assert wait_for(lambda: exits(running, "boom"))[0] == "error"


def test_hung_child_is_killed_and_restarted(running: Lab) -> None:
    source = counter('if (tick.seq === 2 && once("hung")) await new Promise(() => {});')
    # The timeout also covers the start: it leaves a loaded machine time to boot Node.
    running.assign(js(running, "hang", source), "--interval", "0.05", "--heartbeat-timeout", "2", "--backoff", "0")
    assert "hung" in running.wait_event("heartbeat_timeout", "hang", timeout=15)[0].detail
    wait_for(lambda: running.work("hang").result.restarts >= 1 and running.work("hang").result.heartbeats >= 3, 15)
    assert "WORKER kill" in running.log("hang")


def test_too_many_errors_fail_it_until_started_again(running: Lab) -> None:
    gate = running.home / "fail.flag"
    gate.write_text("x")
    source = counter(f'if (existsSync({json.dumps(str(gate))})) throw new Error("still broken");')
    running.assign(js(running, "flaky", source), "--interval", "0.05", "--backoff", "0", "--max-errors", "2")
    work = running.wait_status("flaky", "failed")
    assert work.result.error_count == 3 and "errors within" in work.result.reason
    assert work.result.last_error is not None and "still broken" in work.result.last_error.message
    gate.unlink()
    running.run("strategy", "start", "flaky")
    assert running.wait_heartbeats("flaky", 3).result.status == "running"


def test_stop_runs_st_exit_and_the_child_exits(running: Lab) -> None:
    running.assign(js(running, "polite", counter()), "--interval", "0.05")
    pid = running.wait_heartbeats("polite", 2).result.pid
    running.run("strategy", "stop", "polite")
    work = running.wait_status("polite", "stopped")
    assert work.assignment is None and exits(running, "polite") == ["manual"]
    assert pid and not pid_alive(pid)
    assert "exit code 0" in running.log("polite")


def test_worker_sigterm_stops_it_with_worker_exit(lab: Lab) -> None:
    lab.director()
    worker = lab.worker("w1")
    lab.assign(js(lab, "calm", counter()), "--interval", "0.05")
    pid = lab.wait_heartbeats("calm", 2).result.pid
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert exits(lab, "calm") == ["worker_exit"]
    assert pid and not pid_alive(pid)


API = """
async function outcome(ctx, call) {
  try {
    await call();
    return "ok";
  } catch (e) {
    return `${e.name}:${e.retCode}:${e instanceof ctx.errors.ApiError}`;
  }
}
export async function st_init(ctx) {
  ctx.state.reconciled = [ctx.openOrders, ctx.positions];
}
export async function st_heartbeat(ctx, tick) {
  const api = ctx.api.bybit.paper;
  const order = { category: "linear", symbol: "BTCUSDT", side: "Buy", orderType: "Market", qty: "0.01", orderLinkId: "js-probe-1" };
  if (!ctx.state.order) {
    // bybit-api's RestClientV5 names and pybit's (camelCase) reach the same endpoint: the second is a duplicate.
    ctx.state.order = (await api.submitOrder(order)).result.orderId;
    ctx.state.dup = await outcome(ctx, () => api.placeOrder(order));
    ctx.state.active = (await api.getActiveOrders({ category: "linear", symbol: "BTCUSDT" })).retCode;
    ctx.state.cancel = await outcome(ctx, () => api.cancelOrder({ category: "linear", symbol: "BTCUSDT", orderId: ctx.state.order }));
    ctx.state.unknown_method = await outcome(ctx, () => api.withdrawEverything({}));
    ctx.state.hint = await api.submitOrdr(order).catch((e) => e.message);
    ctx.state.unknown_account = await outcome(ctx, async () => ctx.api.bybit.elsewhere.getPositions({}));
    ctx.state.snake = (await api.get_tickers({ category: "linear", symbol: "BTCUSDT" })).retCode;
    ctx.state.accounts = Object.keys(ctx.api.bybit);
    ctx.send({ placed: ctx.state.order });
  }
  ctx.state.size = (await api.getPositionInfo({ category: "linear", symbol: "BTCUSDT" })).result.list[0].size;
}
export async function st_message(ctx, data) {
  ctx.state.message = data;
  ctx.stop("told to");
}
export async function st_exit(ctx, reason) { ctx.state.exit = [reason.type, reason.message]; }
"""


def test_api_calls_on_the_paper_account(running: Lab) -> None:
    running.assign(js(running, "trader", API), "--interval", "0.1", "--account", "paper")
    state = wait_for(lambda: (s := running.state("trader")).get("size") and s, what="a position")
    assert state["size"] == "0.01" and state["snake"] == 0
    assert state["dup"] == "ApiError:110072:true"
    assert state["unknown_method"] == "ApiPermissionError:0:true"
    assert state["active"] == 0 and state["cancel"].startswith("ApiError:")  # reached the exchange: filled already
    assert state["hint"].endswith("; did you mean submitOrder, submitSpreadOrder, submitEarnTokenOrder?")
    assert state["unknown_account"] == "ApiPermissionError:0:true"
    assert state["accounts"] == ["paper"] and state["reconciled"] == [[], []]
    placed = running.wait_event("strategy_message", "trader")
    assert json.loads(placed[0].detail) == {"placed": state["order"]}
    running.run("strategy", "send", "trader", '{"hello": [1, 2]}')
    work = running.wait_status("trader", "stopped")
    assert work.desired == "stopped"
    assert running.state("trader")["message"] == {"hello": [1, 2]}
    assert running.state("trader")["exit"] == ["manual", "told to"]


PROBE = """
export async function st_init(ctx) { ctx.state.seen ??= []; }
export async function st_heartbeat(ctx, tick) {
  const { ApiNetworkError, ApiPermissionError } = ctx.errors;
  let outcome;
  try {
    outcome = ["ok", (await ctx.api.bybit.live.getWalletBalance({ accountType: "UNIFIED" })).retCode];
  } catch (e) {
    outcome = [e instanceof ApiNetworkError ? "network" : e instanceof ApiPermissionError ? "permission" : "api", e.retCode];
  }
  const last = ctx.state.seen.at(-1);
  if (!last || last.join() !== outcome.join()) ctx.state.seen.push(outcome);
}
export async function st_exit(ctx, reason) {}
"""


def test_signed_calls_through_the_worker_and_no_secret_in_the_node_child(live: Lab, fake: FakeBybit) -> None:
    live.assign(js(live, "probe", PROBE), "--interval", "0.05", "--account", "live")
    wait_for(lambda: ["ok", 0] in live.state("probe").get("seen", []), what="a signed call")
    fake.inject("bad_key")
    wait_for(lambda: ["api", 10003] in live.state("probe").get("seen", []), what="an error reply")
    pid = live.work("probe").result.pid
    assert pid
    assert_no_secret_in(pid)


def test_assign_checks_a_js_file_before_anything_runs(lab: Lab) -> None:
    missing = lab.strategy("partial", "export async function st_init(ctx) {}\nexport function st_exit() {}\n", ".mjs")
    result = lab.run("strategy", "assign", str(missing), check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"Error: {missing}: missing hook(s) st_heartbeat: a strategy exports st_init, st_heartbeat, st_exit"]
    broken = lab.strategy("broken", "module.exports = {\n  st_init() { let = ; },\n};\n", ".js")
    result = lab.run("strategy", "assign", str(broken), check=False)
    assert result.stderr.strip() == f"Error: {broken}:2:21: syntax error: Unexpected token ';'"
    module = lab.strategy("module", "export function st_init(ctx) {\n  const x = {{;\n}\n", ".mjs")
    result = lab.run("strategy", "assign", str(module), check=False)
    assert result.stderr.strip() == f"Error: {module}:2:14: syntax error: Unexpected token '{{'"
    # The check runs the module's top level, in an environment without the operator's variables.
    commonjs = lab.strategy("cjs", "module.exports = { st_init() {}, st_heartbeat() {}, st_exit() {}, ACCOUNTS: ['paper'] };\n"
                                   "if (process.env.QLAB_TEST_SECRET) throw new Error('the check saw a secret');\n", ".js")
    subprocess.run([QLAB, "--home", str(lab.home), "strategy", "assign", str(commonjs)], check=True, timeout=30,
                   env={**os.environ, "QLAB_TEST_SECRET": SECRET}, capture_output=True)
    assert lab.work("cjs").spec.accounts == ["paper"]
    no_node = {**os.environ, "PATH": str(Path(QLAB).parent)}
    result = subprocess.run([QLAB, "--home", str(lab.home), "strategy", "assign", "--id", "x", str(commonjs)],
                            env=no_node, capture_output=True, text=True, timeout=30)
    assert result.stderr.strip() == "Error: node not found on PATH: JavaScript strategies need Node 20 or newer"


STRATEGIES = Path(__file__).resolve().parents[2] / "strategies"
#: Fills on both sides, then two moves out of the grid (two recentres).
PRICES = [50_000.0, 50_040.0, 49_930.0, 50_120.0, 49_990.0]


def _orders(exchange: PaperExchange, work_id: str) -> list[tuple[str, ...]]:
    rows = exchange.call("get_order_history", {"category": "linear", "limit": 50})["result"]["list"]
    fields = ("side", "orderType", "price", "qty", "orderStatus")
    return sorted((row["orderLinkId"].replace(work_id, "ID"), *(row[f] for f in fields)) for row in rows)


def test_js_and_python_grid_bots_place_the_same_orders(lab: Lab) -> None:
    names = {"py": "paper_py", "js": "paper_js"}
    accounts = [Account(name=name, type="paper", seed=3, rate_limit=1000) for name in names.values()]
    (lab.home / "env.jsonl").write_text("".join(f"{msgspec.json.encode(a).decode()}\n" for a in accounts))
    exchanges = {lang: PaperExchange(account, lab.store) for lang, account in zip(names, accounts)}
    for exchange in exchanges.values():
        exchange.set_price("BTCUSDT", PRICES[0])
    lab.director()
    # Heartbeat counts reach the store every 5 worker heartbeats: often, as the test waits on them.
    lab.worker("w1", "--accounts", str(lab.home / "env.jsonl"), "--heartbeat", "0.04")
    for lang, name in names.items():
        lab.assign(STRATEGIES / f"grid_paper.{lang}", "--id", f"grid_{lang}", "--account", name,
                   "--param", f"account={name}", "--interval", "0.05")
    for price in PRICES:
        beats = {lang: lab.work(f"grid_{lang}").result.heartbeats for lang in names}
        for exchange in exchanges.values():
            exchange.set_price("BTCUSDT", price)
        for lang in names:  # a tick in flight may have read the old price: three more have the new one
            lab.wait_heartbeats(f"grid_{lang}", beats[lang] + 3)
    orders = {lang: _orders(exchange, f"grid_{lang}") for lang, exchange in exchanges.items()}
    assert orders["js"] == orders["py"]
    statuses = [order[-1] for order in orders["py"]]
    assert statuses.count("Filled") >= 4 and statuses.count("Cancelled") >= 2 and "New" in statuses
    assert lab.state("grid_js")["round"] == lab.state("grid_py")["round"] == 2
