"""`qlab worker start --strategy-uids`: each strategy runs as a uid of its own, which the worker's files refuse."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import COUNTER, Lab, js_missing, lacking, pid_alive, wait_for
from tests.integration.test_systemd import MAX_EXPOSURE, _analyze, _exposure

UIDS = (61000, 61999)
JS_COUNTER = """
export async function st_init(ctx) { ctx.state.n ??= 0; }
export async function st_heartbeat(ctx, tick) { ctx.state.n += 1; }
export async function st_exit(ctx, reason) {}
"""


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder every user may read, outside the home, for the strategies' files (as the docs ask)."""
    folder = Path(tempfile.mkdtemp(prefix="qlab-uids-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def _strategy(folder: Path, name: str, source: str) -> Path:
    path = folder / name
    path.write_text(source)
    path.chmod(0o644)
    return path


def _ids(pid: int) -> tuple[int, int]:
    """The real uid and gid of ``pid`` (each of its four uids and gids are checked to be the same)."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    uids, gids = ({int(x) for x in line.split()[1:]} for line in status if line.startswith(("Uid:", "Gid:")))
    assert len(uids) == 1 and len(gids) == 1, status
    return uids.pop(), gids.pop()


def _running(lab: Lab, work_id: str) -> int:
    """The pid of the running strategy's child, once it beats."""
    work = lab.wait_heartbeats(work_id, lab.work(work_id).result.heartbeats + 2, timeout=30)
    assert work.result.pid is not None
    return work.result.pid


def _opens_as(uid: int, paths: list[Path]) -> list[bool]:
    """Whether a process with ``uid``, its group and no other, may open (or list) each path: plain permissions,
    no sandbox."""
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            answers = []
            for path in paths:
                try:
                    os.listdir(path) if path.is_dir() else path.read_bytes()
                    answers.append(True)
                except PermissionError:
                    answers.append(False)
            os.write(write_fd, json.dumps(answers).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        said = f.read()
    os.waitpid(child, 0)
    return list(json.loads(said))


def test_each_strategy_runs_as_a_uid_of_its_own_that_reads_nothing_of_the_worker(lab: Lab, shared: Path) -> None:
    if os.geteuid() != 0:
        lacking("root, which switches a strategy's uid")
    if missing := js_missing():
        lacking(missing)
    accounts = lab.home / "env.jsonl"
    accounts.write_text(json.dumps({"name": "paper", "type": "paper"}) + "\n")
    lab.director()
    lab.worker("w1", "--strategy-uids", f"{UIDS[0]}-{UIDS[1]}", "--accounts", str(accounts))
    lab.assign(_strategy(shared, "py.py", COUNTER), "--interval", "0.2")
    lab.assign(_strategy(shared, "js.mjs", JS_COUNTER), "--interval", "0.2")
    py, js = _running(lab, "py"), _running(lab, "js")

    (py_uid, py_gid), (js_uid, js_gid) = _ids(py), _ids(js)
    assert UIDS[0] <= py_uid <= UIDS[1] and UIDS[0] <= js_uid <= UIDS[1] and py_uid != js_uid
    assert (py_gid, js_gid) == (py_uid, js_uid)
    store_file = next(path for path in (lab.home / "store").rglob("*") if path.is_file())
    js_log = lab.home / "logs" / "strategies" / "js.log"
    assert _opens_as(py_uid, [lab.home / "store", store_file, accounts, js_log, shared / "py.py"]) == [
        False, False, False, False, True]

    lab.run("strategy", "restart", "py")
    wait_for(lambda: lab.work("py").result.pid not in (None, py), timeout=30, what="py's next child")
    again = _running(lab, "py")
    assert _ids(again) == (py_uid, py_gid)  # its uid again: free once its child was reaped
    lab.run("strategy", "stop", "js")
    lab.wait_status("js", "stopped", timeout=30)
    assert not pid_alive(js)
    lab.wait_heartbeats("py", lab.work("py").result.heartbeats + 2)


def test_the_worker_unit_for_strategy_uids_holds_just_their_capabilities_and_stays_sandboxed(tmp_path: Path) -> None:
    analyze = _analyze()
    subprocess.run([sys.executable, "-m", "quantlab.cli", "systemd", "render", "--user", "root", "--home",
                    str(tmp_path / "home"), "--venv", sys.prefix, "--out", str(tmp_path), "--strategy-uids",
                    "61000-61999"],
                   capture_output=True, text=True, check=True)
    unit = tmp_path / "qlab-worker@jp-1.service"
    shutil.copy(tmp_path / "qlab-worker@.service", unit)
    lines = unit.read_text().splitlines()
    assert "CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_KILL" in lines
    assert "AmbientCapabilities=CAP_SETUID CAP_SETGID CAP_KILL" in lines
    assert any(line.startswith("ExecStart=") and line.endswith(" --strategy-uids 61000-61999") for line in lines)
    assert "SystemCallFilter=@setuid" in lines and "ProtectProc=default" in lines
    director = (tmp_path / "qlab-director.service").read_text().splitlines()
    assert "CapabilityBoundingSet=" in director and "AmbientCapabilities=" in director  # none for the director
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0 and "qlab-worker" not in result.stderr, result.stderr
    assert _exposure(analyze, unit) <= MAX_EXPOSURE
