"""The PostgreSQL store's schema, created and migrated idempotently.

Every table carries the ``qlab_`` prefix, so a store can share a database (or
live in its own schema: put ``options=-csearch_path=NAME`` in the URL).

- ``qlab_records``: one row per record, ``(kind, key)``; ``version`` is the
  compare-and-swap token, bumped by every commit; a delete keeps the row as a
  tombstone (``gone``) so the version, and every fencing token derived from
  it, survives a delete and a re-create. ``nonce`` names the last writer, so a
  writer whose connection broke mid-commit can tell whether it landed.
- ``qlab_changes``: the change feed. Ids come from the one-row
  ``qlab_feed_head`` counter, bumped in the same statement as the commit: the
  row lock serialises announcing commits for the length of one statement, so
  ids become visible strictly in order and a reader's cursor never skips a
  change still in flight (a bigserial would: ids are taken before commit).
- ``qlab_events``: the event log, followed by id (`qlab events --follow`).
  Its ids come from the one-row ``qlab_events_head`` the same way (version
  2): with a sequence, an append that took id 7 could commit after one that
  took id 8, and a follower that had read up to 8 would never see 7. ``at``
  is the server's time of the append, for pruning by age.
- ``qlab_messages``: append-only (a bigserial is fine: messages are taken by
  work id, all at once).

Migrations run in one transaction under ``LOCK TABLE qlab_schema`` (a
transaction lock, gone at commit; no session advisory lock anywhere).
"""

from __future__ import annotations

import psycopg

from quantlab.errors import ConfigError

#: (version, statements): applied in order, each once per database.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE qlab_records (
            kind text NOT NULL,
            key text NOT NULL,
            version bigint NOT NULL,
            data bytea,
            gone boolean NOT NULL DEFAULT false,
            nonce text NOT NULL DEFAULT '',
            PRIMARY KEY (kind, key)
        );
        CREATE TABLE qlab_feed_head (
            one smallint PRIMARY KEY DEFAULT 1 CHECK (one = 1),
            id bigint NOT NULL
        );
        INSERT INTO qlab_feed_head (id) VALUES (0);
        CREATE TABLE qlab_changes (
            id bigint PRIMARY KEY,
            kind text NOT NULL,
            key text NOT NULL,
            version bigint NOT NULL,
            worker text NOT NULL DEFAULT ''
        );
        CREATE TABLE qlab_events (
            id bigserial PRIMARY KEY,
            data bytea NOT NULL
        );
        CREATE TABLE qlab_messages (
            id bigserial PRIMARY KEY,
            work_id text NOT NULL,
            data bytea NOT NULL
        );
        CREATE INDEX qlab_messages_work ON qlab_messages (work_id, id);
        """,
    ),
    (
        2,
        """
        CREATE TABLE qlab_events_head (
            one smallint PRIMARY KEY DEFAULT 1 CHECK (one = 1),
            id bigint NOT NULL
        );
        INSERT INTO qlab_events_head (id) SELECT coalesce(max(id), 0) FROM qlab_events;
        ALTER TABLE qlab_events ALTER COLUMN id DROP DEFAULT;
        DROP SEQUENCE qlab_events_id_seq;
        ALTER TABLE qlab_events ADD COLUMN at timestamptz NOT NULL DEFAULT now();
        CREATE INDEX qlab_events_at ON qlab_events (at);
        """,
    ),
]

SCHEMA_VERSION = MIGRATIONS[-1][0]
#: Attempts when two processes create the schema table at the same moment.
_CREATE_ATTEMPTS = 5


def migrate(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[int, int]:
    """Bring the schema up to date; (version before, version after)."""
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            return _migrate_once(conn)
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
            if attempt == _CREATE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _current(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    row = conn.execute("SELECT to_regclass('qlab_schema') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    row = conn.execute("SELECT max(version) FROM qlab_schema").fetchone()
    return int(row[0]) if row and row[0] is not None else 0  # type: ignore[call-overload]


def _migrate_once(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[int, int]:
    seen = _current(conn)  # the common case, every open: up to date, no lock taken
    if seen > SCHEMA_VERSION:
        raise ConfigError(f"the store's schema is at version {seen}, newer than this quantlab knows ({SCHEMA_VERSION}): upgrade quantlab")
    if seen == SCHEMA_VERSION:
        return seen, seen
    with conn.transaction():
        conn.execute("CREATE TABLE IF NOT EXISTS qlab_schema (version int NOT NULL)")
        conn.execute("LOCK TABLE qlab_schema IN EXCLUSIVE MODE")  # a second migrator waits here, then sees our work
        row = conn.execute("SELECT max(version) FROM qlab_schema").fetchone()
        before = int(row[0]) if row and row[0] is not None else 0  # type: ignore[call-overload]
        for version, statements in MIGRATIONS:
            if version > before:
                conn.execute(statements)
        if SCHEMA_VERSION > before:
            conn.execute("DELETE FROM qlab_schema")
            conn.execute("INSERT INTO qlab_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
        return before, max(before, SCHEMA_VERSION)
