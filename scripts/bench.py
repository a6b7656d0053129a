"""quantlab benchmarks: prints the figures docs/benchmarks.md quotes, as one table.

    python scripts/bench.py            # all figures
    python scripts/bench.py --quick    # fewer samples
    python scripts/bench.py --store postgresql://root@127.0.0.1/postgres   # the store figures on PostgreSQL
    python scripts/bench.py --isolation-only   # a flooding strategy and a paused zygote beside 50 at 10 Hz
    python scripts/bench.py --thousand         # 1,000 idle strategies at 1 Hz on one worker: a couple of minutes
    python scripts/bench.py --compare [--load-seconds 60] [--json FILE]    # side by side with supervisord

Everything is real: `qlab` director and worker processes on a temporary home,
children forked by the real zygote, the real ZeroMQ channel.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import select
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import zmq

from quantlab import control
from quantlab.config import Paths
from quantlab.store.open import open_store
from quantlab.store.records import ExitReason, TickInfo
from quantlab.store.fenced import FencedStore
from quantlab.protocol import Heartbeat, Hello, Init, Ready, Stop, Tick, decode_to_worker, encode
from quantlab.worker import pidns, procs
from quantlab.worker.zygote import ForkRequest, Zygote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.fakes.bybit import FakeBybit  # noqa: E402  (the fake server lives with the tests)
from tests.pgutil import scratch_database  # noqa: E402
from bench_common import QLAB, QUIET, Rate, Row, poll, qlab_args  # noqa: E402
from bench_store import bench_failover, bench_scale, bench_worker_heartbeat, cpu_percent  # noqa: E402
from bench_fleet import kill_to_heartbeat  # noqa: E402  (scripts/ is this script's folder)
import bench_isolation  # noqa: E402

#: --store: an admin URL of a PostgreSQL server (each cluster gets a scratch database on it), or "" for files.
STORE_ADMIN = ""


@contextlib.contextmanager
def store_url() -> Iterator[str]:
    """Where one cluster's store lives: "" (the home's files) or a scratch PostgreSQL database."""
    if not STORE_ADMIN:
        yield ""
        return
    with scratch_database(STORE_ADMIN) as url:
        yield url


#: Runs its API calls in its first heartbeat and leaves the figures in ctx.state.
HAMMER = '''
import time
def st_init(ctx): pass
def st_heartbeat(ctx, tick):
    if tick.seq > 1:
        return
    api = ctx.api.bybit[ctx.params["account"]]
    call = getattr(api, ctx.params["method"])
    kwargs = ctx.params["kwargs"]
    samples, end = [], time.monotonic() + ctx.params["seconds"]
    while len(samples) < ctx.params["calls"] and time.monotonic() < end:
        start = time.perf_counter()
        call(**kwargs)
        samples.append(time.perf_counter() - start)
    ctx.state["samples"] = samples
def st_exit(ctx, reason): pass
'''

class Cluster:
    """A director and a worker on a temporary home."""

    def __init__(self, home: Path, accounts: Path, env: dict[str, str], url: str = "") -> None:
        self.home, self.url = home, url
        self.store = open_store(Paths(home, store_url=url))
        worker = ("worker", "start", "--region", "JP", "--id", "bench", "--max-strategies", "200", "--accounts", str(accounts))
        self.procs = [self._start("director", "start", "--heartbeat", "1"), self._start(*worker, env=env)]
        poll(lambda: self.store.find_resource("bench"))

    def _start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*qlab_args(self.home, self.url), *args],
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )

    def close(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(30)
        self.store.close()


def bench_assign_to_heartbeat(cluster: Cluster, file: Path, n: int) -> Row:
    samples = []
    for i in range(n):
        work = control.assign(cluster.store, control.AssignRequest(file=str(file), id=f"a{i}", interval=60.0))
        first = poll(lambda: (w := cluster.store.get_work(f"a{i}")).result.heartbeats >= 1 and w.result.last_heartbeat)
        samples.append(float(first) - work.created)  # type: ignore[arg-type]
    for i in range(n):
        control.remove(cluster.store, f"a{i}")
    return Row("assign -> first heartbeat", samples)


def bench_kill_to_heartbeat(cluster: Cluster, file: Path, n: int) -> Row:
    control.assign(cluster.store, control.AssignRequest(file=str(file), id="victim", interval=60.0, backoff=0.0, max_errors=10_000))
    poll(lambda: cluster.store.get_work("victim").result.heartbeats >= 1)
    samples = kill_to_heartbeat(cluster.store, "victim", n)
    control.remove(cluster.store, "victim")
    return Row("child SIGKILL -> new child's first heartbeat (backoff 0)", samples)


_runs = itertools.count()


def run_hammers(cluster: Cluster, file: Path, count: int, params: dict[str, object]) -> list[list[float]]:
    """Start ``count`` strategies that call the API in their first heartbeat; their latency samples."""
    ids = [f"hammer{next(_runs)}" for _ in range(count)]
    for work_id in ids:
        control.assign(cluster.store, control.AssignRequest(file=str(file), id=work_id, interval=3600.0,
                                                            params=params, accounts=[str(params["account"])]))
    fenced_store = FencedStore(cluster.store)
    samples = [poll(lambda: fenced_store.load_state(w).get("samples"), timeout=120) for w in ids]
    for work_id in ids:
        control.remove(cluster.store, work_id)
    return samples  # type: ignore[return-value]


def bench_api(cluster: Cluster, file: Path, quick: bool) -> Iterator[Row]:
    calls = 300 if quick else 1000
    paper = {"account": "paper", "method": "get_tickers", "kwargs": {"category": "linear", "symbol": "BTCUSDT"}}
    [one] = run_hammers(cluster, file, 1, {**paper, "calls": calls, "seconds": 60})
    yield Row("API round trip strategy -> worker -> paper -> strategy", one, unit="us")
    seconds = 3.0
    many = run_hammers(cluster, file, 10, {**paper, "calls": 10**9, "seconds": seconds})
    total = sum(len(s) for s in many)
    yield Rate("API calls/s, 10 strategies on one paper account (get_tickers)", total / seconds, total)
    live = {"account": "live", "method": "get_wallet_balance", "kwargs": {"accountType": "UNIFIED"}}
    [signed] = run_hammers(cluster, file, 1, {**live, "calls": calls // 3, "seconds": 60})
    yield Row("API round trip through real pybit -> fake Bybit (signed)", signed, unit="us")


def bench_idle_account(tmp: Path, fake: FakeBybit, n: int) -> Row:
    """An idle account's calls while another account's queue waits for its rate limit (per-account queues)."""
    from quantlab.exchange.accounts import Account
    from quantlab.exchange.apipool import ApiPool
    from quantlab.store.memstore import MemoryStore
    from quantlab.protocol import ApiCall, ApiResult

    def account(name: str, rate: float) -> Account:
        return Account(name=name, type="bybit", api_key="BENCHKEY", api_secret="BENCH-SECRET", endpoint=fake.url,
                       rate_limit=rate)

    pool = ApiPool([account("busy", 2.0), account("idle", 1e6)], MemoryStore())  # no paper account: unused
    names = ["busy", "idle"]
    limit, fake.limit = fake.limit, 10**6  # the fake's own per-key budget must not pause the idle account
    try:
        for i in range(40):  # 20 s of queue at 2 calls/s
            pool.submit(ApiCall(call_id=i, account="busy", method="get_server_time", kwargs={}), names, lambda r: None)
        samples = []
        for i in range(n):
            answered = threading.Event()
            started = time.perf_counter()

            def done(result: ApiResult) -> None:
                answered.set()

            pool.submit(ApiCall(call_id=1000 + i, account="idle", method="get_server_time", kwargs={}), names, done)
            answered.wait(10)
            samples.append(time.perf_counter() - started)
        return Row("API call on an idle account while another waits for its rate limit", samples)
    finally:
        pool.close()
        fake.limit = limit


class ChildHarness:
    """A ROUTER socket and the real zygote: spawns children and talks to them directly."""

    def __init__(self, tmp: Path) -> None:
        procs.become_subreaper()
        # As a worker's: each child in a PID namespace of its own where this machine allows one.
        self.zygote = Zygote(pid_namespace=pidns.probe(None) is not pidns.Level.NONE)
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.endpoint = f"ipc://{tmp}/bench.sock"
        self.socket.bind(self.endpoint)
        self.tmp = tmp

    def fork(self, file: str = "") -> tuple[bytes, int]:
        """A child forked with a fresh token, its sandbox granting ``file``'s folder: the token and its pid."""
        token = secrets.token_bytes(16)
        request = ForkRequest(endpoint=self.endpoint, token=token, log_path=str(self.tmp / "child.log"), file=file)
        return token, self.forked(request)

    def forked(self, request: ForkRequest) -> int:
        """Ask the zygote for a child and wait for its pid (the worker's loop never waits: it polls)."""
        self.zygote.send(request)
        select.select([self.zygote.fileno()], [], [], 10)
        answers = self.zygote.answers()
        if not answers or answers[0].error:
            raise OSError(f"zygote could not fork: {answers[0].error if answers else 'no answer'}")
        return answers[0].pid

    def hello(self, token: bytes) -> bytes:
        """The routing id of the child whose Hello has ``token`` (others' Hellos are skipped)."""
        while True:
            sender, data = self.socket.recv_multipart()
            msg = decode_to_worker(data)
            if isinstance(msg, Hello) and msg.token == token:
                return sender

    def recv(self, routing_id: bytes) -> object:
        """The next message from ``routing_id`` (children killed by the fork bench may have said Hello)."""
        while True:
            sender, data = self.socket.recv_multipart()
            if sender == routing_id:
                return decode_to_worker(data)

    def send(self, routing_id: bytes, msg: object) -> None:
        self.socket.send_multipart([routing_id, encode(msg)])

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()
        self.zygote.close()


