"""What one strategy can do to its neighbours on a worker: a flood of messages, and a paused zygote.

Both run on one real director and worker: ``n`` strategies ticking at 10 Hz,
each printing the monotonic time of every tick to its own log (a strategy in
its sandbox writes nothing else), from which their gaps between ticks are
read afterwards. The worker runs with a 3 s lease, so a loop stalled 2.4 s
loses it.

- **Flood beside n**: one more strategy sends ctx.send's frames in a loop
  straight onto its connection, past the child's own check, as a hostile
  strategy would: the worker's budget is what holds it.
- **Paused zygote**: the zygote is SIGSTOPped and a strategy restarted, so the
  worker owes that strategy a fork the zygote does not answer.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import msgspec

from quantlab import control
from quantlab.protocol import LIMITS
from quantlab.worker.intake import QUIET

from bench_common import Rate, Row
from bench_fleet import QUIET as QUIET_STRATEGY, Fleet, poll

INTERVAL = 0.1  #: the neighbours' tick interval (s): 10 Hz

#: Prints the monotonic time of each tick to its log (one host: one CLOCK_MONOTONIC).
TICKER = '''
import time
def st_init(ctx): pass
def st_heartbeat(ctx, tick):
    print(f"tick {time.monotonic():.6f}", flush=True)
def st_exit(ctx, reason): pass
'''

#: Past ctx.send's own check: Log frames straight onto its connection, half a second each tick.
FLOODER = '''
import gc, msgspec, time
from quantlab.child.runner import Connection
def st_init(ctx): pass
def st_heartbeat(ctx, tick):
    conn = next(o for o in gc.get_objects() if isinstance(o, Connection))
    frame = msgspec.msgpack.encode({"type": "log", "data": {"spam": tick.seq}})
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        for _ in range(100):
            conn.socket.send(frame)
def st_exit(ctx, reason): pass
'''

TICK = re.compile(r"^tick (\d+\.\d+)$", re.MULTILINE)


class FloodFigures(msgspec.Struct):
    seconds: float  #: how long the flooder flooded (its neighbours' gaps are measured meanwhile)
    gap_p99: float  #: the neighbours' gaps between ticks (s)
    gap_max: float
    gaps: int  #: how many gaps were measured
    leases_lost: int
    events: int  #: the flooder's strategy_message and over_budget events
    dropped: int  #: its messages the worker dropped over its budget (the over_budget events' counts)
    lived: float  #: seconds from the flooder's assignment to its removal
    bound: int  #: the most the worker's budget lets a strategy write in ``lived``


class PauseFigures(msgspec.Struct):
    paused: float  #: seconds the zygote was stopped
    replaced_after: float  #: seconds from the restart request to a new zygote
    delay_max: float  #: the neighbours' largest gap between ticks less their interval (s)
    gaps: int
    leases_lost: int


def event_bound(seconds: float) -> int:
    """The events a strategy may write in ``seconds`` (quantlab/worker/intake.py): its ctx.send
    budget, and one over_budget event a burst (bursts are QUIET seconds apart at least)."""
    return LIMITS.send.burst + math.ceil((LIMITS.send.rate + 1 / QUIET) * seconds) + 1


class Neighbourhood:
    """A fleet of ``n`` tickers at 10 Hz, a flooder and a victim to restart, on one worker."""

    def __init__(self, qlab_cmd: str, tmp: Path, n: int) -> None:
        home = tmp / "home-isolation"
        home.mkdir(mode=0o700)
        self.files = tmp / "isolation"  # outside the home: each strategy gets its sandbox's file rules
        self.files.mkdir()
        for name, text in (("ticker", TICKER), ("flooder", FLOODER), ("quiet", QUIET_STRATEGY)):
            (self.files / f"{name}.py").write_text(text)
        self.ids = [f"tick{i:03d}" for i in range(n)]
        self.fleet = Fleet([qlab_cmd, "--home", str(home)], home, max_strategies=n + 10,
                           worker_args=("--lease-ttl", "3", "--drain-timeout", "1"))
        self.flood_assigned = 0.0

    def assign(self, work_id: str, name: str, interval: float, **options: Any) -> None:
        request = control.AssignRequest(file=str(self.files / f"{name}.py"), id=work_id, interval=interval, **options)
        control.assign(self.fleet.store, request)

    def start(self) -> None:
        """The tickers, the victim and the flooder started together; back once the tickers tick and it floods."""
        for work_id in self.ids:
            self.assign(work_id, "ticker", INTERVAL)
        self.assign("victim", "quiet", 1.0, backoff=0.0)
        self.flood_assigned = time.monotonic()
        self.assign("flood", "flooder", INTERVAL, backoff=0.5, max_errors=10_000)  # faulty again and again
        # Ticks read from the logs: the store's heartbeat counts lag, written a second at a time.
        poll(lambda: all(len(self.ticks(i)) >= 3 for i in self.ids) and self.running("victim") and self.running("flood"),
             timeout=120, step=0.05)

    def running(self, work_id: str) -> bool:
        result = self.fleet.store.get_work(work_id).result
        return result.status == "running" and result.pid is not None

    def ticks(self, work_id: str) -> list[float]:
        path = self.fleet.home / "logs" / "strategies" / f"{work_id}.log"
        return [float(t) for t in TICK.findall(path.read_text())] if path.exists() else []

    def gaps(self, start: float, end: float) -> list[float]:
        """Every ticker's gaps between two ticks that came between ``start`` and ``end`` (monotonic)."""
        out: list[float] = []
        for work_id in self.ids:
            during = [t for t in self.ticks(work_id) if start <= t <= end]
            out.extend(b - a for a, b in itertools.pairwise(during))
        return out

    def leases_lost(self) -> int:
        events, _ = self.fleet.store.read_events()
        return sum(1 for e in events if e.kind == "lease_lost")

    def flood(self, seconds: float) -> FloodFigures:
        """The tickers' gaps over ``seconds`` of the flood, then the flooder removed and its events counted."""
        lost = self.leases_lost()
        start = time.monotonic()
        time.sleep(seconds)
        end = time.monotonic()
        control.remove(self.fleet.store, "flood")
        poll(lambda: self.fleet.store.find_work("flood") is None, timeout=60, step=0.02)
        ran = time.monotonic() - self.flood_assigned  # the flooder's whole life, from its assignment to its removal
        time.sleep(max(0.5, end + 0.5 - time.monotonic()))  # its last events, and the tickers' ticks after the end
        events, _ = self.fleet.store.read_events()
        written = [e for e in events if e.strategy == "flood" and e.kind in ("strategy_message", "over_budget")]
        dropped = sum(int(e.detail.split()[1]) for e in written if e.kind == "over_budget")  # "dropped N messages ..."
        gaps = sorted(self.gaps(start, end + 0.5))
        return FloodFigures(end - start, quantile(gaps, 0.99), gaps[-1], len(gaps), self.leases_lost() - lost,
                            len(written), dropped, ran, event_bound(ran))

    def pause_zygote(self, seconds: float) -> PauseFigures:
        """The zygote SIGSTOPped for ``seconds`` (0: until it is replaced) while the victim restarts."""
        lost = self.leases_lost()
        zygote = self.fleet.zygote()
        assert zygote is not None
        old_child = self.fleet.store.get_work("victim").result.pid
        os.kill(zygote.pid, signal.SIGSTOP)
        paused = time.monotonic()
        try:
            control.restart(self.fleet.store, "victim")
            asked = time.monotonic()
            poll(lambda: (z := self.fleet.zygote()) is not None and z.pid != zygote.pid, timeout=60, step=0.01)
            replaced = time.monotonic()
            time.sleep(max(0.0, paused + seconds - time.monotonic()))
        finally:
            try:
                os.kill(zygote.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass  # the worker killed it: the replacement is what it was waiting for
        resumed = time.monotonic()
        poll(lambda: (w := self.fleet.store.get_work("victim")).result.pid not in (None, old_child)
             and w.result.status == "running", timeout=60, step=0.01)
        time.sleep(0.5)  # the tickers' ticks after the pause
        gaps = self.gaps(paused, time.monotonic())
        return PauseFigures(resumed - paused, replaced - asked, max(gaps) - INTERVAL, len(gaps),
                            self.leases_lost() - lost)

    def close(self) -> None:
        self.fleet.close()


def quantile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted values, by nearest rank."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def measure(qlab_cmd: str, tmp: Path, n: int, flood_seconds: float, pause_seconds: float) -> tuple[FloodFigures, PauseFigures]:
    """Both figures on one fleet of ``n`` tickers: the flood first, then the paused zygote."""
    place = Neighbourhood(qlab_cmd, tmp, n)
    try:
        place.start()
        flood = place.flood(flood_seconds)
        return flood, place.pause_zygote(pause_seconds)
    finally:
        place.close()


def rows(qlab_cmd: str, tmp: Path, quick: bool) -> Iterator[Row]:
    """scripts/bench.py's rows: 50 neighbours, a 20 s flood and a 10 s pause (quick: 10, 2 s, until replaced)."""
    n = 10 if quick else 50
    flood, pause = measure(qlab_cmd, tmp, n, 2.0 if quick else 20.0, 0.0 if quick else 10.0)
    beside = f"flood beside {n} at 10 Hz for {flood.seconds:.0f} s (lease 3 s)"
    yield Rate(f"{beside}: the {n}'s gap between ticks, p99", flood.gap_p99 * 1e3, flood.gaps, unit="ms")
    yield Rate(f"{beside}: the {n}'s largest gap between ticks", flood.gap_max * 1e3, flood.gaps, unit="ms")
    yield Rate(f"{beside}: leases the worker lost", flood.leases_lost, 1, unit="")
    yield Rate(f"{beside}: events the flooder wrote (strategy_message + over_budget), its budget's bound "
               f"for its {flood.lived:.0f} s: {flood.bound}", flood.events, 1, unit="")
    yield Rate(f"{beside}: the flooder's messages the worker dropped over its budget", flood.dropped, 1, unit="")
    stopped = f"zygote SIGSTOPped {pause.paused:.0f} s as a strategy restarts, beside {n} at 10 Hz"
    yield Rate(f"{stopped}: largest delay of another's tick (gap - 100 ms)", pause.delay_max * 1e3, pause.gaps, unit="ms")
    yield Rate(f"{stopped}: zygote replaced after, from the restart", pause.replaced_after, 1, unit="s")
    yield Rate(f"{stopped}: leases the worker lost", pause.leases_lost, 1, unit="")
