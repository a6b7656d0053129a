"""`qlab up` started with an account secret exported: only its worker keeps it, and none of its processes is dumpable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil

from tests.conftest import COUNTER, Lab, lacking, wait_for

SECRET = "bybit-secret-up-93c1e"
GROUP = 54321  #: a group of no file here


def _environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def _as_group() -> None:
    """Run as root with another group: /proc/PID's files then show this group while the process is dumpable.

    The kernel makes a non-dumpable process's /proc files root:root, so their group is how a test (as
    root, whose uid is 0 either way) sees from outside that a process called PR_SET_DUMPABLE 0.
    """
    os.setgid(GROUP)


def _dumpable(pid: int) -> bool:
    return os.stat(f"/proc/{pid}/environ").st_gid == GROUP


def test_up_gives_the_secret_to_its_worker_alone_and_no_process_of_its_is_dumpable(lab: Lab) -> None:
    if os.geteuid() != 0:
        lacking("root, which runs `up` under another group")
    accounts = lab.home / "accounts.jsonl"
    accounts.write_text(json.dumps({"name": "live", "type": "bybit", "api_key": "k", "api_secret_env": "QLAB_UP_SECRET",
                                    "endpoint": "http://127.0.0.1:9"}) + "\n")
    up = lab.start("up", str(lab.strategy("beat", COUNTER)), "--accounts", str(accounts), "--interval", "0.2",
                   env={"QLAB_UP_SECRET": SECRET}, preexec_fn=_as_group)
    lab.wait_status("beat", "running", timeout=30)
    resource = lab.store.find_resource("local")
    assert resource is not None
    worker = resource.spec.pid
    director = next(p.pid for p in psutil.Process(up.pid).children() if p.pid != worker)

    # A dumpable process of our uid with the secret: the reads below find one where there is one.
    bystander = subprocess.Popen(["sleep", "60"], env={"QLAB_UP_SECRET": SECRET}, preexec_fn=_as_group)
    try:
        assert SECRET.encode() in _environ(bystander.pid) and _dumpable(bystander.pid)
        for pid in (up.pid, director):
            assert SECRET.encode() not in _environ(pid), f"pid {pid} keeps the secret in /proc/{pid}/environ"
        assert [_dumpable(pid) for pid in (up.pid, director, worker)] == [False, False, False]
    finally:
        bystander.kill()
        bystander.wait()
    os.killpg(up.pid, signal.SIGINT)
    assert up.wait(30) == 0
    wait_for(lambda: not psutil.pid_exists(worker) and not psutil.pid_exists(director), what="up's children to exit")