def bench_fork(harness: ChildHarness, n: int) -> Row:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        _, pid = harness.fork()
        samples.append(time.perf_counter() - start)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return Row("fork from zygote (double fork, re-parented)", samples)


def bench_tick_round_trip(harness: ChildHarness, file: Path, n: int) -> Row:
    token, pid = harness.fork(str(file))
    routing_id = harness.hello(token)
    harness.send(routing_id, Init(id="rt", file=str(file), params={}, state={}, accounts=[], log_path=str(harness.tmp / "rt.log")))
    assert isinstance(harness.recv(routing_id), Ready)
    samples = []
    for seq in range(1, n + 1):
        start = time.perf_counter()
        harness.send(routing_id, Tick(tick=TickInfo(seq=seq, ts=time.time(), interval=1.0), lease_until=time.monotonic() + 3600))
        reply = harness.recv(routing_id)
        samples.append(time.perf_counter() - start)
        assert isinstance(reply, Heartbeat) and reply.seq == seq
    harness.send(routing_id, Stop(reason=ExitReason(type="manual")))
    os.waitpid(pid, 0)
    return Row("tick round trip worker -> child -> worker", samples, unit="us")


def bench_fresh_interpreter(n: int) -> Row:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import quantlab.child.runner"], check=True)
        samples.append(time.perf_counter() - start)
    return Row("for comparison: fresh interpreter + import", samples)


