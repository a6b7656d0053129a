"""The Work's lifecycle with real `qlab` processes: one runner at a time, every stop settles, apply takes effect."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.conftest import Lab, wait_for

#: Writes a line per hook to trace.jsonl beside it: which process, when, and what its API calls did.
#: st_exit takes ``exit_seconds`` and keeps calling the paper account meanwhile, as a strategy that
#: cancels its orders on the way out would.
TRACER = '''
import json, os, time
ACCOUNTS = ["paper"]
def trace(ctx, what, **more):
    with open(os.path.join(os.path.dirname(__file__), "trace.jsonl"), "a") as f:
        f.write(json.dumps({"pid": ctx.pid, "what": what, "t": time.time(), **more}) + "\\n")
def call(ctx):
    """An order that stays open (far below the market), and when it was sent."""
    t0 = time.time()
    try:
        ctx.api.bybit["paper"].place_order(category="linear", symbol="BTCUSDT", side="Buy", orderType="Limit",
                                           qty="0.001", price="100")
        return {"api": "ok", "t0": t0}
    except Exception as e:
        return {"api": type(e).__name__, "t0": t0}
def st_init(ctx):
    trace(ctx, "init", interval=None)
def st_heartbeat(ctx, tick):
    trace(ctx, "beat", interval=tick.interval, **call(ctx))
def st_exit(ctx, reason):
    trace(ctx, "exit", reason=reason.type)
    end = time.time() + ctx.params.get("exit_seconds", 0)
    while time.time() < end:
        trace(ctx, "exiting", **call(ctx))
        time.sleep(0.05)
    trace(ctx, "exited")
'''


def trace(lab: Lab) -> list[dict[str, Any]]:
    path = lab.home / "trace.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def apply(lab: Lab, manifest: Path, file: Path, keys: str) -> None:
    """`qlab apply` of a manifest with one strategy ``s`` from ``file``, with ``keys`` (TOML lines)."""
    manifest.write_text(f'[strategies.s]\nfile = "{file}"\n{keys}\n')
    lab.run("apply", str(manifest))


def beats(lab: Lab, pid: int) -> list[dict[str, Any]]:
    return [x for x in trace(lab) if x["pid"] == pid and x["what"] == "beat"]


def runners(lines: list[dict[str, Any]]) -> dict[int, tuple[float, float]]:
    """Each child's life as (first line, last line) by pid."""
    life: dict[int, tuple[float, float]] = {}
    for line in lines:
        first, _ = life.get(line["pid"], (line["t"], line["t"]))
        life[line["pid"]] = (first, line["t"])
    return life


def test_a_removed_strategy_assigned_again_elsewhere_never_runs_twice(lab: Lab) -> None:
    """remove, then at once assign the same id on another worker, while the old st_exit takes 2 s."""
    lab.director()
    lab.worker("w1")
    lab.worker("w2")
    file = lab.strategy("x", TRACER)
    lab.assign(file, "--worker", "w1", "--interval", "0.1", "--param", "exit_seconds=2")
    lab.wait_heartbeats("x", 3)
    old = lab.work("x").result.pid

    lab.run("strategy", "remove", "x")
    removed_at = time.time()
    lab.run("strategy", "assign", str(file), "--id", "x", "--worker", "w2", "--interval", "0.1")
    work = wait_for(lambda: (w := lab.work("x")).result.heartbeats >= 3 and w, timeout=20, what="x to run on w2")

    lines = trace(lab)
    assert work.assignment is not None and work.assignment.worker == "w2" and work.result.pid != old
    assert [line["reason"] for line in lines if line["pid"] == old and line["what"] == "exit"] == ["removed"]
    old_end = runners(lines)[old][1]
    new_start = runners(lines)[work.result.pid][0]
    assert new_start > old_end, f"the new runner started {old_end - new_start:.3f}s before the old one ended"
    late = [line for line in lines if line["pid"] == old and line.get("api") == "ok" and line["t0"] > removed_at]
    assert late == [], f"the removed runner's API still worked after the removal: {late[:3]}"


