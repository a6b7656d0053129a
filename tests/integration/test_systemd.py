"""systemd: the notify protocol from real qlab processes, and units that systemd accepts."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quantlab.ops.units import Install, render
from tests.conftest import Lab, lacking, wait_for

REPO = Path(__file__).resolve().parents[2]
#: systemd's watchdog period for the tests: the processes send WATCHDOG=1 every half of it.
WATCHDOG_USEC = "400000"


class NotifySocket:
    """A datagram socket standing in for systemd's, at a path or in the abstract namespace."""

    def __init__(self, tmp: Path, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"qlab-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.env = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": WATCHDOG_USEC}
        else:
            path = tmp / "notify.sock"
            self.sock.bind(str(path))
            self.env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": WATCHDOG_USEC}
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []

    def read(self) -> list[tuple[float, str]]:
        """Every message so far, one line each, with the monotonic time it arrived."""
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                return self.messages
            now = time.monotonic()
            self.messages.extend((now, line) for line in data.decode().splitlines())

    def lines(self, prefix: str) -> list[str]:
        return [line for _, line in self.read() if line.startswith(prefix)]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    sock = NotifySocket(tmp_path, abstract=request.param == "abstract")
    yield sock
    sock.close()


def test_worker_says_ready_status_watchdog_and_stopping(lab: Lab, notify: NotifySocket) -> None:
    lab.director()
    worker = lab.worker("w1", env=notify.env)
    wait_for(lambda: notify.lines("READY=1"), what="READY=1")
    status = wait_for(lambda: notify.lines("STATUS="), what="a STATUS line")
    assert "lease ok" in status[-1]
    beats = wait_for(lambda: len(notify.lines("WATCHDOG=1")) >= 5 and notify.lines("WATCHDOG=1"), what="watchdog pings")
    assert beats
    times = [t for t, line in notify.read() if line == "WATCHDOG=1"]
    assert max(b - a for a, b in zip(times, times[1:])) < 0.4  # inside systemd's period
    worker.terminate()
    assert worker.wait(20) == 0
    assert notify.lines("STOPPING=1")


def test_director_says_ready_status_and_watchdog(lab: Lab, notify: NotifySocket) -> None:
    director = lab.start("director", "start", "--heartbeat", "0.2", env=notify.env)
    wait_for(lambda: notify.lines("READY=1"), what="READY=1")
    wait_for(lambda: any("leading (term" in line for line in notify.lines("STATUS=")), what="a leading STATUS")
    wait_for(lambda: len(notify.lines("WATCHDOG=1")) >= 5, what="watchdog pings")
    director.terminate()
    assert director.wait(20) == 0
    assert notify.lines("STOPPING=1")


HOOKS = '''
import os, time
def st_worker_heartbeat(wctx, tick):
    here = os.path.dirname(__file__)
    if os.path.exists(os.path.join(here, "block")):
        os.unlink(os.path.join(here, "block"))
        with open(os.path.join(here, "blocked"), "a") as f:
            f.write(f"{time.monotonic()} ")
            f.flush()
            time.sleep(1.5)  # the worker's loop is stuck here
            f.write(f"{time.monotonic()}\\n")
'''


def test_a_blocked_worker_loop_stops_the_watchdog(lab: Lab, tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path, abstract=False)
    try:
        hooks = tmp_path / "hooks.py"
        hooks.write_text(HOOKS)
        profile = tmp_path / "w1.toml"
        profile.write_text(f'id = "w1"\nregion = "JP"\nheartbeat = 0.2\nhooks = "{hooks}"\n')
        lab.start("worker", "start", "--profile", str(profile), env=notify.env)
        wait_for(lambda: len(notify.lines("WATCHDOG=1")) >= 3, what="watchdog pings")
        (tmp_path / "block").touch()
        blocked = tmp_path / "blocked"
        # Read the socket all along, so each ping is stamped (monotonic, as the hook's) as it arrives.
        wait_for(lambda: notify.read() is not None and blocked.exists() and blocked.read_text().endswith("\n"),
                 what="the hook to block the loop and return")
        entered, left = (float(x) for x in blocked.read_text().split())
        quiet = [t for t, line in notify.read() if line == "WATCHDOG=1" and entered + 0.1 < t < left]
        assert not quiet  # no ping while the loop is stuck: systemd would restart it
        wait_for(lambda: any(t > left for t, line in notify.read() if line == "WATCHDOG=1"),
                 what="pings again once the loop turns")
    finally:
        notify.close()


