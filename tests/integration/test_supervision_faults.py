"""Supervision's corners, with the real worker: a strategy's fault stays its own, stops are never lost,
nothing leaks, memory limits hold."""

from __future__ import annotations

import os
import uuid

import psutil
import pytest

from tests.conftest import ONCE, Lab, pid_alive, wait_for

@pytest.fixture
def running(lab: Lab) -> Lab:
    lab.director()
    lab.worker("w1")
    return lab


def _helpers(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.info["cmdline"] == ["sleep", marker]:
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.NoSuchProcess:
                continue
    return found


def _zombies(pid: int) -> list[psutil.Process]:
    out = []
    for child in psutil.Process(pid).children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.NoSuchProcess:
            continue
    return out


def _helper_strategy(marker: str, crash: bool) -> str:
    return ONCE + f'''
import subprocess
def st_init(ctx):
    subprocess.Popen(["sleep", "{marker}"])  # a helper in the strategy's process group
    {"os._exit(3)" if crash else "pass"}
def st_heartbeat(ctx, tick):
    pass
def st_exit(ctx, reason):
    note(ctx, reason.type)
'''


def test_bad_state_is_the_strategys_error_with_the_key_path_and_the_worker_lives_on(running: Lab) -> None:
    """A tuple key in ctx.state fails that hook in the child, naming the key; the worker's encoder never sees it."""
    bad = ONCE + '''
def st_init(ctx):
    ctx.state.setdefault("n", 0)
def st_heartbeat(ctx, tick):
    ctx.state["n"] += 1
    if ctx.state["n"] == 3 and once("bad-state"):
        ctx.state["a"] = {(1, 2): "x"}
def st_exit(ctx, reason):
    note(ctx, reason.type)
'''
    good = ONCE + "def st_init(ctx): pass\ndef st_heartbeat(ctx, tick): pass\ndef st_exit(ctx, reason): pass\n"
    running.assign(running.strategy("bystander", good), "--interval", "0.05")
    running.assign(running.strategy("badstate", bad), "--interval", "0.05", "--backoff", "0")
    running.wait_event("error", "badstate")
    work = wait_for(lambda: (w := running.work("badstate")).result.restarts >= 1 and w.result.heartbeats >= 4 and w)
    assert work.result.last_error is not None
    assert "state['a'][(1, 2)]: key is not a string" in work.result.last_error.message
    assert "a" not in running.state("badstate")  # the bad state was never written: the previous one was kept
    before = running.work("bystander").result.heartbeats
    running.wait_heartbeats("bystander", before + 5)  # same worker, never restarted
    assert running.work("bystander").result.restarts == 0
    assert (running.home / "exit-badstate.txt").read_text().split() == ["error"]


def test_a_send_payload_that_is_not_json_is_an_error_in_the_strategy(running: Lab) -> None:
    source = ONCE + '''
def st_init(ctx): pass
def st_heartbeat(ctx, tick):
    if once("bad-send"):
        ctx.send({"ok": 1, "bad": {None: 2}})
def st_exit(ctx, reason): pass
'''
    running.assign(running.strategy("badsend", source), "--interval", "0.05", "--backoff", "0")
    work = wait_for(lambda: (w := running.work("badsend")).result.last_error is not None and w, what="the error")
    assert work.result.last_error is not None
    assert "data['bad'][None]: key is not a string" in work.result.last_error.message
    running.wait_heartbeats("badsend", work.result.heartbeats + 3)


def test_a_stop_during_st_init_runs_st_exit_and_keeps_its_deadline(running: Lab) -> None:
    """A stop asked while st_init runs survives its Ready: st_exit runs, within the stop's own deadline."""
    # Longer than a start's gather (START_GATHER, 1 s): its pid shows while st_init still runs.
    source = ONCE + '''
def st_init(ctx):
    time.sleep(2.5)
def st_heartbeat(ctx, tick): pass
def st_exit(ctx, reason):
    note(ctx, reason.type)
'''
    running.assign(running.strategy("slowinit", source), "--interval", "0.05")
    work = wait_for(lambda: (w := running.work("slowinit")).result.pid and w.result.status == "starting" and w)
    running.run("strategy", "stop", "slowinit")
    running.wait_status("slowinit", "stopped", timeout=8)
    assert (running.home / "exit-slowinit.txt").read_text().split() == ["manual"]
    assert running.work("slowinit").result.heartbeats == 0  # it never ran a tick
    assert work.result.pid and not pid_alive(work.result.pid)


def test_stop_then_start_while_st_exit_runs_ends_running(running: Lab) -> None:
    """Completing a stop writes no desired=stopped: a start asked meanwhile wins."""
    source = ONCE + '''
def st_init(ctx): pass
def st_heartbeat(ctx, tick): pass
def st_exit(ctx, reason):
    time.sleep(1.0)
    note(ctx, reason.type)
'''
    running.assign(running.strategy("flipflop", source), "--interval", "0.05")
    pid = running.wait_heartbeats("flipflop", 2).result.pid
    running.run("strategy", "stop", "flipflop")
    running.wait_status("flipflop", "stopping")
    running.run("strategy", "start", "flipflop")
    work = wait_for(
        lambda: (w := running.work("flipflop")).result.status == "running" and w.result.pid not in (None, pid) and w,
        timeout=15, what="a new child running",
    )
    assert work.desired == "running"
    assert (running.home / "exit-flipflop.txt").read_text().split() == ["manual"]


def test_many_restarts_leave_no_zombie_and_no_helper(running: Lab) -> None:
    """Every restart kills the child's process group and reaps it: no zombie, no helper left running."""
    restarts = int(os.environ.get("QLAB_RESTARTS", "150"))
    marker = f"{86000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6}"
    source = _helper_strategy(marker, crash=True)
    running.assign(running.strategy("leaky", source), "--backoff", "0", "--max-errors", "1000000", "--error-window", "1")
    wait_for(lambda: running.work("leaky").result.restarts >= restarts, timeout=20 + restarts * 0.3, what=f"{restarts} restarts")
    running.run("strategy", "stop", "leaky")
    running.wait_status("leaky", "stopped")
    worker_pid = running.procs[-1].pid
    wait_for(lambda: not _helpers(marker), timeout=5, what="every helper gone")
    wait_for(lambda: not _zombies(worker_pid), timeout=5, what="every zombie reaped")


def test_a_clean_stop_leaves_no_helper(running: Lab) -> None:
    marker = f"{87000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6}"
    running.assign(running.strategy("tidy", _helper_strategy(marker, crash=False)), "--interval", "0.05")
    running.wait_heartbeats("tidy", 2)
    assert len(_helpers(marker)) == 1
    running.run("strategy", "stop", "tidy")
    running.wait_status("tidy", "stopped")
    assert (running.home / "exit-tidy.txt").read_text().split() == ["manual"]
    wait_for(lambda: not _helpers(marker), timeout=5, what="the helper gone")
    wait_for(lambda: not _zombies(running.procs[-1].pid), timeout=5, what="no zombie left")


def test_over_its_memory_limit_a_strategy_is_restarted_with_that_reason(running: Lab) -> None:
    source = ONCE + '''
HOG = []
def st_init(ctx): pass
def st_heartbeat(ctx, tick):
    if once("hog"):
        HOG.append(b"x" * 300_000_000)
def st_exit(ctx, reason): pass
'''
    running.assign(running.strategy("hog", source), "--interval", "0.05", "--backoff", "0", "--max-memory", "200")
    running.wait_event("memory_limit", "hog", timeout=15)
    work = wait_for(lambda: (w := running.work("hog")).result.restarts >= 1 and w.result.status == "running" and w)
    assert work.result.last_error is not None
    assert "over its memory limit" in work.result.last_error.message and "> 200 MB" in work.result.last_error.message



def test_a_killed_worker_leaves_no_helper_behind(lab: Lab) -> None:
    """The children die with their worker (parent-death signal); their helpers must too."""
    lab.director()
    worker = lab.worker("w1")
    marker = f"{88000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6}"
    lab.assign(lab.strategy("orphaned", _helper_strategy(marker, crash=False)), "--interval", "0.05")
    lab.wait_heartbeats("orphaned", 2)
    assert len(_helpers(marker)) == 1
    worker.kill()
    worker.wait(5)
    wait_for(lambda: not _helpers(marker), timeout=5, what="the helper gone with its worker")


SLOW_EXIT = '''
import os, time
def _note(ctx, what):
    with open(os.path.join(os.path.dirname(__file__), f"{ctx.id}.times"), "a") as f:
        f.write(f"{what} {ctx.pid} {time.time()}\\n")
def st_init(ctx):
    _note(ctx, "init")
def st_heartbeat(ctx, tick):
    pass
def st_exit(ctx, reason):
    time.sleep(1.5)  # longer than the worker's lease: only renewals keep the strategy here meanwhile
    _note(ctx, "exited")
'''


def test_a_draining_worker_keeps_its_lease_until_its_last_child_is_gone(lab: Lab) -> None:
    lab.director()
    first = lab.worker("w1", "--lease-ttl", "1", "--drain-timeout", "0.7")
    file = lab.strategy("slow", SLOW_EXIT)
    lab.assign(file, "--interval", "0.1")
    old = lab.wait_heartbeats("slow", 2)
    lab.worker("w2", "--lease-ttl", "1", "--drain-timeout", "0.7")
    first.terminate()  # SIGTERM: the worker drains, its child spends 1.5 s in st_exit
    moved = wait_for(lambda: (w := lab.work("slow")).assignment is not None and w.assignment.worker == "w2"
                     and w.result.pid not in (None, old.result.pid) and w, timeout=15)
    assert first.wait(10) == 0
    times = [line.split() for line in (lab.home / "slow.times").read_text().splitlines()]
    old_end = max(float(t) for what, pid, t in times if int(pid) == old.result.pid)
    assert ["exited", str(old.result.pid)] in [t[:2] for t in times]  # st_exit ran to its end: no self-fence
    new_init = min(float(t) for what, pid, t in times if what == "init" and int(pid) == moved.result.pid)
    assert new_init > old_end  # never two runners: w2 started it only once w1's child was done
    assert not lab.events("worker_lost")  # w1's lease never ran out while it drained


def test_a_drain_timeout_that_does_not_fit_the_lease_is_refused(lab: Lab) -> None:
    result = lab.run("worker", "start", "--region", "JP", "--id", "w1", "--lease-ttl", "2", "--drain-timeout", "5", check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--drain-timeout (5s) must fit inside the worker's lease" in lines[0], result.stderr
