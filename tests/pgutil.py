"""Scratch PostgreSQL databases for tests: one per test, dropped after it.

The server is the one on 127.0.0.1:5432 (trust auth) unless QLAB_TEST_PG names
another admin URL. Without a reachable server the tests that need one skip
with one line saying why; under CI=true they fail instead, since CI has one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import Iterator

ADMIN_URLS = [
    os.environ.get("QLAB_TEST_PG", ""),
    "postgresql://root@127.0.0.1:5432/postgres",
    "postgresql://postgres@127.0.0.1:5432/postgres",
]

_admin: str | None = None
_why_not = ""


def admin_url() -> str | None:
    """An URL that may create databases, or None (and ``_why_not`` says why)."""
    global _admin, _why_not
    if _admin is not None or _why_not:
        return _admin
    try:
        import psycopg
    except ImportError:
        _why_not = "psycopg is not installed (pip install 'quantlab[postgres]')"
        return None
    errors = []
    for url in filter(None, ADMIN_URLS):
        try:
            with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as e:
            errors.append(" ".join(str(e).split())[:120])
            continue
        _admin = url
        return url
    _why_not = f"no PostgreSQL server reachable at 127.0.0.1:5432 ({errors[-1] if errors else 'no URL'})"
    return None


def require_postgres() -> str:
    """The admin URL, or skip (fail under CI=true) with one line saying why."""
    from tests.conftest import lacking  # here: the soak (scripts/chaos.py) imports this module without pytest's conftest

    url = admin_url()
    if url is None:
        lacking(_why_not)
    return url


@contextlib.contextmanager
def scratch_database(admin: str | None = None) -> Iterator[str]:
    """A new empty database's URL (on ``admin``'s server); dropped (its connections ended) afterwards."""
    import psycopg

    admin = admin or require_postgres()
    name = f"qlab_test_{secrets.token_hex(6)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_db(admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _with_db(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")
