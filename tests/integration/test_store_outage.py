"""A worker through a PostgreSQL outage, as its operator sees it: the metrics, its log, the events."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest
from psycopg import conninfo

from tests.conftest import Lab, free_port, wait_for
from tests.integration.test_metrics import QUIET, scrape
from tests.tcpproxy import TcpProxy

LEASE = ("--lease-ttl", "2", "--drain-timeout", "0.3")
RUNNING = "quantlab_strategies{status=running}"
LEFT = "quantlab_lease_seconds_left"


@pytest.fixture
def proxy(pg_lab: Lab) -> Iterator[TcpProxy]:
    params = conninfo.conninfo_to_dict(pg_lab.store_url)
    proxy = TcpProxy(str(params.get("host", "127.0.0.1")), int(params.get("port", 5432)))
    try:
        yield proxy
    finally:
        proxy.close()


def worker_output(lab: Lab) -> str:
    """What the worker printed (its log file holds the same lines)."""
    return (lab.home / "proc-0.err").read_text(errors="replace")


@pytest.mark.timeout(90)
def test_an_outage_moves_the_metrics_is_two_log_lines_and_loses_no_event(
    pg_lab: Lab, proxy: TcpProxy, tmp_path: Path
) -> None:
    port = free_port()
    (tmp_path / "w1").mkdir(mode=0o700)
    # The worker reaches the database through the proxy, from a home of its own (its output apart).
    cut_off = Lab(tmp_path / "w1", proxy.url(pg_lab.store_url))
    try:
        pg_lab.director()
        cut_off.worker("w1", *LEASE, "--metrics-port", str(port))
        for name in ("a", "b"):
            pg_lab.assign(pg_lab.strategy(name, QUIET), "--interval", "0.05", "--worker", "w1")
        wait_for(lambda: scrape(port).get(RUNNING) == 2, timeout=20, what="two running strategies in the metrics")
        full = wait_for(lambda: (m := scrape(port)).get(LEFT, 0) > 1.0 and m[LEFT], what="a renewed lease")

        cut = time.time()
        proxy.cut()  # the database down: every call fails at once
        # Sampled while the database is away: the lease counts down on the worker's own clock.
        falling = wait_for(lambda: 0 < (m := scrape(port)).get(LEFT, 0) < full - 0.5 and m[LEFT], timeout=3,
                           what="the lease gauge to fall during the outage")
        wait_for(lambda: scrape(port).get(LEFT) == 0, timeout=5, what="the lease gauge to reach 0")
        wait_for(lambda: scrape(port).get(RUNNING) == 0, timeout=5, what="no running strategy once the children are killed")
        assert falling < full
        pg_lab.wait_event("worker_lost", timeout=10)  # the director, on its own link, saw w1's lease run out
        proxy.restore()
        back = time.time()
        wait_for(lambda: scrape(port).get(RUNNING) == 2, timeout=30, what="both strategies running again")

        during = [e for e in pg_lab.events() if e.worker == "w1" and cut <= e.ts < back]
        kinds = {e.kind for e in during}
        assert "lease_lost" in kinds, f"no lease_lost event of the outage in the store: {[(e.kind, e.detail) for e in during]}"
        said = worker_output(cut_off)
        assert "Traceback" not in said, said
        starts = [line for line in said.splitlines() if "store unreachable" in line]
        ends = [line for line in said.splitlines() if "store reachable again" in line]
        assert len(starts) == 1 and len(ends) == 1, said
        lost = [line for line in said.splitlines() if "lost its lease" in line]
        assert lost and all("the store was unreachable for" in line for line in lost), said
        assert len([line for line in said.splitlines() if "halt state unreadable" in line]) <= 1, said
        assert "cannot record event" not in said, said
    finally:
        proxy.restore()
        cut_off.close()
