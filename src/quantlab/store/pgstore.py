"""PostgresStore: the store on a PostgreSQL database, shared by directors and workers on many hosts.

The record logic is TableStore's, unchanged: this module supplies its
primitives in SQL. A record is one row of ``qlab_records`` and a commit is ONE
guarded statement in autocommit::

    UPDATE qlab_records SET version = v + 1, ... WHERE kind = $k AND key = $key AND version = v
    INSERT INTO qlab_records ... ON CONFLICT DO NOTHING        -- version 0: nobody wrote it yet

so ownership (a Work's assignment and epoch, a worker's lease, the director's
leadership term) is row data changed by compare-and-swap, and a client that
pauses anywhere holds no lock against anyone: it has no open transaction. No
advisory lock is used. The feed line and its NOTIFY go in the same statement
(see pgschema.py for why the feed's ids come from a counter row).

Leases are judged as on every store: by watching renewal counts on the
watcher's monotonic clock (quantlab/store/leases.py). No host's wall clock and
no server ``now()`` decides anything, so clock skew between hosts cannot
expire a lease early.

PostgresStore has more than 15 methods: TableStore's primitives, and the messages, events and pruning, in SQL.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from quantlab.errors import CorruptRecord, StoreUnavailable
from quantlab.store.pgfeed import Listener, PgFeed, channel_for
from quantlab.store.pglink import PgLink, connect
from quantlab.store.pgschema import migrate
from quantlab.store.records import Event
from quantlab.store.store import check_id
from quantlab.store.records import T, decode
from quantlab.store.tablestore import TableStore
from quantlab.store.table import ABSENT, Change, Head

#: Feed lines and events kept; older ones are pruned now and then (a reader behind them makes a full pass).
CHANGES_KEPT = 200_000
EVENTS_KEPT = 200_000
#: Days an event is kept, however few there are.
EVENTS_MAX_AGE_DAYS = 90
#: Appends (feed lines and events) by one process between two prunes.
PRUNE_EVERY = 1_000

_encode = msgspec.json.Encoder().encode
_decode_event = msgspec.json.Decoder(Event).decode

# The feed tail shared by every announcing statement: bump the counter (row lock, held for this
# statement only), append the line, notify with its id. ``src`` is the CTE whose row was written.
_FEED_TAIL = """,
head AS (
    UPDATE qlab_feed_head SET id = id + 1 WHERE %(announce)s AND EXISTS (SELECT 1 FROM src) RETURNING id
), line AS (
    INSERT INTO qlab_changes (id, kind, key, version, worker)
    SELECT head.id, %(ckind)s, %(key)s, src.version, %(worker)s FROM head, src RETURNING id
)
SELECT (SELECT version FROM src), (SELECT count(pg_notify(%(channel)s, id::text)) FROM line)
"""

_UPDATE = """
WITH src AS (
    UPDATE qlab_records SET version = version + 1, data = %(data)s, gone = %(gone)s, nonce = %(nonce)s
    WHERE kind = %(kind)s AND key = %(key)s AND version = %(base)s RETURNING version
)""" + _FEED_TAIL

_INSERT = """
WITH src AS (
    INSERT INTO qlab_records (kind, key, version, data, gone, nonce)
    VALUES (%(kind)s, %(key)s, 1, %(data)s, %(gone)s, %(nonce)s) ON CONFLICT DO NOTHING RETURNING version
)""" + _FEED_TAIL

# Group commit of states: every (key, base, data, nonce) of the batch in one statement, so one
# transaction and one WAL flush. A row commits only at its base version (the same guard as one
# commit); the keys returned are the rows that won.
_STATES = """
WITH batch AS (
    SELECT * FROM unnest(%(keys)s::text[], %(bases)s::bigint[], %(datas)s::bytea[], %(nonces)s::text[])
        AS b(key, base, data, nonce)
), updated AS (
    UPDATE qlab_records r SET version = r.version + 1, data = b.data, gone = false, nonce = b.nonce
    FROM batch b WHERE b.base > 0 AND r.kind = 'state' AND r.key = b.key AND r.version = b.base RETURNING r.key
), inserted AS (
    INSERT INTO qlab_records (kind, key, version, data, gone, nonce)
    SELECT 'state', key, 1, data, false, nonce FROM batch WHERE base = 0 ON CONFLICT DO NOTHING RETURNING key
)
SELECT key FROM updated UNION ALL SELECT key FROM inserted
"""

_MESSAGE = """
WITH src AS (
    INSERT INTO qlab_messages (work_id, data) VALUES (%(key)s, %(data)s) RETURNING 0 AS version
)""" + _FEED_TAIL


# The events' counter row is locked until this statement commits, so the next append waits for
# it and takes a larger id: ids become visible strictly in order (pgschema.py says why).
APPEND_EVENT = """
WITH head AS (UPDATE qlab_events_head SET id = id + 1 RETURNING id)
INSERT INTO qlab_events (id, data) SELECT id, %(data)s FROM head
"""


class PgTable:
    """One kind of record: rows of qlab_records with that ``kind``."""

    def __init__(self, store: PostgresStore, kind: str) -> None:
        self.store = store
        self.kind = kind

    def head(self, key: str) -> Head:
        rows = self.store.link.read(
            "SELECT version, data, gone, nonce FROM qlab_records WHERE kind = %s AND key = %s", (self.kind, key)
        )
        if not rows:
            return ABSENT
        version, data, gone, nonce = rows[0]
        return Head(int(version), None if gone else bytes(data), nonce)

    def commit(self, key: str, base: Head, data: bytes | None) -> bool:
        return self.store.commit(self.kind, key, base, data, None)

    def keys(self) -> list[str]:
        rows = self.store.link.read("SELECT key FROM qlab_records WHERE kind = %s AND NOT gone", (self.kind,))
        return [r[0] for r in rows]

    def rows(self) -> list[tuple[str, int, bytes]]:
        """Every live record of the kind in one SELECT (a full pass over 10,000 Works is one round trip)."""
        rows = self.store.link.read(
            "SELECT key, version, data FROM qlab_records WHERE kind = %s AND NOT gone ORDER BY key", (self.kind,)
        )
        return [(r[0], int(r[1]), bytes(r[2])) for r in rows]


class PostgresStore(TableStore):
    feed: PgFeed

    def __init__(self, url: str, *, migrate_schema: bool = True) -> None:
        self.url = url
        self.link = PgLink(url)
        if migrate_schema:
            self.migrate()
        rows = self.link.read("SELECT current_schema()")
        self.channel = channel_for(str(rows[0][0]))
        self.feed = PgFeed(self.link, Listener(url, self.channel, lambda: self.feed.head()))
        self._tables: dict[str, PgTable] = {}
        self._reported: set[str] = set()
        self._appends = 0

    def migrate(self) -> tuple[int, int]:
        """Create or update the schema (idempotent; `qlab store migrate` runs it explicitly)."""
        conn = connect(self.url)  # its own connection: a transaction, never on the autocommit one
        try:
            return migrate(conn)
        finally:
            conn.close()

    def round_trips(self) -> int:
        return self.link.statements

    def _table(self, kind: str) -> PgTable:
        table = self._tables.get(kind)
        if table is None:
            table = self._tables[kind] = PgTable(self, kind)
        return table

    # ---- commits: the record, its feed line and the NOTIFY in one statement ----

    def _commit(self, kind: str, key: str, base: Head, data: bytes | None, change: Change | None) -> bool:
        return self.commit(kind, key, base, data, change)

    def commit(self, kind: str, key: str, base: Head, data: bytes | None, change: Change | None) -> bool:
        nonce = os.urandom(8).hex()
        params = {
            "kind": kind, "key": key, "base": base.version, "data": data, "gone": data is None, "nonce": nonce,
            "announce": change is not None, "ckind": kind, "worker": change.worker if change else "",
            "channel": self.channel,
        }
        try:
            rows = self.link.write(_INSERT if base.version == 0 else _UPDATE, params)
        except StoreUnavailable:
            return self._landed(kind, key, base, nonce)
        won = bool(rows) and rows[0][0] is not None
        if won and change is not None:
            self._maybe_prune()
        return won

    def _heads_of_states(self, keys: list[str]) -> list[Head]:
        rows = self.link.read(
            "SELECT key, version, data, gone, nonce FROM qlab_records WHERE kind = 'state' AND key = ANY(%s)", (keys,)
        )
        found = {r[0]: Head(int(r[1]), None if r[3] else bytes(r[2]), r[4]) for r in rows}
        return [found.get(key, ABSENT) for key in keys]

    def _commit_states(self, commits: list[tuple[str, Head, bytes]]) -> list[bool]:
        """One statement for the batch. A broken connection raises for all: writing again is harmless."""
        params = {
            "keys": [key for key, _, _ in commits], "bases": [base.version for _, base, _ in commits],
            "datas": [data for _, _, data in commits], "nonces": [os.urandom(8).hex() for _ in commits],
        }
        won = {row[0] for row in self.link.write(_STATES, params)}
        return [key in won for key, _, _ in commits]

    def _landed(self, kind: str, key: str, base: Head, nonce: str) -> bool:
        """The connection broke mid-commit: did our version land? Ask the record (the nonce is ours)."""
        head = self._table(kind).head(key)  # StoreUnavailable again: the outcome stays unknown
        if head.version == base.version + 1 and head.nonce == nonce:
            return True
        if head.version == base.version or head.version == base.version + 1:
            return False  # nothing landed, or another writer's version did: re-read and decide again
        raise StoreUnavailable(f"{kind}/{key}: the connection broke during a commit and the record moved on since")

    def _maybe_prune(self) -> None:
        self._appends += 1
        if self._appends % PRUNE_EVERY == 0:
            self.prune()

    def prune(self) -> None:
        """Drop the oldest feed lines and events: beyond the counts kept, and events past their age."""
        self.link.write("DELETE FROM qlab_changes WHERE id <= (SELECT id FROM qlab_feed_head) - %s", (CHANGES_KEPT,))
        self.link.write(
            "DELETE FROM qlab_events WHERE id <= (SELECT id FROM qlab_events_head) - %s OR at < now() - make_interval(days => %s)",
            (EVENTS_KEPT, EVENTS_MAX_AGE_DAYS),
        )

    # ---- reads in one statement ----

    def _list(self, kind: str, cls: type[T]) -> list[T]:
        out = []
        for key, version, data in self._table(kind).rows():
            try:
                out.append(decode(cls, data))
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                self._report_corrupt(kind, key, CorruptRecord(f"{kind}/{key} version {version} does not decode: {e}",
                                                                    version=version))
        return out

    def _report_corrupt(self, kind: str, key: str, error: CorruptRecord) -> None:
        if str(error) not in self._reported:  # once per process and version, not on every pass
            self._reported.add(str(error))
            super()._report_corrupt(kind, key, error)

    # ---- messages ----

    def push_message(self, work_id: str, data: Any) -> None:
        params = {
            "key": check_id("strategy", work_id), "data": _encode(data), "announce": True, "ckind": "inbox",
            "worker": "", "channel": self.channel,
        }
        self.link.write(_MESSAGE, params)

    def take_messages(self, work_id: str) -> list[Any]:
        rows = self.link.write("DELETE FROM qlab_messages WHERE work_id = %s RETURNING id, data", (work_id,))
        out = []
        for _, data in sorted(rows):
            try:
                out.append(msgspec.json.decode(bytes(data)))
            except msgspec.DecodeError:
                continue
        return out

    # ---- events ----

    def append_event(self, event: Event) -> None:
        self.link.write(APPEND_EVENT, {"data": _encode(event)})
        self._maybe_prune()

    def read_events(self, offset: int = 0) -> tuple[list[Event], int]:
        """Events after id ``offset``, and the id of the last one."""
        rows = self.link.read("SELECT id, data FROM qlab_events WHERE id > %s ORDER BY id", (offset,))
        events = []
        for _, data in rows:
            try:
                events.append(_decode_event(bytes(data)))
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
        return events, int(rows[-1][0]) if rows else offset

    def close(self) -> None:
        self.feed.listener.close()
        self.link.close()


__all__ = ["PostgresStore"]
