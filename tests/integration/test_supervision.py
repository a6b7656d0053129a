"""The supervision rules, with the real qlab director, worker and strategy children."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.conftest import ONCE, Lab, pid_alive, wait_for

COUNTER = '''
def st_init(ctx):
    ctx.state.setdefault("n", 0)
def st_heartbeat(ctx, tick):
    ctx.state["n"] += 1
    {body}
def st_exit(ctx, reason):
    note(ctx, reason.type)
'''


def counter(body: str = "pass") -> str:
    return ONCE + COUNTER.format(body=body)


@pytest.fixture
def running(lab: Lab) -> Lab:
    lab.director()
    lab.worker("w1")
    return lab


def test_strategy_runs_ticks_and_keeps_state(running: Lab) -> None:
    file = running.strategy("count", counter())
    running.assign(file, "--interval", "0.05")
    work = running.wait_heartbeats("count", 5)
    assert work.result.status == "running"
    assert work.assignment is not None and work.assignment.worker == "w1"
    state = wait_for(lambda: (s := running.state("count")).get("n", 0) >= 5 and s, what="state")
    assert state["n"] >= 5
    assert running.events("started", "count")


def test_crash_is_noticed_counted_and_restarted(running: Lab) -> None:
    file = running.strategy("crash", counter('if tick.seq == 2 and once("crashed"): os._exit(3)'))
    running.assign(file, "--interval", "0.05", "--backoff", "0")
    crashed = running.wait_event("crashed", "crash")
    assert "exit code 3" in crashed[0].detail
    work = wait_for(lambda: (w := running.work("crash")).result.restarts >= 1 and w.result.heartbeats >= 3 and w)
    assert work.result.error_count >= 1
    assert work.result.last_error is not None and "crashed: exit code 3" in work.result.last_error.message
    log = running.log("crash")
    assert "WORKER exit" in log and "exit code 3" in log and "WORKER restart in" in log


def test_exception_in_hook_reports_traceback_and_restarts(running: Lab) -> None:
    file = running.strategy("boom", counter('if tick.seq == 2 and once("raised"): raise ValueError("bad tick")'))
    running.assign(file, "--interval", "0.05", "--backoff", "0")
    running.wait_event("error", "boom")
    work = wait_for(lambda: (w := running.work("boom")).result.restarts >= 1 and w)
    assert work.result.last_error is not None
    assert "ValueError: bad tick" in work.result.last_error.message
    assert "raise ValueError" in work.result.last_error.traceback
    # st_exit still ran, with reason "error"
    exits = wait_for(lambda: (running.home / "exit-boom.txt").exists() and (running.home / "exit-boom.txt").read_text())
    assert "error" in exits


def test_hung_child_is_killed_and_restarted(running: Lab) -> None:
    file = running.strategy("hang", counter('if tick.seq == 2 and once("hung"):\n        import time; time.sleep(3600)'))
    running.assign(file, "--interval", "0.05", "--heartbeat-timeout", "0.5", "--backoff", "0")
    timeout = running.wait_event("heartbeat_timeout", "hang")
    assert "hung" in timeout[0].detail
    work = wait_for(lambda: (w := running.work("hang")).result.restarts >= 1 and w)
    assert work.result.last_error is not None and work.result.last_error.message.startswith("hung")
    assert "WORKER kill" in running.log("hang")


def test_sigstopped_child_counts_as_hung(running: Lab) -> None:
    file = running.strategy("frozen", counter())
    running.assign(file, "--interval", "0.05", "--heartbeat-timeout", "0.5", "--backoff", "0")
    work = running.wait_heartbeats("frozen", 2)
    pid = work.result.pid
    assert pid
    os.kill(pid, signal.SIGSTOP)
    running.wait_event("heartbeat_timeout", "frozen")
    wait_for(lambda: not pid_alive(pid), what="the stopped child to be gone")
    new = wait_for(lambda: (w := running.work("frozen")).result.pid not in (None, pid) and w.result.status == "running" and w)
    assert new.result.restarts >= 1


def test_too_many_errors_fail_the_strategy_until_started_again(running: Lab) -> None:
    gate = running.home / "fail.flag"
    gate.write_text("x")
    file = running.strategy(
        "flaky", counter(f'if os.path.exists({str(gate)!r}): raise RuntimeError("still broken")')
    )
    running.assign(file, "--interval", "0.05", "--backoff", "0", "--max-errors", "2")
    work = running.wait_status("flaky", "failed")
    assert work.result.error_count == 3
    assert work.result.last_error is not None and "still broken" in work.result.last_error.message
    assert "errors within" in work.result.reason
    running.wait_event("failed", "flaky")
    gate.unlink()
    running.run("strategy", "start", "flaky")
    work = running.wait_heartbeats("flaky", 3)
    assert work.result.status == "running"


def test_stop_calls_st_exit_with_manual(running: Lab) -> None:
    file = running.strategy("polite", counter())
    running.assign(file, "--interval", "0.05")
    pid = running.wait_heartbeats("polite", 2).result.pid
    running.run("strategy", "stop", "polite")
    work = running.wait_status("polite", "stopped")
    assert work.desired == "stopped" and work.assignment is None
    assert (running.home / "exit-polite.txt").read_text().split() == ["manual"]
    assert pid and not pid_alive(pid)


def test_stop_kills_a_child_that_ignores_it(running: Lab) -> None:
    source = counter().replace("def st_exit(ctx, reason):", "def st_exit(ctx, reason):\n    import time; time.sleep(3600)")
    file = running.strategy("stubborn", source)
    running.assign(file, "--interval", "0.05")
    pid = running.wait_heartbeats("stubborn", 1).result.pid
    assert pid
    running.run("strategy", "stop", "stubborn")
    # stop_timeout defaults to 10 s; the child must be gone by then (and the status settle)
    running.wait_status("stubborn", "stopped", timeout=15)
    assert not pid_alive(pid)
    assert "WORKER kill" in running.log("stubborn")


def test_restart_starts_a_fresh_child(running: Lab) -> None:
    file = running.strategy("again", counter())
    running.assign(file, "--interval", "0.05")
    pid = running.wait_heartbeats("again", 2).result.pid
    running.run("strategy", "restart", "again")
    work = wait_for(lambda: (w := running.work("again")).result.pid not in (None, pid) and w.result.status == "running" and w)
    assert work.result.pid != pid
    assert (running.home / "exit-again.txt").read_text().split() == ["manual"]


def test_send_reaches_st_message(running: Lab) -> None:
    source = counter() + '''
def st_message(ctx, msg):
    with open(os.path.join(os.path.dirname(__file__), "got.txt"), "w") as f:
        f.write(repr(msg))
'''
    file = running.strategy("listener", source)
    running.assign(file, "--interval", "0.05")
    running.wait_heartbeats("listener", 1)
    running.run("strategy", "send", "listener", '{"hello": [1, 2]}')
    got = wait_for(lambda: (p := running.home / "got.txt").exists() and p.read_text())
    assert got == "{'hello': [1, 2]}"


def test_async_hooks_and_ctx_stop(running: Lab) -> None:
    source = '''
import asyncio
async def st_init(ctx):
    await asyncio.sleep(0)
    ctx.state["ready"] = True
async def st_heartbeat(ctx, tick):
    await asyncio.sleep(0)
    ctx.state["seq"] = tick.seq
    if tick.seq == 3:
        ctx.stop("enough")
async def st_exit(ctx, reason):
    ctx.state["exit"] = [reason.type, reason.message]
'''
    file = running.strategy("asyncy", source)
    running.assign(file, "--interval", "0.05")
    work = running.wait_status("asyncy", "stopped")
    assert work.desired == "stopped"
    state = running.state("asyncy")
    assert state == {"ready": True, "seq": 3, "exit": ["manual", "enough"]}


def test_remove_stops_the_child(running: Lab) -> None:
    file = running.strategy("gone", counter())
    running.assign(file, "--interval", "0.05")
    pid = running.wait_heartbeats("gone", 1).result.pid
    assert pid
    running.run("strategy", "remove", "gone")
    wait_for(lambda: not pid_alive(pid), what="the removed strategy's child to exit")
    wait_for(lambda: running.store.find_work("gone") is None, what="its worker to let go of it")


def test_overruns_are_counted_not_queued(running: Lab) -> None:
    file = running.strategy("slow", counter("import time; time.sleep(0.25)"))
    running.assign(file, "--interval", "0.05")
    work = wait_for(lambda: (w := running.work("slow")).result.overruns >= 3 and w.result.heartbeats >= 3 and w)
    # with 0.25 s per heartbeat at most ~4 per second complete: ticks were skipped, not queued
    assert work.result.heartbeats < work.result.overruns
    assert time.time() - (work.result.last_heartbeat or 0) < 5


def test_prints_and_log_lines_go_to_the_strategy_log(running: Lab) -> None:
    source = counter('print("printed", tick.seq); ctx.log.info("logged %d", tick.seq)')
    running.assign(running.strategy("chatty", source), "--interval", "0.05")
    running.wait_heartbeats("chatty", 2)
    log = wait_for(lambda: "printed 1" in (text := running.log("chatty")) and text, what="print output in the log")
    assert "logged 1" in log and "WORKER spawn" in log
    shown = running.run("strategy", "logs", "chatty", "-n", "200").stdout
    assert "printed 1" in shown
