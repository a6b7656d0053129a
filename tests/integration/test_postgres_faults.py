"""Faults on the PostgreSQL store with real processes (issue 9): a network that goes silent,
directors racing for leadership, a paused director, a paused worker.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Iterator

import pytest
from psycopg import conninfo

from tests.conftest import Lab, pid_alive, wait_for
from tests.integration.test_postgres import rec_on_w1_with_w2_spare, w1_back_and_rec_stays_on_w2, wait_moved_to_w2
from tests.tcpproxy import TcpProxy

LEASE = 2.0  #: the workers' lease (test_postgres.MOVING)


@pytest.fixture
def proxy(pg_lab: Lab) -> Iterator[TcpProxy]:
    """A TCP proxy in front of the test's PostgreSQL server."""
    params = conninfo.conninfo_to_dict(pg_lab.store_url)
    proxy = TcpProxy(str(params.get("host", "127.0.0.1")), int(params.get("port", 5432)))
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.mark.timeout(90)
def test_a_worker_whose_database_goes_silent_fences_itself_before_its_lease_ends(pg_lab: Lab, proxy: TcpProxy) -> None:
    pg_lab.director()
    silent = Lab(pg_lab.home, proxy.url(pg_lab.store_url))
    try:
        before = rec_on_w1_with_w2_spare(pg_lab, silent)
        proxy.blackhole()  # w1's connections stay open and hear nothing: no error, no reset
        silenced = time.time()
        wait_for(lambda: not pid_alive(before.result.pid or 0), timeout=LEASE + 1, what="w1 to kill its child")
        fenced_after = time.time() - silenced
        assert fenced_after < LEASE, f"w1's child outlived the lease: killed {fenced_after:.2f}s after the silence"
        wait_moved_to_w2(pg_lab, before)
        proxy.restore()  # w1's stuck call times out, it reconnects, finds its lease gone and registers anew
        w1_back_and_rec_stays_on_w2(pg_lab)
    finally:
        proxy.restore()
        silent.close()
