"""What only the PostgreSQL store has: its schema, NOTIFY wake-ups, and lost connections.

The Store contract itself runs on PostgreSQL in test_store_contract.py.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import psycopg
import pytest

from quantlab.cli import run
from quantlab.errors import StoreUnavailable
from quantlab.store.pgschema import SCHEMA_VERSION
from quantlab.store.pgstore import PostgresStore
from quantlab.store.records import Assignment, StrategySpec, Work
from tests.conftest import wait_for


def work(work_id: str = "s") -> Work:
    return Work(id=work_id, spec=StrategySpec(file="/s.py"))


def cut(url: str, store: PostgresStore, which: str = "link") -> None:
    """End a store's server session from outside, as a network cut or a DBA would."""
    conn = store.link.conn() if which == "link" else store.feed.listener._conn
    assert conn is not None
    pid = conn.info.backend_pid
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _migrate(url: str) -> None:
    PostgresStore(url).close()


def test_the_schema_is_made_once_even_by_racing_processes(pg_url: str) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_migrate, args=(pg_url,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    store = PostgresStore(pg_url)
    assert store.migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)
    store.close()


def test_qlab_store_migrate(pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    assert run(["--home", str(home), "--store", pg_url, "store", "migrate"]) == 0
    assert run(["--home", str(home), "--store", pg_url, "store", "migrate"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"schema at version {SCHEMA_VERSION} (was 0)", f"schema at version {SCHEMA_VERSION} (up to date)"]


@pytest.mark.parametrize(
    "url, says",
    [
        ("postgresql://root@127.0.0.1:1/nowhere", "cannot reach the store at postgresql://root@127.0.0.1:1/nowhere"),
        ("postgresql://u:secret@127.0.0.1:1/x", "cannot reach the store at postgresql://u:***@127.0.0.1:1/x"),
        ("mysql://h/db", "unknown store URL 'mysql://h/db'"),
    ],
)
def test_a_bad_or_unreachable_store_is_one_error_line(
    url: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    assert run(["--home", str(home), "--store", url, "status", "--json"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"Error: {says}") and err.count("\n") == 1 and "secret" not in err


def test_another_process_commit_moves_the_end_by_notify(pg_url: str) -> None:
    reader, writer = PostgresStore(pg_url), PostgresStore(pg_url)
    start = reader.changes_end()
    writer.add_work(work())
    end = wait_for(lambda: (e := reader.changes_end()) != start and e, 5, "the NOTIFY")
    changes, cursor, lost = reader.changes(start)
    assert [(c.kind, c.key) for c in changes] == [("works", "s")] and cursor == end and not lost
    writer.update_work("s", lambda w: setattr(w.result, "heartbeats", 3) or w)  # a routine report: no line, no wake
    writer.update_work("s", lambda w: setattr(w, "desired", "stopped") or w)  # a control change: one line
    wait_for(lambda: reader.changes_end() != end, 5, "the second NOTIFY")
    changes, _, _ = reader.changes(end)
    assert len(changes) == 1  # the heartbeat count added nothing to the feed
    reader.close(), writer.close()


def test_a_feed_read_with_nothing_new_is_one_round_trip_and_sees_a_replaced_database(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        store.add_work(work())
        cursor = store.changes_end()
        before = store.round_trips()
        assert store.changes(cursor) == ([], cursor, False)
        assert store.round_trips() == before + 1  # the head came with the (empty) lines
        store.link.write("TRUNCATE qlab_changes")  # as if the database had been replaced by an empty one
        store.link.write("UPDATE qlab_feed_head SET id = 0")
        changes, after, lost = store.changes(cursor)
        assert changes == [] and after.offset == 0 and lost  # start over with a full pass
    finally:
        store.close()


def test_a_lost_listener_catches_up_after_it_listens_again(pg_url: str) -> None:
    reader, writer = PostgresStore(pg_url), PostgresStore(pg_url)
    start = reader.changes_end()
    cut(pg_url, reader, "listener")
    writer.add_work(work())  # notified while the listener is gone: that notification is lost
    writer.update_work("s", lambda w: setattr(w, "assignment", Assignment(worker="w1", epoch=1)) or w)
    end = wait_for(lambda: (e := reader.changes_end()).offset >= start.offset + 2 and e, 5, "the end after a re-LISTEN")
    changes, cursor, _ = reader.changes(start)
    assert [c.worker for c in changes] == ["", "w1"] and cursor == end
    reader.close(), writer.close()


def test_a_cut_connection_is_reopened_and_a_commit_is_never_applied_twice(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    store.add_work(work())
    cut(pg_url, store)
    assert store.get_work("s").id == "s"  # a read retries once on a fresh connection
    calls = 0

    def bump(w: Work) -> Work:
        nonlocal calls
        calls += 1
        w.result.restarts += 1
        return w

    real = store.link.write

    def write_then_cut(sql: str, params: object = ()) -> list[tuple[object, ...]]:
        real(sql, params)  # type: ignore[arg-type]
        store.link.drop()
        raise StoreUnavailable("connection lost before the reply")  # the commit landed; the reply did not

    store.link.write = write_then_cut  # type: ignore[method-assign]
    store.update_work("s", bump)
    store.link.write = real  # type: ignore[method-assign]
    assert calls == 1 and store.get_work("s").result.restarts == 1  # the nonce showed it landed
    store.close()


def test_list_works_is_one_select(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    for i in range(50):
        store.add_work(work(f"s{i}"))
    reads = 0
    real = store.link.read

    def counted(sql: str, params: object = ()) -> list[tuple[object, ...]]:
        nonlocal reads
        reads += 1
        return real(sql, params)  # type: ignore[arg-type]

    store.link.read = counted  # type: ignore[method-assign]
    assert len(store.list_works()) == 50 and reads == 1
    store.close()
