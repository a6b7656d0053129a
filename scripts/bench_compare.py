"""quantlab and supervisord side by side, on the same machine in one run.

supervisord (the `supervisor` package) is installed by this script into its
own virtualenv under ~/.cache/qlab-bench (made once, then reused). Its
programs do the work of an idle strategy: a Python process that says it is
up (it writes its pid to a file, the counterpart of a first heartbeat) and
then sleeps a second at a time. quantlab runs a strategy whose hooks do
nothing, at a 1 s interval.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import msgspec
import psutil

import bench_isolation
from bench_fleet import (ASSIGNS, BUSY, FEW, GAPS, QUIET, Fleet, bench_cli, bench_kill, bench_load, bench_operator,
                         bench_start_beside, median, poll, uss_pss, zmq_floor)

VENV = Path.home() / ".cache" / "qlab-bench" / "supervisor"

PROGRAM = '''
import os, sys, time
ready = os.path.join(sys.argv[1], sys.argv[2])
with open(ready + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(ready + ".tmp", ready)
while True:
    time.sleep(1)
'''

CONFIG = """
[unix_http_server]
file={dir}/supervisor.sock
[supervisord]
logfile={dir}/supervisord.log
pidfile={dir}/supervisord.pid
childlogdir={dir}
nodaemon=true
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://{dir}/supervisor.sock
"""

PROGRAM_CONFIG = """
[program:{name}]
command={python} {dir}/program.py {dir}/ready {name}
autostart=false
autorestart=true
startsecs=0
startretries=1000000
stdout_logfile=NONE
redirect_stderr=true
"""


class Figure(msgspec.Struct):
    """One line of the table: quantlab's figure, supervisord's (or "-"), their ratio, the issue's target."""

    figure: str
    quantlab: str
    supervisord: str = "-"
    ratio: str = "-"
    target: str = "-"
    met: str = "-"


def row(figure: str, ours: float | str, theirs: float | str, unit: str = "") -> Figure:
    """A side-by-side figure where lower is better; the ratio says how many times better quantlab is."""

    def shown(v: float | str) -> str:
        return v if isinstance(v, str) else f"{v:.1f} {unit}".strip()

    ratio = "-"
    if isinstance(ours, float) and isinstance(theirs, float) and ours > 0 and theirs > 0:
        times = theirs / ours
        ratio = f"{times:.1f}x better" if times >= 1 else f"{1 / times:.1f}x worse"
    return Figure(figure, shown(ours), shown(theirs), ratio)


def ensure_supervisor() -> Path:
    """supervisord's virtualenv, made on first use; its bin/ folder."""
    bin_dir = VENV / "bin"
    if not (bin_dir / "supervisord").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(bin_dir / "pip"), "install", "-q", "supervisor"], check=True)
    return bin_dir


class Supervisord:
    """supervisord with ``n`` programs (not started) in ``folder``."""

    def __init__(self, bin_dir: Path, folder: Path, n: int) -> None:
        self.bin, self.dir, self.names = bin_dir, folder, [f"p{i:03d}" for i in range(n)]
        (folder / "ready").mkdir(parents=True)
        (folder / "program.py").write_text(PROGRAM)
        text = CONFIG.format(dir=folder) + "".join(
            PROGRAM_CONFIG.format(name=name, python=sys.executable, dir=folder) for name in self.names
        )
        self.config = folder / "supervisord.conf"
        self.config.write_text(text)
        self.proc = subprocess.Popen([str(bin_dir / "supervisord"), "-c", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        poll(lambda: self.ctl("pid").returncode == 0, timeout=30, step=0.05)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(self.bin / "supervisorctl"), "-c", str(self.config), *args], capture_output=True)

    def ready(self) -> dict[str, int]:
        out = {}
        for name in os.listdir(self.dir / "ready"):
            if not name.endswith(".tmp"):
                try:
                    out[name] = int((self.dir / "ready" / name).read_text())
                except (FileNotFoundError, ValueError):
                    continue
        return out

    def start(self, names: list[str]) -> float:
        """Seconds from `supervisorctl start` until every one of ``names`` said it is up."""
        began = time.perf_counter()
        self.ctl("start", *names)
        poll(lambda: all(n in self.ready() for n in names), timeout=120, step=0.002)
        return time.perf_counter() - began

    def stop_all(self) -> None:
        self.ctl("stop", "all")
        for name in os.listdir(self.dir / "ready"):
            (self.dir / "ready" / name).unlink()

    def restart_after_kill(self, name: str, n: int) -> list[float]:
        samples = []
        for _ in range(n):
            pid = self.ready()[name]
            (self.dir / "ready" / name).unlink()
            killed = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            poll(lambda: self.ready().get(name) not in (None, pid), timeout=30, step=0.001)
            samples.append(time.perf_counter() - killed)
        return samples

    def detects_hang(self, name: str, wait: float) -> bool:
        """SIGSTOP the program and wait: does supervisord replace it? (It has no notion of a hang.)"""
        pid = self.ready()[name]
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(wait)
            return self.ready().get(name) != pid or not psutil.pid_exists(pid)
        finally:
            os.kill(pid, signal.SIGCONT)

    def programs(self) -> list[psutil.Process]:
        return [c for c in psutil.Process(self.proc.pid).children()]

    def close(self) -> None:
        self.ctl("shutdown")
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def clear(fleet: Fleet, file: Path) -> None:
    """No strategy left in the fleet (and none of its children)."""
    empty = fleet.home / "empty.toml"
    empty.write_text("")
    fleet.run("apply", str(empty), "--prune")
    poll(lambda: not fleet.children() and not fleet.store.list_works(), timeout=60, step=0.02)


