"""The strategy channel's guards, without processes: tokens, garbled frames, budgets.

The manager is stepped with tests/unit/test_manager.py's fakes; the child's side of
the budget is the Python runner's Sender and the Node runner's, on a fake connection.
"""

from __future__ import annotations

import json
import logging
import subprocess
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest

from quantlab.errors import OverBudget
from quantlab.protocol import (
    LIMITS,
    ApiCall,
    ApiResult,
    Budget,
    Error,
    Heartbeat,
    Hello,
    Init,
    Limits,
    Log,
    TokenBucket,
    ToWorker,
    encode,
    frame_limit,
)
from quantlab.child import jsruntime
from quantlab.child.logfile import LogBudget, StrategyLog, _Printed
from quantlab.child.runner import Sender
from quantlab.worker.channel import Garbled, read
from quantlab.worker.intake import FAULT_AFTER, QUIET, Intake
from quantlab.worker.peers import LOG_EVERY, Peers
from tests.unit.test_manager import Env, env  # noqa: F401  (the fixture)
from tests.unit.test_runner import node_runtime

# ---- tokens ----


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_token_binds_one_connection_once_and_nothing_else_binds() -> None:
    peers = Peers(logging.getLogger("test"), Clock())
    peers.expect(b"s#1", b"secret")
    assert peers.bind(b"thief", b"guess") is None
    assert peers.bind(b"child", b"secret") == b"s#1"
    assert peers.bind(b"thief", b"secret") is None  # used: once only
    assert peers.bind(b"child", b"secret") is None  # a second Hello binds nothing more
    assert (peers.key(b"child"), peers.peer(b"s#1"), peers.key(b"thief")) == (b"s#1", b"child", None)
    peers.forget(b"s#1")  # the child exited: its connection speaks for no one
    assert peers.key(b"child") is None and peers.peer(b"s#1") is None


def test_a_forgotten_incarnations_token_binds_nothing() -> None:
    peers = Peers(logging.getLogger("test"), Clock())
    peers.expect(b"s#1", b"old")
    peers.expect(b"s#1", b"new")  # forked again under the same key: the old token is void
    assert peers.bind(b"a", b"old") is None
    peers.forget(b"s#1")
    assert peers.bind(b"b", b"new") is None


