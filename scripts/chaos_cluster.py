"""The chaos soak's processes: `qlab` commands in one home, and what /proc says about them.

Every process the soak starts carries ``QLAB_CHAOS_RUN=<home>`` in its
environment, and everything they start inherits it (the worker strips only
secrets from what its children get), so the soak finds all of its
descendants in /proc, whatever their command line, and can end them all.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from chaos_checks import Runner

from quantlab.worker.procs import become_subreaper

MARKER_VAR = "QLAB_CHAOS_RUN"
CLI_TIMEOUT = 20.0  #: seconds any one `qlab` command may take
LEAK_GRACE = 2.0  #: seconds a process may outlive its owner (signal delivery, reaping) before it is a leak


# ---- /proc ----


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    state: str  #: R, S, T (stopped), Z (zombie), ...
    start: int  #: start time in clock ticks since boot: with the pid, it names one process
    cmdline: str
    session: int = 0  #: session id


def read_proc(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return Proc(pid, int(fields[1]), fields[0], int(fields[19]), cmdline, int(fields[3]))


def all_procs() -> dict[int, Proc]:
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (proc := read_proc(int(name))) is not None:
            found[proc.pid] = proc
    return found


def host_pids(runner: int, pids: list[int]) -> list[int]:
    """The machine's pids of the processes that strategy child ``runner`` (the machine's pid) numbers
    ``pids`` in its PID namespace (the same numbers without one); those gone are left out."""
    try:
        namespace = os.readlink(f"/proc/{runner}/ns/pid")
    except OSError:
        return []  # the child is gone, and with it its namespace and everything in it
    found = {}
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.readlink(f"/proc/{name}/ns/pid") == namespace:
                with open(f"/proc/{name}/status") as f:
                    inner = int(next(line for line in f if line.startswith("NSpid:")).split()[-1])
                found[inner] = int(name)
        except (OSError, StopIteration, ValueError):
            continue
    return [found[pid] for pid in pids if pid in found]


def has_marker(pid: int, marker: bytes) -> bool:
    """Whether the process's environment holds ``marker`` (a zombie has no environment left)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False