def quantlab_start(fleet: Fleet, file: Path, n: int) -> float:
    """Seconds from `qlab apply` of ``n`` strategies until all ``n`` heartbeat."""
    clear(fleet, file)
    ids = [f"c{i:03d}" for i in range(n)]
    manifest = fleet.manifest(file, ids, 1.0)
    began = time.perf_counter()
    fleet.run("apply", str(manifest))
    poll(lambda: fleet.beating(ids), timeout=120, step=0.002)
    return time.perf_counter() - began


def quantlab_hang(fleet: Fleet, file: Path, timeout: float) -> float:
    """A SIGSTOPped child: seconds until quantlab killed it and a new one heartbeats."""
    clear(fleet, file)
    fleet.run("apply", str(fleet.manifest(file, ["hung"], 0.2, heartbeat_timeout=timeout, backoff=0.0)))
    poll(lambda: fleet.beating(["hung"]), timeout=60)
    pid = fleet.store.get_work("hung").result.pid
    assert pid
    stopped = time.time()
    os.kill(pid, signal.SIGSTOP)
    first = poll(lambda: (w := fleet.store.get_work("hung")).result.pid not in (None, pid)
                 and (w.result.last_heartbeat or 0) > stopped and w.result.last_heartbeat, timeout=timeout * 4 + 10)
    return float(first) - stopped  # type: ignore[arg-type]


def memory(procs: list[psutil.Process]) -> tuple[float, float]:
    """Median USS and median PSS of ``procs`` (MB)."""
    figures = [uss_pss(p) for p in procs]
    return median([u for u, _ in figures]) / 1e6, median([p for _, p in figures]) / 1e6


def compare_restarts_starts_memory(fleet: Fleet, file: Path, sup: Supervisord, kills: int) -> Iterator[Figure]:
    """Restart after SIGKILL, starting 50 and 100, then memory with 100 idle programs on each side."""
    ours_kill = bench_kill(fleet, file, kills)
    sup.start(["p000"])
    theirs_kill = sup.restart_after_kill("p000", kills)
    sup.stop_all()
    yield row(f"restart after SIGKILL, median of {kills}", median(ours_kill) * 1000, median(theirs_kill) * 1000, "ms")
    for n in (50, 100):
        ours = quantlab_start(fleet, file, n)
        theirs = sup.start(sup.names[:n])
        if n == 50:
            sup.stop_all()
        start = row(f"start {n} (qlab apply / supervisorctl start, until all are up)", ours * 1000, theirs * 1000, "ms")
        if n == 100:
            start.target, start.met = "< 2000 ms", _met(ours < 2.0)
        yield start
    time.sleep(3)  # both settle: every program idle
    ours_uss, ours_pss = memory(fleet.children())
    theirs_uss, theirs_pss = memory(sup.programs())
    uss = row("USS per idle program, median of 100", ours_uss, theirs_uss, "MB")
    uss.target, uss.met = "< 2.5 MB", _met(ours_uss < 2.5)
    yield uss
    yield row("PSS per idle program, median of 100", ours_pss, theirs_pss, "MB")
    zygote = fleet.zygote()
    daemons = [psutil.Process(fleet.worker.pid), psutil.Process(fleet.director.pid), *([zygote] if zygote else [])]
    ours_daemons = sum(uss_pss(p)[1] for p in daemons) / 1e6
    theirs_daemons = uss_pss(psutil.Process(sup.proc.pid))[1] / 1e6
    pss = row("daemons PSS (worker+zygote+director / supervisord), 100 idle", ours_daemons, theirs_daemons, "MB")
    pss.target, pss.met = "< 40 MB", _met(ours_daemons < 40)
    yield pss
    sup.stop_all()


