"""Real processes on the PostgreSQL store: placement, failover, a worker cut off, a restart.

Each test gets a scratch database (tests/pgutil.py); without a server they skip
with one line, under CI=true they fail.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import psycopg
import pytest

from quantlab.store.records import Work
from tests.conftest import Lab, lacking, pid_alive, wait_for
from tests.integration.test_store_faults import RECORDER, beats


def runner_spans(lab: Lab, work_id: str) -> list[tuple[int, float, float]]:
    """(pid, first beat, last beat) per child that ran ``work_id``, in order of first beat."""
    spans: dict[int, list[float]] = {}
    for b in beats(lab, work_id):
        if b.kind == "beat":
            spans.setdefault(b.pid, []).append(b.ts)
    return sorted(((pid, min(ts), max(ts)) for pid, ts in spans.items()), key=lambda s: s[1])


def assert_never_two_runners(lab: Lab, work_id: str) -> None:
    runs = runner_spans(lab, work_id)
    for (pid_a, _, last_a), (pid_b, first_b, _) in zip(runs, runs[1:]):
        assert last_a < first_b, f"{pid_a} still beat at {last_a} after {pid_b} began at {first_b}"


def values(lab: Lab, work_id: str) -> list[int]:
    return [int(b.value) for b in beats(lab, work_id) if b.kind == "beat"]


def test_director_worker_and_strategy_run_on_postgres(pg_lab: Lab) -> None:
    pg_lab.director()
    pg_lab.worker("w1")
    file = pg_lab.strategy("rec", RECORDER)
    pg_lab.assign(file, "--interval", "0.05")
    work = pg_lab.wait_heartbeats("rec", 5)
    assert work.assignment is not None and work.assignment.worker == "w1"
    status = pg_lab.status()
    assert [s["id"] for s in status["strategies"]] == ["rec"] and [w["id"] for w in status["workers"]] == ["w1"]
    pg_lab.run("strategy", "send", "rec", '{"hi": 1}')
    pg_lab.run("strategy", "stop", "rec")
    pg_lab.wait_status("rec", "stopped")
    kinds = [e.kind for e in pg_lab.events(strategy="rec")]
    assert kinds[:2] == ["submitted", "assigned"] and "stopped" in kinds
    assert pg_lab.state("rec")["n"] >= 5
    assert not (pg_lab.home / "store" / "works").exists()  # nothing went to the file store


def test_a_killed_worker_fails_over_and_the_state_continues(pg_lab: Lab) -> None:
    pg_lab.director()
    opts = ("--lease-ttl", "2", "--drain-timeout", "0.5")
    first = pg_lab.worker("w1", *opts)
    file = pg_lab.strategy("rec", RECORDER)
    pg_lab.assign(file, "--interval", "0.05", "--worker", "w1")
    before = pg_lab.wait_heartbeats("rec", 5)
    pg_lab.store.update_work("rec", _unpinned)
    pg_lab.worker("w2", *opts)
    os.killpg(first.pid, signal.SIGKILL)
    killed = time.monotonic()
    moved = wait_for(
        lambda: (w := pg_lab.store.find_work("rec")) and w.assignment and w.assignment.worker == "w2"
        and w.result.status == "running" and w,
        timeout=15, what="rec to run on w2",
    )
    took = time.monotonic() - killed
    assert moved.epoch > before.epoch and took < 2 * 1.2 + 3  # a lease plus its margin, plus a few ticks
    pg_lab.wait_heartbeats("rec", moved.result.heartbeats + 3)
    seen = values(pg_lab, "rec")
    assert seen == sorted(seen) and seen[-1] > before.result.heartbeats  # ctx.state went on, never back
    assert_never_two_runners(pg_lab, "rec")


def _unpinned(work: Work) -> Work:
    work.spec.placement.worker = None
    return work


@pytest.fixture
def cut_off_role(pg_lab: Lab) -> Iterator[str]:
    """A login role of its own for one worker, so the test can cut exactly its connections."""
    role = f"qlab_w_{secrets.token_hex(4)}"
    with psycopg.connect(pg_lab.store_url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"')
        admin.execute(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
    try:
        yield role
    finally:
        with psycopg.connect(pg_lab.store_url, autocommit=True) as admin:
            admin.execute(f'ALTER ROLE "{role}" NOLOGIN')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE "{role}"')


def _set_login(url: str, role: str, login: bool) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'ALTER ROLE "{role}" {"LOGIN" if login else "NOLOGIN"}')
        if not login:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))


def test_a_worker_cut_off_from_the_database_fences_itself_and_its_strategy_moves(
    pg_lab: Lab, cut_off_role: str
) -> None:
    pg_lab.director()
    cut_url = pg_lab.store_url.replace("://root@", f"://{cut_off_role}@").replace("://postgres@", f"://{cut_off_role}@")
    cut_lab = Lab(pg_lab.home, cut_url)
    try:
        before = rec_on_w1_with_w2_spare(pg_lab, cut_lab)
        _set_login(pg_lab.store_url, cut_off_role, False)  # w1 can neither keep nor open a connection
        wait_moved_to_w2(pg_lab, before)
        assert not pid_alive(before.result.pid or 0)
        _set_login(pg_lab.store_url, cut_off_role, True)  # back: w1 finds its lease gone and registers again
        w1_back_and_rec_stays_on_w2(pg_lab)
    finally:
        cut_lab.close()


# ---- a worker that loses the database: shared by the tests of each way to lose it ----

MOVING = ("--lease-ttl", "2", "--drain-timeout", "0.3")  #: short leases, so that strategies move quickly


def rec_on_w1_with_w2_spare(lab: Lab, w1_lab: Lab) -> Work:
    """``rec`` beating on w1 (started through ``w1_lab``, its own way to the database), unpinned, w2 up."""
    w1_lab.worker("w1", *MOVING)
    file = lab.strategy("rec", RECORDER)
    lab.assign(file, "--interval", "0.05", "--worker", "w1")
    before = lab.wait_heartbeats("rec", 5)
    lab.store.update_work("rec", _unpinned)
    lab.worker("w2", *MOVING)
    return before


def wait_moved_to_w2(lab: Lab, before: Work) -> Work:
    """``rec`` running on w2 in a new child, beating on; never two runners at once."""
    moved = wait_for(
        lambda: (w := lab.store.find_work("rec")) and w.assignment and w.assignment.worker == "w2"
        and w.result.status == "running" and w.result.pid not in (None, before.result.pid)
        and w.result.heartbeats > before.result.heartbeats + 3 and w,
        timeout=20, what="rec to run on w2",
    )
    assert moved.epoch > before.epoch
    assert_never_two_runners(lab, "rec")
    return moved


def w1_back_and_rec_stays_on_w2(lab: Lab) -> None:
    """w1, reconnected, finds its lease gone and registers anew; a running strategy is never moved back."""
    lab.wait_event("lease_lost", timeout=15)
    wait_for(lambda: lab.store.find_resource("w1"), timeout=15, what="w1 to register again")
    work = lab.wait_heartbeats("rec", lab.work("rec").result.heartbeats + 5)
    assert work.assignment is not None and work.assignment.worker == "w2"
    assert_never_two_runners(lab, "rec")


# ---- the database restarted under load (a throwaway cluster of the test's own) ----

PG_BIN = next((d for d in ("/usr/lib/postgresql/15/bin", "/usr/local/bin") if os.path.exists(f"{d}/initdb")), "")


def _as_postgres(*command: str, timeout: float = 60) -> None:
    # The server refuses to run as root: run the cluster's tools as the postgres user.
    subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True, timeout=timeout)


@pytest.fixture
def cluster() -> Iterator[tuple[str, Callable[[], None]]]:
    """A throwaway PostgreSQL cluster: its URL, and a function that restarts it (pg_ctl restart -m fast)."""
    if not PG_BIN or not shutil.which("runuser") or os.geteuid() != 0:
        lacking("initdb/pg_ctl (in /usr/lib/postgresql/15/bin or /usr/local/bin), runuser or root, "
                "to start a throwaway PostgreSQL cluster")
    root = tempfile.mkdtemp(prefix="qlab-pg-")
    shutil.chown(root, "postgres")
    data = f"{root}/data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    ctl = [f"{PG_BIN}/pg_ctl", "-D", data, "-l", f"{root}/log", "-w", "-t", "30"]
    _as_postgres(f"{PG_BIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
    _as_postgres(*ctl, "-o", options, "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", lambda: _as_postgres(*ctl, "-m", "fast", "restart")
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", *ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(120)
def test_the_database_restarted_under_load_loses_and_doubles_nothing(
    tmp_path: Path, cluster: tuple[str, Callable[[], None]]
) -> None:
    url, restart = cluster
    home = tmp_path / "home"
    home.mkdir()
    lab = Lab(home, url)
    try:
        lab.director()
        lab.worker("w1", "--lease-ttl", "6", "--drain-timeout", "1")
        file = lab.strategy("rec", RECORDER)
        ids = [f"rec{i}" for i in range(3)]
        for work_id in ids:
            lab.assign(file, "--id", work_id, "--interval", "0.05")
        before = {i: lab.wait_heartbeats(i, 5) for i in ids}
        restart()
        assert lab.store.find_work("rec0") is not None and getattr(lab.store, "link").reconnects >= 1  # it did cut us
        lab.assign(file, "--id", "late", "--interval", "0.05")  # placed and started after everyone reconnected
        lab.wait_heartbeats("late", 5, timeout=20)
        for work_id in ids:
            after = lab.wait_heartbeats(work_id, before[work_id].result.heartbeats + 10, timeout=20)
            assert after.epoch == before[work_id].epoch and after.result.pid == before[work_id].result.pid  # never moved
            assert len(runner_spans(lab, work_id)) == 1  # one child all along: nothing doubled
            seen = values(lab, work_id)
            assert seen == list(range(1, len(seen) + 1))  # the count went on without a gap or a repeat
        assert lab.store.find_resource("w1") is not None and not lab.events("lease_lost")
    finally:
        lab.close()