def test_a_stop_that_lands_before_the_worker_takes_the_strategy_settles_and_frees_its_place(lab: Lab) -> None:
    """The director placed it, the worker has not taken it yet: the stop must not strand it as `assigned`."""
    lab.director()
    file = lab.strategy("s", TRACER)
    # No worker can take it yet: write the placement the director would make, on a worker that
    # registered and then went quiet (SIGSTOP), so the stop lands between placement and adoption.
    worker = lab.worker("w1", "--max-strategies", "1", "--lease-ttl", "30")
    worker.send_signal(signal.SIGSTOP)
    try:
        lab.assign(file, "--worker", "w1")
        wait_for(lambda: lab.work("s").result.status == "assigned", what="the director to place s")
        lab.run("strategy", "stop", "s")
        work = wait_for(lambda: (w := lab.work("s")).result.status == "stopped" and w, what="the stop to settle")
        assert work.assignment is None and work.desired == "stopped"
        # Its place is free: another strategy pinned there is placed, not "every eligible worker is full".
        lab.assign(lab.strategy("t", TRACER), "--worker", "w1")
        wait_for(lambda: lab.work("t").result.status == "assigned", what="t to be placed on w1")
    finally:
        worker.send_signal(signal.SIGCONT)
    lab.wait_heartbeats("t", 1)
    assert lab.work("s").result.status == "stopped" and not [x for x in trace(lab) if x["what"] == "init" and
                                                            x["pid"] != lab.work("t").result.pid]
    check = lab.run("status", "--check", check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_racing_stop_start_and_restart_from_two_terminals_always_settles(lab: Lab) -> None:
    lab.director()
    lab.worker("w1")
    lab.assign(lab.strategy("s", TRACER), "--interval", "0.1")
    lab.wait_heartbeats("s", 1)
    for round_ in range(4):
        commands = [["stop", "s"], ["start", "s"], ["restart", "s"], ["stop", "s"]]
        procs = [subprocess.Popen([*lab._qlab(), "strategy", *c], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for c in commands[round_ % 2:] + commands[:round_ % 2]]
        for proc in procs:
            proc.wait(timeout=30)
        lab.run("strategy", "stop", "s")  # the last word: stopped
        wait_for(lambda: (w := lab.work("s")).result.status == "stopped" and w.assignment is None,
                 timeout=15, what=f"round {round_}: the last stop to settle")
        lab.run("strategy", "start", "s")
        lab.wait_status("s", "running", timeout=15)


def test_apply_of_a_new_interval_changes_how_often_the_worker_ticks(lab: Lab, tmp_path: Path) -> None:
    lab.director()
    lab.worker("w1")
    file, manifest = lab.strategy("s", TRACER), tmp_path / "fleet.toml"
    apply(lab, manifest, file, "interval = 1.0")
    old = lab.wait_heartbeats("s", 1).result.pid
    apply(lab, manifest, file, "interval = 0.2")
    pid = wait_for(lambda: (w := lab.work("s")).result.status == "running" and w.result.pid not in (None, old)
                   and w.result.pid, what="the restart with the new spec")
    wait_for(lambda: len(beats(lab, pid)) >= 6, timeout=5, what="six beats of the new child")
    times = [x["t"] for x in beats(lab, pid)]
    gaps = [b - a for a, b in zip(times[1:], times[2:])]
    assert max(gaps) < 0.5, f"ticks came every {gaps} s, not every 0.2 s"
    assert {x["interval"] for x in beats(lab, pid)} == {0.2}


def test_apply_that_moves_a_strategy_fences_its_old_runner_first(lab: Lab, tmp_path: Path) -> None:
    lab.director()
    lab.worker("w1")
    lab.worker("w2")
    file, manifest = lab.strategy("s", TRACER), tmp_path / "fleet.toml"
    keys = 'worker = "w1"\ninterval = 0.1\nparams = { exit_seconds = 1 }'
    apply(lab, manifest, file, keys)
    lab.wait_heartbeats("s", 2)
    old = lab.work("s").result.pid
    apply(lab, manifest, file, keys.replace('"w1"', '"w2"'))
    moved_at = time.time()
    work = wait_for(lambda: (w := lab.work("s")).assignment is not None and w.assignment.worker == "w2"
                    and w.result.pid not in (None, old) and w, timeout=20, what="s to run on w2")
    wait_for(lambda: len(beats(lab, work.result.pid)) >= 2, what="two beats on w2")
    lines = trace(lab)
    assert [x["reason"] for x in lines if x["pid"] == old and x["what"] == "exit"] == ["moved_away"]
    assert runners(lines)[work.result.pid][0] > runners(lines)[old][1]
    assert not [x for x in lines if x["pid"] == old and x.get("api") == "ok" and x["t0"] > moved_at]