def compare_hang(fleet: Fleet, file: Path, sup: Supervisord, timeout: float) -> Figure:
    sup.start(["p000"])
    wait = timeout * 2 + 2
    detected = sup.detects_hang("p000", wait)
    sup.stop_all()
    ours = quantlab_hang(fleet, file, timeout)
    theirs = "restarted" if detected else f"not detected in {wait:g} s"
    return row(f"hang (SIGSTOP), heartbeat timeout {timeout:g} s: detected and restarted", f"{ours:.2f} s", theirs)


def _met(ok: bool) -> str:
    return "yes" if ok else "NO"


def cli_figures(qlab: list[str], runs: int) -> Iterator[Figure]:
    """CLI latency, hyperfine-like (one warm-up, then ``runs`` timed runs), with 100 strategies in the store;
    then an operator's assign and status table on a home of their own."""
    limits = {"qlab --help": 0.080, "qlab status --json, 100 strategies": 0.150}
    for name, samples in bench_cli(qlab, runs):
        figure = Figure(f"{name}, median of {runs}", f"{median(samples) * 1000:.1f} ms")
        if name in limits:
            figure.target, figure.met = f"< {limits[name] * 1000:.0f} ms", _met(median(samples) < limits[name])
        yield figure
    status, assigns = bench_operator(qlab[0], runs)
    yield _at_most(f"one `qlab strategy assign` as a process ({ASSIGNS} in a row, median)", assigns, 0.050)
    yield _at_most(f"`qlab status` (table), a few strategies ({FEW}), median of {runs}", status, 0.080)


def _at_most(figure: str, samples: list[float], limit: float) -> Figure:
    ms = median(samples) * 1000
    return Figure(figure, f"{ms:.1f} ms", target=f"<= {limit * 1000:.0f} ms", met=_met(ms <= limit * 1000))


def load_figures(qlab: list[str], home: Path, busy: Path, seconds: float) -> Iterator[Figure]:
    """The tick load on a worker serving metrics: 100 active strategies, 100 started beside them, then 200."""
    quiet, gaps = busy.with_name("quiet.py"), busy.with_name("gaps.py")
    gaps.write_text(GAPS)
    fleet = Fleet(qlab, home, metrics=True)
    try:
        floor = sorted(zmq_floor(int(min(seconds, 10.0) * 100)))
        yield Figure("for reference: bare pyzmq ROUTER/DEALER round trip, 10 ms apart: median / p99",
                     f"{median(floor) * 1e6:.0f} us / {floor[int(len(floor) * 0.99)] * 1e3:.2f} ms")
        active = bench_load(fleet, busy, 100, min(seconds, 10.0))
        yield Figure("tick round trip, 100 active at 10 Hz: median", f"{active.p50 * 1e6:.0f} us",
                     target="< 400 us", met=_met(active.p50 < 0.0004))
        yield Figure("tick round trip, 100 active at 10 Hz: p99", f"{active.p99 * 1e3:.2f} ms",
                     target="< 3 ms", met=_met(active.p99 < 0.003))
        beside = bench_start_beside(fleet, gaps, quiet)
        yield Figure("start 100 beside 100 running at 10 Hz: until all 100 heartbeat", f"{beside.seconds * 1000:.0f} ms")
        yield Figure("  meanwhile, the running ones' largest gap between ticks (100 ms apart): median / max",
                     f"{beside.gap_median * 1000:.0f} ms / {beside.gap_max * 1000:.0f} ms")
        load = bench_load(fleet, busy, 200, seconds)
        yield Figure(f"200 at 10 Hz, state changed every tick: ticks/s over {seconds:g} s",
                     f"{load.ticks_per_s:.0f} /s", target=">= 2000 /s", met=_met(load.ticks_per_s >= 1980))
        yield Figure("200 at 10 Hz: ticks owed but not delivered (overruns)", f"{load.overrun_pct:.2f} %",
                     target="< 1 %", met=_met(load.overrun_pct < 1.0))
        yield Figure("200 at 10 Hz: worker CPU, % of one core", f"{load.cpu_pct:.0f} %",
                     target="< 60 %", met=_met(load.cpu_pct < 60.0))
        yield Figure("200 at 10 Hz: tick round trip median / p99", f"{load.p50 * 1e6:.0f} us / {load.p99 * 1e3:.2f} ms")
    finally:
        fleet.close()