def send(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def send_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def tail(path: Path, lines: int = 6) -> str:
    """The last lines of a log, on one line: evidence for a report."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


# ---- the cluster ----


def qlab_command() -> list[str]:
    """The installed console script, preferably beside this interpreter (no pyenv shim in between)."""
    beside = Path(sys.executable).parent / "qlab"
    return [str(beside)] if beside.exists() else [shutil.which("qlab") or "qlab"]


@dataclass
class Managed:
    """A long-running process the soak started: a director (d1, d2...) or a worker (w1, w2...)."""

    name: str
    args: tuple[str, ...]
    proc: subprocess.Popen[bytes]
    log: Path
    expected_exit: bool = False  #: the soak killed or stopped it on purpose
    stopped: bool = False  #: SIGSTOPped by the soak, not yet continued

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def is_worker(self) -> bool:
        return self.name.startswith("w")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():  # Popen will not signal a pid it has reaped: no stranger gets it
            self.proc.send_signal(sig)


class Cluster:
    """Every `qlab` process of one soak, in its own home."""

    def __init__(self, home: Path, store_url: str = "") -> None:
        self.home = home
        self.marker = f"{MARKER_VAR}={home}".encode()
        self.env = {**os.environ, MARKER_VAR: str(home), "PYTHONUNBUFFERED": "1"}
        self.env.pop("QLAB_HOME", None)
        self.env.pop("QLAB_STORE", None)  # only the soak's own store: never a developer's
        if store_url:
            self.env["QLAB_STORE"] = store_url
        self.qlab = [*qlab_command(), "--home", str(home)]
        self.procs: dict[str, Managed] = {}
        self._serial = itertools.count(1)
        self._help: dict[tuple[str, ...], str] = {}

    def start(self, name: str, *args: str) -> Managed:
        """Start `qlab ARGS` in its own session; its output goes to procs/NAME.N.log."""
        log = self.home / "procs" / f"{name}.{next(self._serial)}.log"
        log.parent.mkdir(exist_ok=True)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*self.qlab, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=self.env,
            )  # fmt: skip
        managed = Managed(name, args, proc, log)
        self.procs[name] = managed
        return managed

    def restart(self, name: str) -> Managed:
        old = self.procs[name]
        old.proc.wait(5)
        return self.start(name, *old.args)

    def next_name(self, prefix: str) -> str:
        return next(f"{prefix}{i}" for i in itertools.count(1) if f"{prefix}{i}" not in self.procs)

    def by_pid(self, pid: int) -> Managed | None:
        return next((m for m in self.procs.values() if m.pid == pid and m.alive()), None)

    def run(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str] | None:
        """One `qlab` command to completion; None when it did not finish in time."""
        try:
            return subprocess.run(
                [*self.qlab, *args], capture_output=True, text=True, timeout=timeout, env=self.env, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            return None

    def json(self, *args: str) -> Any:
        """The parsed output of a `--json` command; None when it failed."""
        result = self.run(*args)
        if result is None or result.returncode != 0:
            return None
        try:
            return json.loads(result.stdout)
        except json.JSONDecodeError:
            return None

    def supports(self, option: str, *command: str) -> bool:
        """Whether `qlab COMMAND` takes ``option`` (the command line is being reworked alongside)."""
        if command not in self._help:
            result = self.run(*command, "--help")
            self._help[command] = result.stdout if result is not None else ""
        return option in self._help[command].split()

    def ours(self) -> list[Proc]:
        """Every live process carrying this soak's marker, except this one."""
        return [p for p in all_procs().values() if p.pid != os.getpid() and has_marker(p.pid, self.marker)]

    def sweep(self, timeout: float = 10.0) -> None:
        """Kill everything of ours that still runs, and reap our own children."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for managed in self.procs.values():
                send_group(managed.pid, signal.SIGCONT)
                send_group(managed.pid, signal.SIGKILL)
            left = self.ours()
            for proc in left:
                send(proc.pid, signal.SIGCONT)
                send(proc.pid, signal.SIGKILL)
            for managed in self.procs.values():
                managed.proc.poll()
            if not left:
                return
            time.sleep(0.1)


# ---- watching the cluster from outside ----


class StatusPoller:
    """`qlab status --json` on a thread, every second (or faster while someone waits on it).

    On a thread because a command may block for as long as a paused process
    holds the store's lock, and the soak's loop must never wait on that.
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._latest: tuple[float, dict[str, Any]] | None = None
        self._latest_began = 0.0
        self._lock = threading.Lock()
        self._hurry = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def hurry(self) -> None:
        """Poll every 0.3 s until the next poll: someone waits for what it shows."""
        self._hurry.set()

    def latest(self) -> tuple[float, dict[str, Any]] | None:
        """(monotonic time the command returned, its output) of the last successful poll."""
        with self._lock:
            return self._latest

    def look(self) -> tuple[float, float, dict[str, Any]] | None:
        """(when it began, when it returned, its output) of the last successful poll, read together."""
        with self._lock:
            return None if self._latest is None else (self._latest_began, *self._latest)

    def latest_began(self) -> float:
        """When the command behind ``latest()`` began: what it shows was read after that, and before it returned."""
        with self._lock:
            return self._latest_began

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            data = self.cluster.json("status", "--json")
            if isinstance(data, dict):
                with self._lock:
                    self._latest, self._latest_began = (time.monotonic(), data), began
            fast = self._hurry.is_set()
            self._hurry.clear()
            self._stop.wait(0.3 if fast else 1.0)


def leader_of(status: dict[str, Any], excluded: set[int]) -> dict[str, Any] | None:
    """The leading director that published last, skipping ``excluded`` pids."""
    leaders = [d for d in status.get("directors", []) if d.get("role") == "leader" and d.get("pid") not in excluded]
    return max(leaders, key=lambda d: d.get("last_seen", 0), default=None)


class ProcessWatch:
    """Leaks and zombies among the soak's processes, from /proc.

    - a process of ours re-parented to init (pid 1): it outlived its parent;
    - a strategy's helper alive after the child that started it ended (every
      exit path must end the child's whole process group);
    - a zombie whose parent is one of ours, not reaped;
    - at the end, anything of ours still running, and any recorded strategy
      process left a zombie.
    Each gets LEAK_GRACE seconds first: signals and reaping take a moment.
    """

    def __init__(self, cluster: Cluster, report: Callable[[str, str | None, str], None]) -> None:
        self.cluster = cluster
        self.report = report
        # The soak stands where systemd would: orphans of a killed worker come to it, not to
        # whatever pid 1 is here (a sandbox's init may never reap), and it reaps them.
        become_subreaper()
        self.identity: dict[int, int] = {}  #: pid -> start time, of every runner and helper seen
        self.helpers: dict[tuple[int, int], Runner] = {}  #: helper (pid, start) -> the runner that started it
        self._first_seen: dict[tuple[int, int], float] = {}
        self._reported: set[tuple[str, int, int]] = set()

    def remember(self, runner: Runner) -> None:
        """Note a new runner's process (and its helper's) while it runs, so a reused pid is never mistaken for it."""
        helper = next(iter(host_pids(runner.pid, [runner.helper])), None) if runner.helper is not None else None
        for pid in (runner.pid, helper):
            if pid is not None and pid not in self.identity and (proc := read_proc(pid)) is not None:
                self.identity[pid] = proc.start
        if helper is not None and helper in self.identity:
            self.helpers[(helper, self.identity[helper])] = runner

    def same_process(self, pid: int) -> bool:
        """Whether ``pid`` is still the runner or helper first seen under that pid, alive."""
        proc = read_proc(pid)
        return proc is not None and proc.state != "Z" and self.identity.get(pid) == proc.start

    def _reap_orphans(self) -> None:
        """Reap zombies re-parented to the soak: strategy processes, each in a session of its own.

        Never the soak's own children: the qlab processes it manages and its `qlab` commands
        (which stay in the soak's session) are reaped by their Popen.
        """
        managed = {m.proc.pid for m in self.cluster.procs.values()}
        own_session = os.getsid(0)
        for proc in all_procs().values():
            if proc.state != "Z" or proc.ppid != os.getpid() or proc.pid in managed:
                continue
            if proc.session != own_session:
                try:
                    os.waitpid(proc.pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def scan(self, now: float, final: bool = False) -> None:
        self._reap_orphans()
        procs = all_procs()
        ours = {pid for pid in procs if pid != os.getpid() and has_marker(pid, self.cluster.marker)}
        for pid in ours:
            why = "still running after the run ended" if final else self._leak(procs[pid])
            if why and self._lasted(procs[pid], now, final):
                self._report("process-leak", procs[pid], why)
        parents = ours | {m.pid for m in self.cluster.procs.values()}
        for proc in procs.values():
            if proc.state == "Z" and proc.ppid in procs and procs[proc.ppid].state == "T" and not final:
                # A paused parent cannot reap: its grace starts once it runs again.
                self._first_seen.pop((proc.pid, proc.start), None)
                continue
            if proc.state == "Z" and proc.ppid in parents and proc.ppid != os.getpid() and self._lasted(proc, now, final):
                parent = procs[proc.ppid].cmdline[:60] if proc.ppid in procs else "?"
                self._report("zombie", proc, f"a zombie child of pid {proc.ppid} ({parent}), not reaped")
        if final:
            for pid, start in self.identity.items():
                left = read_proc(pid)
                if left is not None and left.start == start and left.state == "Z":
                    self._report("zombie", left, "a strategy process left a zombie after the run")

    def _leak(self, proc: Proc) -> str:
        managed = {m.proc.pid for m in self.cluster.procs.values()}
        # The soak's own `qlab` commands stay in its session and are its children: not orphans,
        # however long one takes (on a busy machine a command can take seconds).
        orphan = proc.ppid == os.getpid() and proc.pid not in managed and proc.session != os.getsid(0)
        if proc.ppid == 1 or orphan:
            return "re-parented to the soak (where init would be): it outlived its parent"
        runner = self.helpers.get((proc.pid, proc.start))
        if runner is not None and proc.state != "Z" and not self.same_process(runner.pid):
            return f"helper of {runner.strategy} pid {runner.pid}, which has ended"
        return ""

    def _lasted(self, proc: Proc, now: float, final: bool) -> bool:
        first = self._first_seen.setdefault((proc.pid, proc.start), now)
        return final or now - first > LEAK_GRACE

    def _report(self, kind: str, proc: Proc, why: str) -> None:
        key = (kind, proc.pid, proc.start)
        if key in self._reported:
            return
        self._reported.add(key)
        runner = self.helpers.get((proc.pid, proc.start))
        whose = f" [helper of {runner.strategy} pid {runner.pid}]" if runner else ""
        self.report(kind, runner.strategy if runner else None, f"pid {proc.pid} ppid {proc.ppid} state {proc.state} `{proc.cmdline[:90]}`{whose}: {why}")
