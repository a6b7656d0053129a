"""A thousand idle strategies on one worker: what the worker, the children and the director cost.

    python scripts/bench_thousand.py [--strategies 1000] [--seconds 20]

Each strategy ticks at 1 Hz and counts its ticks in ``ctx.state`` (so every
heartbeat carries a state to commit). The figures: ``qlab apply`` of all of
them until every one has a heartbeat; the worker's, the children's and the
director's CPU over ``--seconds`` of steady state (% of one core); the
memory of everything (proportional set size, so pages shared between the
zygote's children count once) and a child's own (USS, median); ``qlab
status --json``; and the worker's SIGTERM until it has exited. Then, apart:
20 strategies started at once on a paper account limited to 2 calls a
second, each reconciling it before its start.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import msgspec
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from bench_common import qlab_args  # noqa: E402
from bench_fleet import Fleet, timed_runs, uss_pss  # noqa: E402
from tests.conftest import COUNTER  # noqa: E402  (counts its ticks in ctx.state: every heartbeat has a state to commit)


class Thousand(msgspec.Struct):
    strategies: int
    apply_s: float  #: `qlab apply` until every strategy has a heartbeat
    worker_cpu: float  #: % of one core, steady state
    children_cpu: float  #: all children together
    director_cpu: float
    pss_mb: float  #: everything: director, worker, zygote, children
    child_uss_mb: float  #: median
    status_ms: float  #: `qlab status --json`, median of 5
    sigterm_s: float  #: the worker's SIGTERM until it exited


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid``, exact (the scheduler's nanoseconds, /proc/PID/task/*/schedstat).

    Not the tick-sampled user and system times: a thousand children that each run a fraction of a
    millisecond a second are mostly not running when a 10 ms tick samples them."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def cpu_meter(procs: Callable[[], list[psutil.Process]]) -> Callable[[], float]:
    """Start measuring the CPU of ``procs()`` (asked at both ends); the returned function gives % of one core since."""

    def used() -> float:
        total = 0.0
        for proc in procs():
            try:
                total += cpu_seconds(proc.pid)
            except OSError:
                continue
        return total

    before, start = used(), time.monotonic()
    return lambda: 100.0 * (used() - before) / (time.monotonic() - start)


def measure(n: int, seconds: float) -> Thousand:
    with tempfile.TemporaryDirectory(prefix="qlab-thousand-") as tmp:
        home = Path(tmp)
        fleet = Fleet(qlab_args(home, ""), home, max_strategies=n + 10)
        try:
            file = home / "counter.py"
            file.write_text(COUNTER)
            applied = fleet.apply_until_beating(file, [f"t{i:04d}" for i in range(n)], timeout=300)
            time.sleep(3)  # the starts' last writes and the first counts settle
            worker, director = psutil.Process(fleet.worker.pid), psutil.Process(fleet.director.pid)
            children = fleet.children()
            meters = [cpu_meter(lambda: [worker]), cpu_meter(lambda: children), cpu_meter(lambda: [director])]
            time.sleep(seconds)
            worker_cpu, children_cpu, director_cpu = (meter() for meter in meters)
            zygote = fleet.zygote()
            everyone = [director, worker, *([zygote] if zygote else []), *children]
            pss = sum(uss_pss(p)[1] for p in everyone) / 1e6
            child_uss = statistics.median(uss_pss(p)[0] for p in children) / 1e6
            status = statistics.median(timed_runs([*qlab_args(home, ""), "status", "--json"], 5)) * 1000
            start = time.perf_counter()
            fleet.worker.send_signal(signal.SIGTERM)
            fleet.worker.wait(120)
            sigterm = time.perf_counter() - start
        finally:
            fleet.close()
    return Thousand(n, applied, worker_cpu, children_cpu, director_cpu, pss, child_uss, status, sigterm)


#: Trades on nothing, but needs the paper account: each start reconciles it.
ON_PAPER = '''
ACCOUNTS = ["paper"]
def st_init(ctx): pass
def st_heartbeat(ctx, tick): pass
def st_exit(ctx, reason): pass
'''


def rate_limited_start(n: int = 20, calls_per_second: float = 2.0) -> float:
    """Seconds from `qlab apply` of ``n`` strategies on one paper account limited to ``calls_per_second``
    until every one has a heartbeat: each start reconciles the account first."""
    with tempfile.TemporaryDirectory(prefix="qlab-limited-") as tmp:
        home = Path(tmp)
        accounts = home / "env.jsonl"
        accounts.write_text(json.dumps({"name": "paper", "type": "paper", "rate_limit": calls_per_second}) + "\n")
        fleet = Fleet(qlab_args(home, ""), home, max_strategies=n + 10, worker_args=("--accounts", str(accounts)))
        try:
            file = home / "on_paper.py"
            file.write_text(ON_PAPER)
            return fleet.apply_until_beating(file, [f"p{i:02d}" for i in range(n)], timeout=120)
        finally:
            fleet.close()


def rows(figures: Thousand) -> Iterator[tuple[str, str, str]]:
    """(figure, value, target) of each row."""
    n = figures.strategies
    yield f"{n} idle at 1 Hz: `qlab apply` until all beat", f"{figures.apply_s:.1f} s", "≤ 6 s"
    yield f"{n} idle at 1 Hz: worker CPU", f"{figures.worker_cpu:.1f} % of a core", "≤ 20 %"
    yield f"{n} idle at 1 Hz: children together", f"{figures.children_cpu:.1f} %", "≤ 15 %"
    yield f"{n} idle at 1 Hz: director", f"{figures.director_cpu:.1f} %", ""
    yield f"{n} idle: memory, everything (PSS)", f"{figures.pss_mb:,.0f} MB", "≤ 2,000 MB"
    yield f"{n} idle: a child's own memory (USS, median)", f"{figures.child_uss_mb:.2f} MB", ""
    yield f"`qlab status --json` with {n}", f"{figures.status_ms:.0f} ms", "≤ 150 ms"
    yield f"worker SIGTERM with {n} until exit", f"{figures.sigterm_s:.1f} s", "≤ 3 s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    figures = measure(args.strategies, args.seconds)
    for name, value, target in rows(figures):
        print(f"{name:55} {value:20} {target}")
    print(msgspec.json.encode(figures).decode())
    print(f"{'20 starting on one account limited to 2 calls/s: all beat':55} {rate_limited_start():.1f} s{'':15} ≤ 3 s")


if __name__ == "__main__":
    main()
