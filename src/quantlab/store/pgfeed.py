"""The PostgreSQL change feed: a table read by id, and NOTIFY to learn its end cheaply.

Loops ask ``end()`` every 20 ms. Asking the server each time would cost a
round trip per loop per 20 ms, so a dedicated autocommit connection LISTENs
on the store's channel; a commit that appends to the feed also notifies with
the new change id (ids only, far below the 8,000-byte payload limit), and
``end()`` just drains what arrived on that socket (a non-blocking read).

NOTIFY only wakes: the feed table is the truth. Notifications sent while the
listener was disconnected are lost, so after every (re)connect and LISTEN it
reads the feed's head again. While it cannot connect, ``end()`` falls back to
reading the head on the store's own connection, at most every FALLBACK_EVERY.
"""

from __future__ import annotations

import time
from typing import Callable

import psycopg

from quantlab.errors import QuantlabError
from quantlab.store.table import Change, Cursor
from quantlab.store.pglink import PgLink, Row, connect

#: Seconds between fallback reads of the feed's head while the listener is down.
FALLBACK_EVERY = 0.25
#: Seconds between attempts to reopen the listening connection.
RELISTEN_EVERY = 1.0
#: Most feed lines returned by one read (the cursor then says where to go on).
READ_LIMIT = 20_000

HEAD_SQL = "SELECT id FROM qlab_feed_head"
#: The lines after a cursor, each with the head; the head alone (a NULL line) when there are none.
READ_SQL = """
SELECT h.id, c.id, c.kind, c.key, c.version, c.worker FROM qlab_feed_head h LEFT JOIN LATERAL (
    SELECT id, kind, key, version, worker FROM qlab_changes WHERE id > %s ORDER BY id LIMIT %s
) c ON true ORDER BY c.id
"""


def channel_for(schema: str) -> str:
    """One channel per store: a database may hold several stores in separate schemas."""
    return f"qlab_changes_{schema}"[:63]


class Listener:
    def __init__(self, url: str, channel: str, head: Callable[[], int], mono: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.channel = channel
        self.head = head  #: the feed's head read on the store's connection (the fallback)
        self.mono = mono
        self.latest = 0
        self._conn: psycopg.Connection[Row] | None = None
        self._retry_at = 0.0
        self._fallback_at = 0.0

    def end(self) -> int:
        if self._conn is None and self.mono() >= self._retry_at:
            self._listen()
        if self._conn is None:
            return self._fallback()
        try:
            pgconn = self._conn.pgconn
            pgconn.consume_input()  # non-blocking: libpq sockets always are
            while (note := pgconn.notifies()) is not None:
                self._saw(note.extra.decode())
            if pgconn.status != psycopg.pq.ConnStatus.OK:
                raise psycopg.OperationalError("listening connection lost")
        except psycopg.Error:
            self._lost()
            return self._fallback()
        return self.latest

    def _listen(self) -> None:
        self._retry_at = self.mono() + RELISTEN_EVERY
        try:
            conn = connect(self.url)
            conn.add_notify_handler(lambda note: self._saw(note.payload))  # those arriving during our own queries
            conn.execute(f'LISTEN "{self.channel}"')
            row = conn.execute(HEAD_SQL).fetchone()  # after LISTEN: nothing committed in between is missed
        except (QuantlabError, psycopg.Error):
            return
        self._conn = conn
        self.latest = max(self.latest, int(row[0]) if row else 0)

    def _saw(self, payload: str) -> None:
        if payload.isdigit():
            self.latest = max(self.latest, int(payload))

    def _fallback(self) -> int:
        now = self.mono()
        if now >= self._fallback_at:
            self._fallback_at = now + FALLBACK_EVERY
            try:
                self.latest = max(self.latest, self.head())
            except QuantlabError:
                pass  # unreachable: loops carry on with what they know
        return self.latest

    def _lost(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None

    def close(self) -> None:
        self._lost()


class PgFeed:
    """The feed over ``qlab_changes``; a cursor is ``Cursor(1, last change id read)``."""

    def __init__(self, link: PgLink, listener: Listener) -> None:
        self.link = link
        self.listener = listener

    def head(self) -> int:
        rows = self.link.read(HEAD_SQL)
        return int(rows[0][0]) if rows else 0

    def end(self) -> Cursor:
        return Cursor(1, self.listener.end())

    def append(self, change: Change) -> None:
        raise NotImplementedError("PostgresStore appends in the statement that commits")

    def read(self, cursor: Cursor) -> tuple[list[Change], Cursor, bool]:
        # The head comes along in the same round trip: an idle loop's read finds no line, and then
        # needs the head to tell "nothing new" from "the database was replaced".
        rows = self.link.read(READ_SQL, (cursor.offset, READ_LIMIT))
        head = int(rows[0][0]) if rows else 0
        rows = [r for r in rows if r[1] is not None]
        if not rows:
            if head < cursor.offset:  # the database was replaced under us: start over
                return [], Cursor(1, head), True
            return [], cursor, False
        lost = int(rows[0][1]) != cursor.offset + 1  # ids are dense: a hole was pruned away
        changes = [Change(kind=r[2], key=r[3], version=int(r[4]), worker=r[5]) for r in rows]
        last = int(rows[-1][1])
        self.listener.latest = max(self.listener.latest, last)
        return changes, Cursor(1, last), lost
