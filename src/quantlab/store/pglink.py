"""One PostgreSQL connection for a store, reopened after a failure or a fork.

Autocommit throughout: every write is one statement, so the server never holds
a row lock on behalf of a client that paused between two statements. A read
that fails on a broken connection is retried once on a fresh one; a write is
not (it may have landed): the caller finds out what happened from the record.

Connection defaults keep a dead network from stalling a loop for long:
``connect_timeout`` and ``tcp_user_timeout`` bound how long a call can block
when packets stop being acknowledged (a URL may override them), and every call
waits at most CALL_TIMEOUT for its answer, so a connection that stays up but
goes silent (a hung pooler or proxy in between) is dropped and reopened too.
A worker's fence never waits on any of this (quantlab/worker/fenceguard.py).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import conninfo

from quantlab.errors import ConfigError, StoreUnavailable

Row = tuple[Any, ...]

#: libpq settings used unless the URL sets them: seconds to connect, ms a send may stay unacknowledged.
DEFAULTS = {"connect_timeout": "3", "tcp_user_timeout": "3000", "keepalives_idle": "5", "keepalives_interval": "2"}
#: Seconds after a failed connect before the next attempt (calls in between fail at once).
RECONNECT_EVERY = 0.5
#: Seconds one statement may wait for the server's answer before its connection is given up.
CALL_TIMEOUT = 5.0


class _BoundedConnection(psycopg.Connection[Row]):
    """A connection whose every wait for the server ends after CALL_TIMEOUT (an OperationalError)."""

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        return super().wait(gen, interval=interval, timeout=CALL_TIMEOUT if timeout is None else timeout)


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def connect(url: str) -> psycopg.Connection[Row]:
    try:
        params = {**DEFAULTS, **conninfo.conninfo_to_dict(url)}
    except psycopg.ProgrammingError as e:
        raise ConfigError(f"bad store URL {redact(url)}: {e}") from None
    try:
        return _BoundedConnection.connect(conninfo.make_conninfo("", **params), autocommit=True)
    except psycopg.OperationalError as e:
        reason = " ".join(str(e).split())
        raise StoreUnavailable(f"cannot reach the store at {redact(url)}: {reason}") from None


class PgLink:
    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Row] | None = None
        self._pid = 0
        self._retry_at = 0.0
        self.reconnects = 0  #: connections opened after the first (tests and figures)
        self.statements = 0  #: statements sent, each one round trip (metrics and figures)

    def conn(self) -> psycopg.Connection[Row]:
        with self._lock:
            conn = self._conn
            if conn is not None and not conn.closed and self._pid == os.getpid():
                return conn
            if self._pid and self._pid != os.getpid():
                conn = None  # a forked child: the parent's socket is not ours to use, nor to close
            elif conn is not None:
                conn.close()
            self._conn = None
            now = time.monotonic()
            if now < self._retry_at:  # a connect just failed: do not hammer a server that is down
                raise StoreUnavailable(f"the store at {redact(self.url)} is unreachable; retrying shortly")
            try:
                conn = connect(self.url)
            except StoreUnavailable:
                self._retry_at = now + RECONNECT_EVERY
                raise
            if self._pid == os.getpid():
                self.reconnects += 1
            self._conn, self._pid = conn, os.getpid()
            return conn

    def drop(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def read(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
        """Rows of a read-only statement; retried once on a fresh connection."""
        for attempt in (1, 2):
            try:
                self.statements += 1
                return self.conn().execute(sql, params).fetchall()
            except psycopg.OperationalError as e:
                self.drop()
                if attempt == 2:
                    raise StoreUnavailable(f"store read failed: {' '.join(str(e).split())}") from None
        raise AssertionError("unreachable")

    def write(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
        """Rows of one writing statement; StoreUnavailable when it may or may not have landed."""
        try:
            self.statements += 1
            cur = self.conn().execute(sql, params)
            return cur.fetchall() if cur.description else []
        except psycopg.OperationalError as e:
            self.drop()
            raise StoreUnavailable(f"store write failed: {' '.join(str(e).split())}") from None

    def close(self) -> None:
        self.drop()
