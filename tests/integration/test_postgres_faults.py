"""Faults on the PostgreSQL store with real processes: a network that goes silent,
directors racing for leadership, a paused director, a paused worker.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Iterator

import pytest
from psycopg import conninfo

from quantlab import control
from tests.conftest import Lab, pid_alive, wait_for
from tests.integration import test_store_faults as store_faults
from tests.integration.test_postgres import rec_on_w1_with_w2_spare, runner_spans, w1_back_and_rec_stays_on_w2, wait_moved_to_w2
from tests.integration.test_store_faults import RECORDER
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


# ---- directors ----

DIRECTOR_LEASE = ("--lease-ttl", "1")


class EpochLog:
    """The leader terms seen on each Work as the test polls: a deposed leader's write would show as a step back."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.seen: dict[str, list[int]] = {}

    def look(self) -> None:
        for work in self.lab.store.list_works():
            terms = self.seen.setdefault(work.id, [])
            if not terms or terms[-1] != work.leader_epoch:
                terms.append(work.leader_epoch)

    def running(self, ids: list[str]) -> bool:
        self.look()
        works = {w.id: w for w in self.lab.store.list_works()}
        return all(i in works and works[i].result.status == "running" for i in ids)


def leading_terms(lab: Lab) -> list[tuple[int, str]]:
    """(term, director) of every director_leading event, in order."""
    out = []
    for event in lab.events("director_leading"):
        director, _, term = event.detail.rpartition(" term ")
        out.append((int(term), director))
    return out


@pytest.mark.timeout(120)
def test_directors_racing_for_leadership_lead_one_term_each_and_lose_no_work(pg_lab: Lab) -> None:
    directors = [pg_lab.director(*DIRECTOR_LEASE) for _ in range(3)]  # started at once: all race for the first term
    pg_lab.worker("w1")
    pg_lab.worker("w2")
    file = pg_lab.strategy("rec", RECORDER)
    log = EpochLog(pg_lab)
    ids: list[str] = []
    for round_ in range(3):
        leader = wait_for(lambda: pg_lab.store.find_leader(), timeout=10, what="a leader")
        batch = [f"r{round_}{i}" for i in range(3)]
        for work_id in batch:  # straight to the store: the test is about the directors, not the CLI
            control.assign(pg_lab.store, control.AssignRequest(file=str(file), id=work_id, interval=0.2))
            log.look()
        ids += batch
        wait_for(lambda: log.running(ids), timeout=20, what=f"round {round_}: every strategy to run")
        os.kill(leader.pid, signal.SIGKILL)  # the standbys race for the next term
        directors.append(pg_lab.director(*DIRECTOR_LEASE))
        wait_for(lambda: (new := pg_lab.store.find_leader()) is not None and new.epoch > leader.epoch and (log.look() or True),
                 timeout=10, what=f"round {round_}: a new term")
    wait_for(lambda: log.running(ids), timeout=20, what="every strategy to run at the end")
    terms = leading_terms(pg_lab)
    assert [t for t, _ in terms] == sorted({t for t, _ in terms}), f"a term led twice, or out of order: {terms}"
    assert len(terms) >= 4
    for work_id, seen in log.seen.items():
        assert seen == sorted(seen), f"{work_id} was written by an older term after a newer one: {seen}"
        assert set(seen) - {0} <= {t for t, _ in terms}, f"{work_id} carries a term nobody led: {seen} vs {terms}"
    for work_id in ids:
        assert len({pid for pid, _, _ in runner_spans(pg_lab, work_id)}) == 1, f"{work_id} ran more than once"


def test_a_paused_director_is_replaced_within_a_lease_and_its_writes_are_refused(pg_lab: Lab) -> None:
    store_faults.test_a_paused_leader_is_replaced_and_steps_down_without_a_write(pg_lab)


# ---- a paused worker ----


@pytest.mark.timeout(180)
def test_a_worker_paused_past_its_lease_never_runs_a_moved_strategy(pg_lab: Lab) -> None:
    store_faults.pause_workers_at_random_moments(pg_lab, trials=4)