def rows(quick: bool, scale: bool, store_only: bool = False, isolation_only: bool = False) -> Iterator[Row]:
    k = 1 if quick else 4
    with tempfile.TemporaryDirectory(prefix="qlab-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if isolation_only:
            yield from bench_isolation.rows(QLAB, tmp, quick)
            return
        file = tmp / "quiet.py"
        file.write_text(QUIET)
        if not store_only:
            harness = ChildHarness(tmp)
            try:
                yield bench_fork(harness, 50 * k)
                yield bench_tick_round_trip(harness, file, 2000 * k)
            finally:
                harness.close()
            yield bench_fresh_interpreter(5 * k)
        hammer = tmp / "hammer.py"
        hammer.write_text(HAMMER)
        with FakeBybit() as fake:
            fake.add_key("BENCHKEY", "BENCH-SECRET")
            with store_url() as url:
                cluster = Cluster(tmp / "home", write_accounts(tmp, fake.url), {"QLAB_BENCH_SECRET": "BENCH-SECRET"}, url)
                try:
                    yield bench_assign_to_heartbeat(cluster, file, 10 * k)
                    yield bench_kill_to_heartbeat(cluster, file, 10 * k)
                    if not store_only:
                        yield from bench_api(cluster, hammer, quick)
                        yield bench_idle_account(tmp, fake, 50 * k)
                    yield from bench_idle_worker(cluster, file, 100, 2.5 * k)
                finally:
                    cluster.close()
        with store_url() as url:
            yield from bench_worker_heartbeat(tmp, url, 2.5 if quick else 40.0)
        with store_url() as url:
            yield bench_failover(tmp, file, url, 1 if quick else 12)  # quick: time for the isolation figures
        if not store_only:
            yield from bench_isolation.rows(QLAB, tmp, quick)
        if scale:
            with store_url() as url:
                yield from bench_scale(tmp, file, 2_000 if quick else 10_000, url, 2.5 * k)


def bench_idle_worker(cluster: Cluster, file: Path, n: int, seconds: float) -> Iterator[Row]:
    ids = [f"idle{i}" for i in range(n)]
    for work_id in ids:
        control.assign(cluster.store, control.AssignRequest(file=str(file), id=work_id, interval=1.0))
    poll(lambda: all(cluster.store.get_work(w).result.heartbeats >= 2 for w in ids), timeout=120)
    worker = cluster.procs[1].pid
    yield Rate(f"idle worker with {n} strategies (1 s ticks): % of a core, worker alone", cpu_percent(worker, seconds), n, unit="%")
    yield Rate(f"idle worker with {n} strategies: % of a core, with zygote and children", cpu_percent(worker, seconds, children=True), n, unit="%")
    for work_id in ids:
        control.remove(cluster.store, work_id)


def write_accounts(tmp: Path, url: str) -> Path:
    """A paper account and a bybit account on the fake server, both with limits high enough to measure us."""
    path = tmp / "env.jsonl"
    path.write_text(
        json.dumps({"name": "paper", "type": "paper", "rate_limit": 1e6}) + "\n"
        + json.dumps({"name": "live", "type": "bybit", "api_key": "BENCHKEY", "api_secret_env": "QLAB_BENCH_SECRET",
                      "endpoint": url, "rate_limit": 1e6}) + "\n"
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples, 2,000 Works at scale")
    parser.add_argument("--no-scale", dest="scale", action="store_false", help="skip the 10,000-Work figures")
    parser.add_argument("--store", metavar="URL", default="",
                        help="PostgreSQL admin URL: the store figures on a scratch database there (files otherwise)")
    parser.add_argument("--store-only", action="store_true", help="only the figures that involve the store")
    parser.add_argument("--isolation-only", action="store_true",
                        help="only the figures of a flooding strategy and a paused zygote (scripts/bench_isolation.py)")
    parser.add_argument("--thousand", action="store_true",
                        help="only 1,000 idle strategies on one worker, against their targets (scripts/bench_thousand.py)")
    parser.add_argument("--compare", action="store_true",
                        help="quantlab and supervisord side by side, and the fleet targets (scripts/bench_compare.py)")
    parser.add_argument("--load-seconds", type=float, default=20.0, help="with --compare: the 200 x 10 Hz window [20]")
    parser.add_argument("--json", metavar="FILE", help="with --compare: also write the figures as JSON")
    args = parser.parse_args()
    if args.thousand:
        import bench_thousand

        print("| figure | quantlab | target |\n|---|---|---|")
        for figure, value, target in bench_thousand.rows(bench_thousand.measure(1000, 20.0)):
            print(f"| {figure} | {value} | {target or '-'} |", flush=True)
        print(f"| 20 starting on one account limited to 2 calls/s: all beat | "
              f"{bench_thousand.rate_limited_start():.1f} s | ≤ 3 s |", flush=True)
        return
    if args.compare:
        import bench_compare

        bench_compare.run(QLAB, args.load_seconds, kills=20, cli_runs=20, json_path=args.json)
        return
    global STORE_ADMIN
    STORE_ADMIN = args.store
    print(f"# quantlab bench: {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} cores, {platform.machine()}, {time.strftime('%Y-%m-%d')}")
    header = ("figure", "median", "p95", "n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    print(f"# store: {'PostgreSQL' if args.store else 'files'}")
    for row in rows(args.quick, args.scale, args.store_only, args.isolation_only):
        print("| " + " | ".join(row.cells()) + " |", flush=True)


if __name__ == "__main__":
    main()
