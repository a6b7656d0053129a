"""The fleet figures, on a real director and worker: what a desk running 100-200 strategies sees.

Each function yields rows for scripts/bench.py's table. A ``Fleet`` is a
`qlab` director and worker on a temporary home, the worker serving Prometheus
metrics so the load figures (heartbeats, overruns, tick latency) come from
the worker's own counters, not from an outside observer.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import msgspec
import psutil
import zmq

from quantlab.config import Paths
from quantlab.store.open import open_store
from quantlab.store.store import Store

QUIET = '''
def st_init(ctx): pass
def st_heartbeat(ctx, tick): pass
def st_exit(ctx, reason): pass
'''

#: Changes ctx.state on every tick: each heartbeat carries a state to commit.
BUSY = '''
def st_init(ctx):
    ctx.state["n"] = 0
def st_heartbeat(ctx, tick):
    ctx.state["n"] = tick.seq
def st_exit(ctx, reason):
    pass
'''

#: Keeps the largest gap between two of its ticks, once it has had 30 (after its start settled).
GAPS = '''
import time
def st_init(ctx):
    ctx.state.update(gap=0.0, seen=0, last=0.0)
def st_heartbeat(ctx, tick):
    now = time.monotonic()
    if ctx.state["seen"] >= 30:
        ctx.state["gap"] = max(ctx.state["gap"], now - ctx.state["last"])
    ctx.state["last"] = now
    ctx.state["seen"] += 1
def st_exit(ctx, reason):
    pass
'''


def poll(check: Callable[[], object], timeout: float = 60.0, step: float = 0.005) -> object:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(step)
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fleet:
    """A director and one worker (``max_strategies`` slots, metrics served, ``worker_args`` added) on ``home``."""

    def __init__(self, qlab: list[str], home: Path, *, metrics: bool = False, max_strategies: int = 250,
                 worker_args: tuple[str, ...] = ()) -> None:
        self.qlab, self.home = qlab, home
        self.store: Store = open_store(Paths(home))
        self.port = free_port()
        worker = ("worker", "start", "--region", "JP", "--id", "fleet", "--max-strategies", str(max_strategies),
                  *(("--metrics-port", str(self.port)) if metrics else ()), *worker_args)
        self.director = self._start("director", "start", "--heartbeat", "1")
        self.worker = self._start(*worker)
        poll(lambda: self.store.find_resource("fleet"))

    def _start(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*self.qlab, *args], stderr=subprocess.DEVNULL, start_new_session=True)

    def run(self, *args: str) -> None:
        subprocess.run([*self.qlab, *args], check=True, capture_output=True)

    def manifest(self, file: Path, ids: list[str], interval: float, **extra: object) -> Path:
        path = self.home / "fleet.toml"
        options = "".join(f"{k} = {v!r}\n" for k, v in extra.items())
        path.write_text(f'[defaults]\nfile = "{file}"\ninterval = {interval}\n{options}'
                        + "".join(f"[strategies.{i}]\n" for i in ids))
        return path

    def apply_until_beating(self, file: Path, ids: list[str], timeout: float) -> float:
        """Seconds from `qlab apply` of ``ids`` running ``file`` at 1 Hz until each has a heartbeat."""
        start = time.perf_counter()
        self.run("apply", str(self.manifest(file, ids, 1.0)))
        poll(lambda: self.beating(ids), timeout=timeout, step=0.05)
        return time.perf_counter() - start

    def beating(self, ids: list[str], count: int = 1) -> bool:
        works = {w.id: w for w in self.store.list_works()}
        return all(i in works and works[i].result.heartbeats >= count for i in ids)

    def children(self) -> list[psutil.Process]:
        """The strategy children (the worker's children but the zygote)."""
        zygote = self.zygote()
        return [c for c in psutil.Process(self.worker.pid).children() if zygote is None or c.pid != zygote.pid]

    def zygote(self) -> psutil.Process | None:
        for child in psutil.Process(self.worker.pid).children():
            try:
                cmdline = " ".join(child.cmdline())
            except psutil.Error:
                continue  # a strategy child that has just ended (a zombie until the worker reaps it)
            # Its process title ("qlab zygote ID"), or without setproctitle its command line.
            if any(name in cmdline for name in ("qlab zygote", "quantlab.worker.zygote")):
                return child
        return None

    def metrics(self) -> dict[str, float]:
        """The worker's Prometheus samples, by name with labels."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def close(self) -> None:
        for proc in (self.worker, self.director):
            proc.send_signal(signal.SIGTERM)
        for proc in (self.worker, self.director):
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.store.close()


def timed_runs(cmd: list[str], n: int) -> list[float]:
    """``cmd`` run ``n`` times (after one warm-up run), seconds each: a hyperfine-like measure.

    Bytecode caches are allowed (an installed package has them): the warm-up writes any missing.
    """
    return timed_each([cmd] * (n + 1))[1:]


def timed_each(cmds: list[list[str]]) -> list[float]:
    """Each of ``cmds`` run once, in order, seconds each; bytecode caches allowed, as in ``timed_runs``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    samples = []
    for cmd in cmds:
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        samples.append(time.perf_counter() - start)
    return samples


def uss_pss(proc: psutil.Process) -> tuple[float, float]:
    info = proc.memory_full_info()
    return info.uss, info.pss


def quantile_from_buckets(buckets: list[tuple[float, float]], q: float) -> float:
    """The ``q`` quantile of a Prometheus histogram (upper bound, cumulative count), interpolated in its bucket."""
    total = buckets[-1][1]
    if total <= 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            share = (rank - below) / (count - below) if count > below else 1.0
            return lower + (upper - lower) * share
        lower, below = upper, count
    return lower


def latency_buckets(before: dict[str, float], after: dict[str, float]) -> list[tuple[float, float]]:
    """Tick latency bucket counts over a window (the difference of two scrapes)."""
    out = []
    prefix = 'quantlab_tick_latency_seconds_bucket{le="'
    for name, value in after.items():
        if name.startswith(prefix):
            bound = name[len(prefix):-2]
            out.append((float(bound), value - before.get(name, 0.0)))
    return sorted(out)


def worker_cpu(fleet: Fleet, seconds: float) -> Callable[[], float]:
    """Start measuring the worker's CPU; the returned function gives % of one core since."""
    proc = psutil.Process(fleet.worker.pid)
    before, start = sum(proc.cpu_times()[:2]), time.monotonic()
    return lambda: 100.0 * (sum(proc.cpu_times()[:2]) - before) / (time.monotonic() - start)


def bench_cli(qlab: list[str], n: int) -> Iterator[tuple[str, list[float]]]:
    yield "python -c pass (interpreter and site, for reference)", timed_runs([sys.executable, "-c", "pass"], n)
    yield "qlab --help", timed_runs([qlab[0], "--help"], n)  # as typed: the help needs no home
    yield "qlab status --json, 100 strategies", timed_runs([*qlab, "status", "--json"], n)


ASSIGNS = 50  #: `qlab strategy assign` runs in a row, each of a new strategy
FEW = 3  #: the strategies `qlab status` draws


def bench_operator(qlab_cmd: str, n: int) -> tuple[list[float], list[float]]:
    """An operator's commands on a home of their own, no daemon running: ``n`` runs of `qlab status` (the
    table) with FEW strategies, then ASSIGNS runs of `qlab strategy assign` in a row; seconds each."""
    with tempfile.TemporaryDirectory(prefix="qlab-operator-") as folder:
        home = Path(folder) / "home"
        home.mkdir(mode=0o700)
        file = Path(folder) / "quiet.py"
        file.write_text(QUIET)
        qlab = [qlab_cmd, "--home", str(home)]
        assigns = [[*qlab, "strategy", "assign", str(file), "--id", f"s{i:02d}"] for i in range(FEW + ASSIGNS)]
        timed_each(assigns[:FEW])  # also the warm-up: any missing bytecode cache is written
        status = timed_runs([*qlab, "status"], n)
        return status, timed_each(assigns[FEW:])


class LoadFigures(msgspec.Struct):
    ticks_per_s: float
    overrun_pct: float  #: ticks the schedule owed and did not deliver, % of them
    cpu_pct: float  #: the worker process, % of one core
    p50: float  #: tick round trip, seconds
    p99: float


def bench_load(fleet: Fleet, file: Path, n: int, seconds: float, interval: float = 0.1) -> LoadFigures:
    """``n`` strategies at 10 Hz, each changing ctx.state every tick, measured over ``seconds``."""
    ids = [f"load{i:03d}" for i in range(n)]
    fleet.run("apply", str(fleet.manifest(file, ids, interval)), "--prune")
    poll(lambda: fleet.beating(ids, 20), timeout=120, step=0.05)
    before, cpu = fleet.metrics(), worker_cpu(fleet, seconds)
    start = time.monotonic()
    time.sleep(seconds)
    after, used, elapsed = fleet.metrics(), cpu(), time.monotonic() - start
    beats = after["quantlab_heartbeats_total"] - before["quantlab_heartbeats_total"]
    buckets = latency_buckets(before, after)
    # Overruns as the ticks the schedule owed and did not deliver: the worker's own overrun counter
    # sees only ticks that came due while one was in flight, not a loop that fell behind.
    owed = n * elapsed / interval
    return LoadFigures(beats / elapsed, max(0.0, 100.0 * (1 - beats / owed)), used,
                       quantile_from_buckets(buckets, 0.5), quantile_from_buckets(buckets, 0.99))


class StartBeside(msgspec.Struct):
    seconds: float  #: ``qlab apply`` of the new ones until all of them heartbeat
    gap_median: float  #: the running strategies' largest gap between two ticks meanwhile, median of them
    gap_max: float


def bench_start_beside(fleet: Fleet, gaps: Path, quiet: Path, running: int = 100, new: int = 100) -> StartBeside:
    """``new`` strategies started beside ``running`` ones ticking at 10 Hz: how late the running ones' ticks went."""
    run_ids, new_ids = [f"run{i:03d}" for i in range(running)], [f"new{i:03d}" for i in range(new)]
    path = fleet.manifest(gaps, run_ids, 0.1)
    fleet.run("apply", str(path), "--prune")
    poll(lambda: fleet.beating(run_ids, 40), timeout=120, step=0.05)
    with path.open("a") as manifest:
        manifest.write("".join(f'[strategies.{i}]\nfile = "{quiet}"\ninterval = 1.0\n' for i in new_ids))
    start = time.monotonic()
    fleet.run("apply", str(path))
    poll(lambda: fleet.beating(new_ids), timeout=120, step=0.01)
    seconds = time.monotonic() - start
    time.sleep(0.5)  # the running ones' states of the ticks after the start: each has had a few since
    found = [fleet.store.load_state(i) for i in run_ids]
    largest = sorted(msgspec.json.decode(bytes(s.state))["gap"] for s in found if s is not None)
    return StartBeside(seconds, median(largest), largest[-1])


ECHO = """
import sys, zmq
socket = zmq.Context().socket(zmq.DEALER)
socket.connect(sys.argv[1])
socket.send(b"hello")
while (message := socket.recv()) != b"end":
    socket.send(message)
"""


def zmq_floor(rounds: int, gap: float = 0.01) -> list[float]:
    """Round trips of a bare pyzmq ROUTER/DEALER ping-pong between two processes, one every ``gap`` s.

    The floor under the tick round trip: the same sockets and ipc:// transport with no
    worker and no strategy around them, each side idle between pings as a strategy's child
    is between ticks (each round trip wakes four threads: both ends and both I/O threads).
    """
    with tempfile.TemporaryDirectory(prefix="qlab-floor-") as folder:
        endpoint = f"ipc://{folder}/echo"
        router = zmq.Context.instance().socket(zmq.ROUTER)
        router.bind(endpoint)
        echo = subprocess.Popen([sys.executable, "-c", ECHO, endpoint])
        try:
            peer, _ = router.recv_multipart()
            samples = []
            for _ in range(rounds):
                time.sleep(gap)
                started = time.perf_counter()
                router.send_multipart([peer, b"tick"])
                router.recv_multipart()
                samples.append(time.perf_counter() - started)
            router.send_multipart([peer, b"end"])
            echo.wait(10)
        finally:
            if echo.poll() is None:
                echo.kill()
                echo.wait()
            router.close(linger=0)
    return samples


def bench_kill(fleet: Fleet, file: Path, n: int) -> list[float]:
    """Child SIGKILL to the new child's first heartbeat (backoff 0), ``n`` times."""
    fleet.run("apply", str(fleet.manifest(file, ["victim"], 60.0, backoff=0.0, max_errors=10_000)), "--prune")
    poll(lambda: fleet.beating(["victim"]), timeout=60)
    return kill_to_heartbeat(fleet.store, "victim", n)


def kill_to_heartbeat(store: Store, work_id: str, n: int) -> list[float]:
    """SIGKILL the strategy's child ``n`` times; seconds from each kill to the new child's first heartbeat."""
    samples = []
    for _ in range(n):
        pid = store.get_work(work_id).result.pid
        assert pid
        killed = time.time()
        os.kill(pid, signal.SIGKILL)
        first = poll(lambda: (w := store.get_work(work_id)).result.pid not in (None, pid)
                     and (w.result.last_heartbeat or 0) > killed and w.result.last_heartbeat, step=0.001)
        samples.append(float(first) - killed)  # type: ignore[arg-type]
    return samples


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
