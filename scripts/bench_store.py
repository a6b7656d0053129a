"""The store's figures: 10,000 Works placed, a worker heartbeat's round trips and time, failover after a SIGKILL.

Run by scripts/bench.py on both stores (--store: on a scratch PostgreSQL database).
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import msgspec
import psutil

from bench_common import Rate, Row, poll, qlab_args
from quantlab import control
from quantlab.config import Paths
from quantlab.store.open import open_store
from quantlab.store.records import Resource, StrategySpec, Work, WorkerSpec
from quantlab.store.store import Store
from quantlab.store.fenced import FencedStore


def _registered(resource: Resource, current: Resource | None) -> Resource:
    return resource


class FakeWorkers:
    """``n`` registered workers whose leases a thread renews every second, as live workers would."""

    def __init__(self, store: Store, n: int) -> None:
        self.store, self.ids = store, [f"fw{i:03d}" for i in range(n)]
        for wid in self.ids:
            spec = WorkerSpec(name=wid, region="JP", host="bench", pid=0, max_strategies=1000, accounts=["paper"],
                              instance=f"{wid}-bench")
            store.update_resource(wid, functools.partial(_registered, Resource(id=wid, spec=spec)))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._renew, daemon=True)
        self.thread.start()

    def _renew(self) -> None:
        fenced_store = FencedStore(self.store)
        while not self.stop.wait(1.0):
            for wid in self.ids:
                resource = self.store.find_resource(wid)
                if resource is not None:
                    fenced_store.update_resource_state(resource, msgspec.structs.replace(resource.state, last_seen=time.time()))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def cpu_percent(pid: int, seconds: float, children: bool = False) -> float:
    """Percent of one core used by ``pid`` (and its children) over ``seconds``."""
    def total() -> float:
        procs_ = [psutil.Process(pid)] + (psutil.Process(pid).children(recursive=True) if children else [])
        return sum(sum(p.cpu_times()[:2]) for p in procs_ if p.is_running())

    before, start = total(), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (total() - before) / (time.monotonic() - start)


def bench_scale(tmp: Path, file: Path, works: int, url: str = "", idle_seconds: float = 10.0) -> Iterator[Row]:
    """The store at scale: placing many Works, status, an idle director and an idle worker."""
    home = tmp / "scale"
    store = open_store(Paths(home, store_url=url))
    fake = FakeWorkers(store, 100)
    director = subprocess.Popen([*qlab_args(home, url), "director", "start", "--heartbeat", "1"],
                                stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        poll(lambda: store.find_leader())
        spec = StrategySpec(file=str(file), interval=60.0)
        for i in range(works):
            store.add_work(Work(id=f"s{i:05d}", spec=spec))
        last_add = time.monotonic()
        offset, placed = 0, 0
        while placed < works:
            events, offset = store.read_events(offset)
            placed += sum(1 for e in events if e.kind == "assigned")
            if time.monotonic() - last_add > 300:
                raise TimeoutError(f"only {placed} of {works} placed")
            time.sleep(0.05)
        yield Rate(f"{works} Works on 100 workers: placed, seconds after the last assign", time.monotonic() - last_add, works, unit="s")
        status = []
        for _ in range(5):
            start = time.perf_counter()
            subprocess.run([*qlab_args(home, url), "status", "--json"], check=True, capture_output=True)
            status.append(time.perf_counter() - start)
        yield Row(f"qlab status --json, {works} Works", status)
        yield Rate(f"idle director, {works} Works, 100 workers: % of a core", cpu_percent(director.pid, idle_seconds), 1, unit="%")
    finally:
        fake.close()
        director.send_signal(signal.SIGTERM)
        director.wait(30)
        store.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    """The unlabelled samples of a process's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if line and not line.startswith("#") and "{" not in name:
            out[name] = float(value)
    return out


def bench_worker_heartbeat(tmp: Path, url: str, seconds: float) -> Iterator[Row]:
    """One idle worker, alone on its store: its own count of statements sent (every one a round trip,
    counted where PgLink sends it) and its heartbeats' duration, from its /metrics over ``seconds``."""
    home = tmp / "heartbeat"
    port = _free_port()
    worker = subprocess.Popen(
        [*qlab_args(home, url), "worker", "start", "--region", "JP", "--id", "hb", "--heartbeat", "0.2",
         "--metrics-port", str(port)],
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        first = poll(lambda: _try_scrape(port).get("quantlab_worker_heartbeat_seconds_count", 0) > 5 and _scrape(port))
        assert isinstance(first, dict)
        time.sleep(seconds)
        last = _scrape(port)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    beats = last["quantlab_worker_heartbeat_seconds_count"] - first["quantlab_worker_heartbeat_seconds_count"]
    took = last["quantlab_worker_heartbeat_seconds_sum"] - first["quantlab_worker_heartbeat_seconds_sum"]
    yield Rate("worker heartbeat (idle worker): time, mean", 1000.0 * took / beats, int(beats), unit="ms")
    if url:
        trips = last["quantlab_store_round_trips"] - first["quantlab_store_round_trips"]
        yield Rate("worker heartbeat (idle worker): round trips to PostgreSQL, mean", trips / beats, int(beats), unit="")


def _try_scrape(port: int) -> dict[str, float]:
    try:
        return _scrape(port)
    except OSError:
        return {}  # not serving yet


def bench_failover(tmp: Path, file: Path, url: str, n: int) -> Row:
    """SIGKILL the worker running a strategy; time until the strategy heartbeats on the other worker.

    Leases of 2 s (the chaos soak's): the director expires the killed worker's lease after the lease
    plus its margin (2.4 s), then places the strategy on the survivor, which starts it.
    """
    home = tmp / "failover"
    store = open_store(Paths(home, store_url=url))
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start_worker(worker_id: str) -> None:
        procs[worker_id] = subprocess.Popen(
            [*qlab_args(home, url), "worker", "start", "--region", "JP", "--id", worker_id, "--heartbeat", "0.2",
             "--lease-ttl", "2", "--drain-timeout", "0.5"],
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        poll(lambda: (r := store.find_resource(worker_id)) is not None and r.spec.pid == procs[worker_id].pid)

    director = subprocess.Popen([*qlab_args(home, url), "director", "start", "--heartbeat", "0.2"],
                                stderr=subprocess.DEVNULL, start_new_session=True)
    samples = []
    try:
        start_worker("fa")
        start_worker("fb")
        control.assign(store, control.AssignRequest(file=str(file), id="moving", interval=0.2))
        for _ in range(n):
            work = poll(lambda: (w := store.get_work("moving")).result.status == "running" and w.result.last_heartbeat and w)
            assert isinstance(work, Work) and work.assignment is not None
            victim, survivor = work.assignment.worker, ("fb" if work.assignment.worker == "fa" else "fa")
            old_pid, killed_wall, killed = work.result.pid, time.time(), time.perf_counter()
            os.killpg(procs[victim].pid, signal.SIGKILL)
            poll(lambda: (w := store.get_work("moving")).assignment is not None and w.assignment.worker == survivor
                 and w.result.pid not in (None, old_pid) and (w.result.last_heartbeat or 0) > killed_wall)
            samples.append(time.perf_counter() - killed)
            procs[victim].wait()
            start_worker(victim)  # the same id again, for the next round
    finally:
        for proc in [*procs.values(), director]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*procs.values(), director]:
            proc.wait(30)
        store.close()
    return Row("failover: worker SIGKILL -> its strategy's first heartbeat on the other worker (lease 2 s)", samples, unit="s")