def test_drops_are_counted_and_logged_at_most_once_a_while(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    peers = Peers(logging.getLogger("test"), clock)
    with caplog.at_level(logging.WARNING):
        for _ in range(1000):
            peers.drop("a message before a good Hello")
        clock.now += LOG_EVERY
        peers.drop("a Hello with a wrong or used token")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "dropped 1 messages" in lines[0]
    assert "dropped 1000 messages" in lines[1] and "999 (a message before a good Hello)" in lines[1]


# ---- frames ----


def test_any_frame_reads_as_a_message_or_garbled_never_raises() -> None:
    nested = b"\x82\xa4type\xa3log\xa4data" + b"\x91" * 3000 + b"\xc0"  # RecursionError inside msgspec
    assert "RecursionError" in read(nested).why  # type: ignore[union-attr]
    assert isinstance(read(b"\xdd\x7f\xff\xff\xff"), Garbled)  # claims two billion items
    assert isinstance(read(b""), Garbled)
    assert isinstance(read(encode(Log(data="x" * LIMITS.send_bytes))), Garbled)  # over its kind's limit
    assert isinstance(read(encode(Hello(pid=1, token=b"x" * 300))), Garbled)
    assert read(encode(Hello(pid=1, token=b"t" * 16))) == Hello(pid=1, token=b"t" * 16)
    assert not isinstance(read(encode(Heartbeat(seq=1, state=b" " * LIMITS.state_bytes))), Garbled)  # a state at its limit


def test_every_kind_a_child_sends_has_a_size_limit() -> None:
    kinds = typing.get_args(ToWorker)
    assert all(frame_limit(kind) > 0 for kind in kinds)


# ---- budgets ----


def test_a_token_bucket_takes_a_burst_then_its_rate() -> None:
    bucket = TokenBucket(Budget(10.0, 5), 0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.take(0.1) and not bucket.take(0.1)  # 10 a second: one more every 0.1 s
    assert sum(bucket.take(100.0) for _ in range(10)) == 5  # it never holds more than its burst


def test_a_burst_over_budget_is_counted_ended_by_a_pause_and_overdue_past_its_limit() -> None:
    intake = Intake(0.0)
    log = Log(data=1)
    admitted = [intake.admit(log, 1.0) for _ in range(LIMITS.send.burst + 50)]
    assert admitted.count(True) == LIMITS.send.burst
    assert intake.admit(Heartbeat(seq=1), 1.0)  # another kind keeps its own budget
    assert intake.ended(1.0 + QUIET / 2) is None and intake.overdue() is None
    burst = intake.ended(1.0 + QUIET)
    assert burst is not None and burst.dropped == {"ctx.send": 50} and "dropped 50 messages" in burst.describe()
    t = 10.0  # the bucket is full again: a flood past FAULT_AFTER seconds
    while (over := intake.overdue()) is None:
        intake.admit(log, t)
        t += 0.001
    assert t - 10.0 >= FAULT_AFTER and over.last - over.first >= FAULT_AFTER
    assert intake.burst is None  # the next drops start the next burst


def test_the_python_childs_ctx_send_raises_over_budget_in_the_strategy() -> None:
    sent: list[bytes] = []

    class Conn:
        socket = type("Socket", (), {"send": staticmethod(sent.append)})()

    sender = Sender(Conn(), Limits(send=Budget(1.0, 3)))  # type: ignore[arg-type]
    for n in range(3):
        sender.send({"n": n})
    with pytest.raises(OverBudget, match=r"ctx.send: over the budget of 1 messages a second \(bursts of 3\)"):
        sender.send({"n": 3})
    with pytest.raises(OverBudget, match="over the limit of 8,192"):
        sender.send("x" * LIMITS.send_bytes)
    assert [msgspec.msgpack.decode(frame)["data"] for frame in sent] == [{"n": 0}, {"n": 1}, {"n": 2}]


NODE_SENDER = """
import { logSender } from "BUDGET";
const sent = [];
const channel = { encode: (msg) => Buffer.from(JSON.stringify(msg)), sendFrame: (frame) => sent.push(frame.length) };
const send = logSender(channel, { send: { rate: 1, burst: 3 }, send_bytes: 8192 });
const said = [];
for (const data of [1, 2, 3, 4, "x".repeat(9000)]) {
  try { send(data); said.push("sent"); } catch (e) { said.push(`${e.name}: ${e.message}`); }
}
console.log(JSON.stringify(said));
"""


def test_the_node_childs_ctx_send_raises_over_budget_in_the_strategy() -> None:
    node_runtime()
    script = NODE_SENDER.replace("BUDGET", str(jsruntime.PACKAGE_DIR / "budget.mjs"))
    done = subprocess.run([jsruntime.node(), "--input-type=module", "-e", script], capture_output=True, text=True,
                          timeout=30)
    said = json.loads(done.stdout)
    assert said[:3] == ["sent"] * 3
    assert said[3] == "OverBudget: ctx.send: over the budget of 1 messages a second (bursts of 3); this one was not sent"
    assert said[4].startswith("OverBudget: ctx.send: the message takes 9")  # size is checked before the budget


def test_log_output_over_its_budget_is_dropped_and_the_next_line_says_how_much(tmp_path: Path) -> None:
    clock = Clock()
    init = Init(id="s", file="s.py", params={}, state={}, accounts=[], log_path=str(tmp_path / "s.log"))
    log = StrategyLog(init, open(init.log_path, "a"))
    log.budget = LogBudget(Budget(100.0, 1000), clock)
    printed = _Printed(log)
    for n in range(100):
        log.logger.info("line %03d %s", n, "x" * 41)  # 50 characters of message: 20 fit in the burst
    printed.write("printed\n")  # print() spends the same budget: none is left
    clock.now += 10.0  # the budget fills again
    log.logger.info("after the pause")
    log.out.close()
    text = (tmp_path / "s.log").read_text()
    assert "line 019" in text and "line 020" not in text and "printed" not in text
    assert text.count("quantlab: dropped") == 1
    assert "dropped 4,008 characters of ctx.log and print() output: over the log budget of 100 a second " \
           "(bursts of 1,000)" in text
    assert text.index("quantlab: dropped") < text.index("after the pause")


NODE_LOG = """
import { openSync, readFileSync } from "node:fs";
import { LogFile } from "LOGFILE";
const file = new LogFile(openSync(process.argv[1], "a"), { rate: 1000, burst: 100 });
for (let n = 0; n < 10; n++) file.write(`line ${n} ${"x".repeat(22)}\\n`);  // 30 characters each
Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 300);  // the budget fills again
file.write("after the pause\\n");
process.stdout.write(readFileSync(process.argv[1], "utf8"));
"""


def test_the_node_childs_log_keeps_the_same_budget(tmp_path: Path) -> None:
    node_runtime()
    script = NODE_LOG.replace("LOGFILE", str(jsruntime.PACKAGE_DIR / "logfile.mjs"))
    done = subprocess.run([jsruntime.node(), "--input-type=module", "-e", script, str(tmp_path / "s.log")],
                          capture_output=True, text=True, timeout=30)
    lines = done.stdout.splitlines()
    assert lines[:3] == [f"line {n} {'x' * 22}" for n in range(3)]
    assert lines[3:] == ["quantlab: dropped 210 characters of ctx.log and console output: over the log budget of "
                         "1000 a second (bursts of 100)", "after the pause"], done.stderr


# ---- the manager ----


def test_only_the_forked_childs_token_binds_its_connection(env: Env) -> None:
    env.assign()
    pid = env.pid()
    token = env.transport.tokens[pid]
    env.transport.connected.update({b"thief", b"child"})
    env.manager.on_message(b"thief", Hello(pid=pid, token=b"guessed-token..."))
    env.manager.on_message(b"thief", ApiCall(call_id=1, account="paper", method="place_order", kwargs={}))
    assert env.transport.sent == [] and env.transport.api_calls == []
    env.manager.on_message(b"child", Hello(pid=pid, token=token))
    assert [(rid, type(msg)) for rid, msg in env.transport.sent] == [(b"child", Init)]
    env.manager.on_message(b"thief", Hello(pid=pid, token=token))  # replayed: used
    env.manager.on_message(b"thief", Error(hook="st_init", message="x", traceback=""))
    assert len(env.transport.sent) == 1 and env.manager.slots["s"].result.error_count == 0


def test_a_hello_before_the_zygotes_answer_is_handled_once_it_comes(env: Env) -> None:
    env.transport.held = []
    env.assign()
    token = env.transport.tokens[env.transport.next_pid]
    env.transport.connected.add(b"child")
    env.manager.on_message(b"child", Hello(pid=env.transport.next_pid, token=token))
    assert env.transport.sent == []
    env.transport.answer_held()
    assert [(rid, type(msg)) for rid, msg in env.transport.sent] == [(b"child", Init)]


def test_a_garbled_frame_from_a_bound_child_is_its_error(env: Env) -> None:
    env.assign()
    rid = env.start()
    env.manager.on_message(rid, read(b"\x82\xa4type\xa3log\xa4data" + b"\x91" * 3000 + b"\xc0"))
    assert env.transport.killed == [env.pid()]
    env.transport.exit(env.pid(), 9)
    error = env.manager.slots["s"].result.last_error
    assert error is not None and "does not decode: RecursionError" in error.message
    env.manager.on_message(b"stranger", read(b"garbage"))  # from no one: dropped, counted, nobody charged


def test_a_flood_of_sends_writes_a_bounded_number_of_events_then_is_charged(env: Env) -> None:
    env.assign()
    rid = env.start()
    seconds = 0
    while env.transport.killed == [] and seconds < 10:
        for _ in range(1000):
            env.manager.on_message(rid, Log(data={"spam": 1}))
        env.clocks.advance(1.0)
        seconds += 1
    kinds = env.fenced_store.kinds()
    assert env.transport.killed == [env.pid()] and seconds == FAULT_AFTER + 1
    assert kinds.count("strategy_message") <= LIMITS.send.burst + LIMITS.send.rate * seconds
    assert kinds.count("over_budget") == 1
    env.transport.exit(env.pid(), 9)
    error = env.manager.slots["s"].result.last_error
    assert error is not None and "over its message budget" in error.message


def test_api_calls_over_budget_are_answered_with_a_refusal(env: Env) -> None:
    env.assign()
    rid = env.start()
    for n in range(1200):
        env.manager.on_message(rid, ApiCall(call_id=n, account="paper", method="get_tickers", kwargs={}))
    refused: list[Any] = env.transport.of(ApiResult)
    assert len(env.transport.api_calls) == 1000 and len(refused) == 200
    assert not refused[0].ok and "over its budget" in refused[0].error


def test_the_init_tells_the_child_its_limits(env: Env) -> None:
    env.assign()
    env.hello()
    init = env.transport.of(Init)[0]
    assert init.limits == LIMITS