#: The highest `systemd-analyze security` exposure a unit may have ("OK" ends at 4.9; we ask for 4.0).
MAX_EXPOSURE = 4.0
STORE_URL = "postgresql://qlab:s3cret-pw@db.internal/qlab"


def _analyze() -> str:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        lacking("systemd-analyze")
    return analyze


def test_rendered_units_pass_systemd_analyze_are_sandboxed_and_read_the_store_from_a_file(tmp_path: Path) -> None:
    analyze = _analyze()
    env_file = tmp_path / "etc" / "store.env"
    out = subprocess.run([sys.executable, "-m", "quantlab.cli", "systemd", "render", "--user", "root",
                          "--home", str(tmp_path / "home"), "--venv", sys.prefix, "--out", str(tmp_path),
                          "--store", "-", "--env-file", str(env_file)],
                         input=STORE_URL + "\n", capture_output=True, text=True, check=True)
    assert "qlab-director.service" in out.stdout and STORE_URL not in out.stdout + out.stderr
    assert env_file.read_text() == f"QLAB_STORE={STORE_URL}\n"
    assert env_file.stat().st_mode & 0o777 == 0o600
    shutil.copy(tmp_path / "qlab-worker@.service", tmp_path / "qlab-worker@jp-1.service")
    for unit in ("qlab-director.service", "qlab-worker@jp-1.service"):
        path = tmp_path / unit
        text = path.read_text()
        assert f"EnvironmentFile={env_file}" in text and "s3cret" not in text
        assert "Restart=always" in text
        assert path.stat().st_mode & 0o777 == 0o644  # nothing secret in a unit
        result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True)
        complaints = [line for line in result.stderr.splitlines() if unit.split("@")[0].split(".")[0] in line]
        assert result.returncode == 0 and not complaints, result.stderr
        assert _exposure(analyze, path) <= MAX_EXPOSURE, subprocess.run(
            [analyze, "security", "--offline=true", str(path)], capture_output=True, text=True).stdout
    # Node's JIT needs writable executable memory: only the director, which runs no strategy, forbids it.
    assert "MemoryDenyWriteExecute=yes" in (tmp_path / "qlab-director.service").read_text()
    assert "MemoryDenyWriteExecute" not in (tmp_path / "qlab-worker@.service").read_text()


def _exposure(analyze: str, unit: Path) -> float:
    result = subprocess.run([analyze, "security", "--offline=true", str(unit)], capture_output=True, text=True)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert found, f"no exposure level from systemd-analyze security:\n{result.stdout}\n{result.stderr}"
    return float(found[1])


def test_a_bad_store_for_the_units_is_one_error_line_and_writes_nothing(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "quantlab.cli", "systemd", "render", "--out", str(tmp_path / "units"),
                             "--store", "-", "--env-file", str(tmp_path / "store.env")],
                            input="", capture_output=True, text=True)
    assert result.returncode != 0 and result.stderr.startswith("Error: --store") and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "store.env").exists() and not (tmp_path / "units").exists()


def test_the_shipped_units_are_the_rendered_defaults() -> None:
    for name, text in render(Install()).items():
        assert (REPO / "etc" / "systemd" / name).read_text() == text, f"etc/systemd/{name}: run `qlab systemd render --out etc/systemd`"


def test_everything_in_the_home_is_private_whatever_the_umask(lab: Lab) -> None:
    before = os.umask(0o022)  # a typical login umask; qlab must not inherit its openness
    try:
        lab.director()
        lab.worker("w1")
        file = lab.strategy("s", "def st_init(ctx): print('hi')\ndef st_heartbeat(ctx, tick): ctx.state['n'] = tick.seq\ndef st_exit(ctx, r): pass\n")
        lab.assign(file, "--interval", "0.1")
        lab.wait_heartbeats("s", 2)
    finally:
        os.umask(before)  # the tests after this one in the same process keep theirs
    open_ones = []
    for path in [*(lab.home / "store").rglob("*"), *(lab.home / "logs").rglob("*"), lab.home / "store", lab.home / "logs"]:
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            continue  # a temporary file or pruned version the running processes removed since the listing
        if mode & 0o077:
            open_ones.append(f"{path.relative_to(lab.home)} {mode:o}")
    assert not open_ones, open_ones


def test_an_open_home_gets_a_warning(lab: Lab) -> None:
    lab.home.chmod(0o755)
    result = lab.run("status")
    assert f"warning: {lab.home} can be read by other users (mode 755)" in result.stderr