def isolation_figures(qlab_cmd: str, tmp: Path) -> Iterator[Figure]:
    """A flooding strategy beside 50 at 10 Hz for 20 s, then the zygote paused 10 s (scripts/bench_isolation.py)."""
    flood, pause = bench_isolation.measure(qlab_cmd, tmp, 50, 20.0, 10.0)
    yield Figure("flood beside 50 at 10 Hz: the 50's gap between ticks (100 ms apart), p99 / max",
                 f"{flood.gap_p99 * 1e3:.0f} ms / {flood.gap_max * 1e3:.0f} ms", target="p99 < 150 ms",
                 met=_met(flood.gap_p99 < 0.150))
    yield Figure("flood beside 50: leases the worker lost (lease 3 s)", str(flood.leases_lost), target="0",
                 met=_met(flood.leases_lost == 0))
    yield Figure(f"flood beside 50: events the flooder wrote (strategy_message + over_budget) in its {flood.lived:.0f} s",
                 str(flood.events), target=f"<= {flood.bound} (its budget)", met=_met(flood.events <= flood.bound))
    yield Figure(f"zygote paused {pause.paused:.0f} s as a strategy restarts: largest delay of another's tick",
                 f"{pause.delay_max * 1e3:.0f} ms", target="< 200 ms", met=_met(pause.delay_max < 0.200))
    yield Figure("  meanwhile: the zygote replaced after / leases the worker lost",
                 f"{pause.replaced_after:.1f} s / {pause.leases_lost}", target="0 lost", met=_met(pause.leases_lost == 0))


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(qlab_cmd: str, load_seconds: float, kills: int, cli_runs: int, json_path: str | None) -> None:
    """Everything, printed as one table (and written as JSON to ``json_path``)."""
    figures: list[Figure] = []

    def show(figure: Figure) -> None:
        figures.append(figure)
        print("| " + " | ".join(msgspec.structs.astuple(figure)) + " |", flush=True)

    started = _load()
    print(f"# load average (1, 5, 15 min) at start: {started}")
    print("| figure | quantlab | supervisord | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="qlab-compare-") as tmp_name:
        tmp = Path(tmp_name)
        quiet, busy = tmp / "quiet.py", tmp / "busy.py"
        quiet.write_text(QUIET)
        busy.write_text(BUSY)
        home, load_home = tmp / "home", tmp / "home-load"
        home.mkdir(mode=0o700)
        load_home.mkdir(mode=0o700)
        qlab = [qlab_cmd, "--home", str(home)]
        sup = Supervisord(ensure_supervisor(), tmp / "supervisord", 100)
        fleet = Fleet(qlab, home)
        try:
            for figure in compare_restarts_starts_memory(fleet, quiet, sup, kills):
                show(figure)
            for figure in cli_figures(qlab, cli_runs):
                show(figure)
            show(compare_hang(fleet, quiet, sup, 2.0))
            kill = bench_kill(fleet, quiet, kills)
            show(Figure(f"child SIGKILL -> new child's first heartbeat (backoff 0), median of {kills}",
                        f"{median(kill) * 1000:.1f} ms", target="< 20 ms", met=_met(median(kill) < 0.020)))
        finally:
            fleet.close()
            sup.close()
        for figure in load_figures([qlab_cmd, "--home", str(load_home)], load_home, busy, load_seconds):
            show(figure)
        for figure in isolation_figures(qlab_cmd, tmp):
            show(figure)
    ended = _load()
    print(f"# load average (1, 5, 15 min) at the end: {ended}")
    if json_path:
        Path(json_path).write_bytes(msgspec.json.encode({"figures": figures, "load_at_start": started, "load_at_end": ended}))
