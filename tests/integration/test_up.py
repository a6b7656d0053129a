"""`qlab up` on one home: what it says first, what it resumes or stops, and that it is alone there."""

from __future__ import annotations

import json
import os
import signal
import subprocess

from tests.conftest import COUNTER, Lab, wait_for

ACCOUNTS = {"name": "mine", "type": "paper", "balances": {"USDT": 1000}, "symbols": ["BTCUSDT"]}


def _output(lab: Lab, proc: subprocess.Popen[bytes]) -> str:
    return (lab.home / f"proc-{lab.procs.index(proc)}.err").read_text()


def _interrupt(lab: Lab, proc: subprocess.Popen[bytes]) -> str:
    """Ctrl-C `up` (its children have process groups of their own); what it printed, once it exited 0."""
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(30) == 0, _output(lab, proc)
    return _output(lab, proc)


def test_up_says_where_it_runs_resumes_or_stops_earlier_strategies_and_is_alone(lab: Lab) -> None:
    old, new, other = (lab.strategy(name, COUNTER) for name in ("old", "new", "other"))
    accounts = lab.home / "mine.jsonl"
    accounts.write_text(json.dumps(ACCOUNTS) + "\n")
    lab.assign(old)  # an earlier run's strategy, still meant to run

    up = lab.start("up", str(new), "--accounts", str(accounts), "--interval", "0.2")
    wait_for(lambda: "Ctrl-C stops everything" in _output(lab, up), timeout=30, what="up's first lines")
    first = _output(lab, up).splitlines()
    assert first[0].startswith(f"home: {lab.home} ") and first[1].startswith(f"logs: {lab.home / 'logs'} ")
    assert first[2] == "Ctrl-C stops everything"
    assert first[3:5] == ["resuming 1 earlier strategy of this home:", f"  old  {old}"]
    lab.wait_status("new", "running", timeout=30)
    lab.wait_status("old", "running")
    assert lab.status()["workers"][0]["accounts"] == ["mine"]  # --accounts reached the worker

    second = lab.run("up", str(other), check=False)
    assert second.returncode == 1
    assert second.stderr.splitlines() == [
        f"Error: qlab up is already running on this home: pid {up.pid} (Ctrl-C it, or give this one another --home)"]
    assert lab.store.find_work("other") is None  # refused before it assigned anything
    assert "no live worker" not in _interrupt(lab, up)  # up starts the worker before the director places

    only = lab.start("up", "--only", str(new))
    wait_for(lambda: "stopping (--only) 1 earlier strategy of this home:" in _output(lab, only), timeout=30, what="--only's plan")
    lab.wait_status("new", "running", timeout=30)
    assert lab.work("old").desired == "stopped"
    assert lab.work("old").result.status == "stopped"
    out = _interrupt(lab, only)
    assert "Traceback" not in out and "no live worker" not in out
