"""`qlab status` for a person at a glance, and `qlab status --check` for scripts."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from tests.conftest import Lab, wait_for

GOOD = "def st_init(ctx): pass\ndef st_heartbeat(ctx, tick): pass\ndef st_exit(ctx, reason): pass\n"
CRASH = "import os\ndef st_init(ctx): os._exit(3)\ndef st_heartbeat(ctx, tick): pass\ndef st_exit(ctx, reason): pass\n"


def test_an_empty_home_shows_only_the_summary(lab: Lab) -> None:
    out = lab.run("status").stdout.strip().splitlines()
    assert out == ["directors: 0 leading, 0 standby | workers: 0/0 live | strategies: none"]


def test_summary_then_tables_and_check_fails_on_failed_and_long_pending(lab: Lab) -> None:
    lab.director()
    lab.worker("w1")
    lab.assign(lab.strategy("good", GOOD), "--interval", "0.2")
    lab.assign(lab.strategy("crash", CRASH), "--max-errors", "1", "--backoff", "0")
    lab.assign(lab.strategy("far", GOOD), "--region", "US")
    lab.wait_status("good", "running")
    lab.wait_status("crash", "failed")
    lab.wait_status("far", "pending")
    out = lab.run("status").stdout.splitlines()
    assert out[0].startswith("directors: 1 leading, 0 standby | workers: 1/1 live | strategies: ")
    assert "1 failed" in out[0] and "1 pending" in out[0] and "1 running" in out[0]
    assert any("no live worker in region 'US'" in line for line in out)
    check = lab.run("status", "--check", "--pending-after", "0.1", check=False)
    assert check.returncode == 1
    assert any(line.startswith("crash failed: ") for line in check.stdout.splitlines())
    assert any(line.startswith("far pending for ") for line in check.stdout.splitlines())
    assert check.stdout.splitlines()[-1].startswith("FAIL: directors: 1 leading")
    relaxed = lab.run("status", "--check", "--pending-after", "3600", check=False)
    assert relaxed.returncode == 1 and "far" not in relaxed.stdout  # only the failed one counts now
    lab.run("strategy", "remove", "crash")
    ok = lab.run("status", "--check", "--pending-after", "3600", check=False)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: ")


def test_a_home_that_cannot_be_made_is_one_error_line(tmp_path: Path, lab: Lab) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = lab.run("--home", str(blocker / "home"), "status", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"Error: Not a directory: {blocker / 'home'}"]


# ---- --check: what it fails on besides failed and pending strategies ----


def leased(lab: Lab, worker_id: str) -> None:
    """Wait until the worker holds its lease: it registers first, and renews right after."""
    wait_for(lambda: (r := lab.store.find_resource(worker_id)) is not None and r.state.lease_expires > 0,
             what=f"{worker_id}'s lease")


def check(lab: Lab, *args: str) -> tuple[int, list[str]]:
    result = lab.run("status", "--check", *args, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout.splitlines()


def test_check_fails_while_no_director_leads_and_strategies_exist(lab: Lab) -> None:
    assert check(lab) == (0, ["ok: directors: 0 leading, 0 standby | workers: 0/0 live | strategies: none"])
    lab.assign(lab.strategy("good", GOOD))
    code, lines = check(lab)
    assert code == 1 and lines[0] == (
        "no director leads (no director has led this store): 1 strategy cannot be placed or moved; "
        "start one with `qlab director start`")
    director = lab.director("--lease-ttl", "1")
    wait_for(lambda: check(lab, "--pending-after", "3600")[0] == 0, what="the check to pass under a leader")
    os.killpg(director.pid, signal.SIGKILL)  # it never says goodbye: its record still says leader
    code, lines = wait_for(lambda: (found := check(lab))[0] == 1 and found, what="the lost leader to count")
    assert lines[0].startswith(f"no director leads (the last leader, {socket.gethostname()}-{director.pid}, "
                               "renewed its lease ")
    assert lines[-1].startswith("FAIL: directors: 0 leading (1 lost its lease), 0 standby")  # not "1 leading"
    assert lab.store.list_directors()[0].role == "leader"


def test_check_fails_under_a_halt_unless_it_is_allowed(lab: Lab) -> None:
    lab.director()
    lab.worker("w1")
    lab.assign(lab.strategy("good", GOOD))
    lab.wait_status("good", "running")
    assert check(lab)[0] == 0
    lab.run("halt", "--account", "paper")
    code, lines = check(lab)
    assert code == 1 and lines[0].startswith("halted: account paper (since ")
    assert "--allow-halted" in lines[0]
    assert check(lab, "--allow-halted")[0] == 0
    lab.run("resume", "--account", "paper")
    assert check(lab)[0] == 0


def test_check_fails_on_a_strategy_stuck_assigned_to_a_worker_that_does_not_take_it(lab: Lab) -> None:
    lab.director()
    worker = lab.worker("w1")
    leased(lab, "w1")
    os.killpg(worker.pid, signal.SIGSTOP)  # alive and registered, with 15 s of lease left, but deaf
    try:
        lab.assign(lab.strategy("good", GOOD))
        lab.wait_status("good", "assigned")
        code, lines = check(lab, "--stuck-after", "5")
        assert code == 0, lines
        code, lines = wait_for(lambda: (found := check(lab, "--stuck-after", "0.5"))[0] == 1 and found,
                               what="the stuck strategy to count")
        assert lines[0].startswith("good assigned on w1 for ") and "(bound 0.5s)" in lines[0]
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
    lab.wait_status("good", "running")
    assert check(lab, "--stuck-after", "0.5")[0] == 0


def test_check_fails_on_a_short_then_expired_worker_lease(lab: Lab) -> None:
    worker = lab.worker("w1", "--lease-ttl", "2", "--drain-timeout", "1")
    leased(lab, "w1")
    assert check(lab)[0] == 0
    os.killpg(worker.pid, signal.SIGSTOP)  # no director: its record stays, with the lease running out
    try:
        short = wait_for(lambda: (found := check(lab))[0] == 1 and found[1], what="a short lease")
        assert short[0].startswith("worker w1 on ") and ": lease short, " in short[0] and "s of 2s left" in short[0]
        expired = wait_for(lambda: "expired" in (found := check(lab)[1])[0] and found, what="an expired lease")
        assert expired[0].endswith("its strategies are stopped")
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
    wait_for(lambda: check(lab)[0] == 0, what="the renewed lease")


#: Spins 50 ms of CPU each 0.1 s tick: about half a core on an idle machine, less on a busy one.
BURN = ("import time\ndef st_init(ctx): pass\ndef st_heartbeat(ctx, tick):\n    end = time.process_time() + 0.05\n"
        "    while time.process_time() < end: pass\ndef st_exit(ctx, reason): pass\n")


def test_status_shows_each_strategys_uptime_cpu_and_memory_as_its_worker_measured_them(lab: Lab) -> None:
    lab.director()
    lab.worker("w1")
    lab.assign(lab.strategy("burn", BURN), "--interval", "0.1")
    lab.assign(lab.strategy("idle", GOOD), "--interval", "0.1")

    def measured() -> dict[str, dict[str, object]] | None:
        found = {s["id"]: s for s in lab.status()["strategies"]}
        done = all(s["cpu"] is not None and s["memory"] is not None for s in found.values())
        return found if done else None

    found = wait_for(measured, timeout=30, what="both strategies measured")
    burn, idle = found["burn"], found["idle"]
    # Each as its worker measured it: the spinner far above the idle one (a busy machine gives it less than half a core).
    assert burn["cpu"] > max(8, 4 * idle["cpu"]) and idle["cpu"] < 15, (burn["cpu"], idle["cpu"])  # type: ignore[operator]
    assert 0.5 < burn["memory"] < 100 and 0.5 < idle["memory"] < 100  # type: ignore[operator]
    assert burn["uptime"] > 0 and burn["since"] <= time.time() - burn["uptime"] + 1  # type: ignore[operator]
    rows = {line.split()[0]: line for line in lab.run("status").stdout.splitlines() if line.split()[:1] in (["burn"], ["idle"])}
    assert f"{burn['cpu']:.0f}%" in rows["burn"] and "MiB" in rows["idle"]
    shown = lab.run("strategy", "show", "burn").stdout
    assert "% of a core, " in shown and " MiB (proportional set size)" in shown
    lab.run("strategy", "stop", "burn")
    stopped = lab.wait_status("burn", "stopped")
    assert (stopped.result.pid, stopped.result.cpu, stopped.result.memory) == (None, None, None)
