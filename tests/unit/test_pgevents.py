"""The PostgreSQL event log: followed in id order without skipping an event that commits late; pruned."""

from __future__ import annotations

import threading

import msgspec
import psycopg
import pytest

from quantlab.store import pgschema, pgstore
from quantlab.store.pgstore import PostgresStore
from quantlab.store.records import Event
from tests.conftest import wait_for


encode = msgspec.json.encode


def event(detail: str) -> Event:
    return Event(ts=0.0, kind="submitted", detail=detail)


class Follower:
    """What `qlab events --follow` does: read after the last id seen, again and again."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.offset = 0
        self.details: list[str] = []

    def poll(self) -> None:
        events, self.offset = self.store.read_events(self.offset)
        self.details += [e.detail for e in events]


def _late_or_waiting(url: str, late: threading.Thread) -> bool:
    """The second append either committed or waits for the first (a lock): either way, it has begun."""
    if not late.is_alive():
        return True
    with psycopg.connect(url, autocommit=True) as admin:
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").fetchone()
    return bool(row and row[0])


def test_a_follower_never_skips_an_event_that_commits_after_a_later_one(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    follower = Follower(PostgresStore(pg_url))  # a process of its own, as `qlab events --follow` is
    try:
        store.append_event(event("first"))
        follower.poll()
        with psycopg.connect(pg_url) as slow:  # a transaction: its append commits only at the end of the block
            slow.execute(pgstore.APPEND_EVENT, {"data": encode(event("slow"))})
            late = threading.Thread(target=store.append_event, args=(event("late"),))
            late.start()
            wait_for(lambda: _late_or_waiting(pg_url, late), what="the second append to begin")
            follower.poll()  # a follower reads while the first append is still in flight
        late.join(10)
        follower.poll()
        assert follower.details == ["first", "slow", "late"]
    finally:
        follower.store.close()
        store.close()


def test_events_are_pruned_by_count_and_by_age(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgstore, "EVENTS_KEPT", 3)
    store = PostgresStore(pg_url)
    try:
        for i in range(6):
            store.append_event(event(f"e{i}"))
        store.prune()
        assert [e.detail for e in store.read_events()[0]] == ["e3", "e4", "e5"]
        store.link.write("UPDATE qlab_events SET at = now() - make_interval(days => %s) WHERE id = 5", (pgstore.EVENTS_MAX_AGE_DAYS + 1,))
        store.prune()
        events, last = store.read_events()
        assert [e.detail for e in events] == ["e3", "e5"] and last == 6
    finally:
        store.close()


def test_a_version_1_event_log_keeps_its_ids_when_migrated(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as old:  # a store made by the version that used a sequence
        old.setattr(pgschema, "MIGRATIONS", pgschema.MIGRATIONS[:1])
        old.setattr(pgschema, "SCHEMA_VERSION", 1)
        store = PostgresStore(pg_url)
        store.link.write("INSERT INTO qlab_events (data) VALUES (%s), (%s)", (encode(event("a")), encode(event("b"))))
        store.close()
    store = PostgresStore(pg_url)
    try:
        store.append_event(event("c"))
        events, last = store.read_events(1)
        assert [e.detail for e in events] == ["b", "c"] and last == 3
    finally:
        store.close()
