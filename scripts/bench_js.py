"""Start-time figures of JavaScript strategies, beside the Python ones of bench.py.

    python scripts/bench_js.py            # needs Node 20+ and `qlab js install`
    python scripts/bench_js.py --quick

A Node child cannot be forked from a warm interpreter: the zygote forks as for
Python, then the child execs Node, which boots and loads zeromq and msgpack.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (its harness, cluster and rows)

from quantlab.child.jsruntime import child_command  # noqa: E402
from quantlab.worker.zygote import ForkRequest  # noqa: E402

QUIET = """
export async function st_init(ctx) {}
export async function st_heartbeat(ctx, tick) {}
export async function st_exit(ctx, reason) {}
"""


class NodeHarness(bench.ChildHarness):
    """bench's ROUTER and real zygote, forking Node children."""

    def fork(self, n: int) -> tuple[bytes, int]:
        token = secrets.token_bytes(16)
        argv = child_command("quiet.mjs", self.endpoint)
        request = ForkRequest(endpoint=self.endpoint, token=token, log_path=str(self.tmp / "child.log"), argv=argv)
        return token, self.forked(request)


def bench_spawn_to_hello(harness: NodeHarness, n: int) -> bench.Row:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        token, pid = harness.fork(i)
        harness.hello(token)
        samples.append(time.perf_counter() - start)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return bench.Row("Node child: spawn -> Hello (fork from zygote, exec node, load zeromq)", samples)


def rows(quick: bool) -> Iterator[bench.Row]:
    k = 1 if quick else 4
    with tempfile.TemporaryDirectory(prefix="qlab-bench-js-") as tmp_name:
        tmp = Path(tmp_name)
        file = tmp / "quiet.mjs"
        file.write_text(QUIET)
        harness = NodeHarness(tmp)
        try:
            yield bench_spawn_to_hello(harness, 5 * k)
            row = bench.bench_tick_round_trip(harness, file, 500 * k)
            yield bench.Row("tick round trip worker -> Node child -> worker", row.samples, unit="us")
        finally:
            harness.close()
        cluster = bench.Cluster(tmp / "home", bench.write_accounts(tmp, "http://127.0.0.1:9"), {"QLAB_BENCH_SECRET": "unused"})
        try:
            row = bench.bench_assign_to_heartbeat(cluster, file, 5 * k)
            yield bench.Row("assign -> first heartbeat, JavaScript strategy", row.samples)
            python = tmp / "quiet.py"
            python.write_text(bench.QUIET)
            row = bench.bench_assign_to_heartbeat(cluster, python, 5 * k)
            yield bench.Row("for comparison, the same now: assign -> first heartbeat, Python strategy", row.samples)
        finally:
            cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    args = parser.parse_args()
    print(f"# quantlab bench_js: {platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print("| figure | median | p95 | n |\n|---|---|---|---|")
    for row in rows(args.quick):
        print("| " + " | ".join(row.cells()) + " |", flush=True)


if __name__ == "__main__":
    main()
