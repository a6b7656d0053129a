"""Open the store a command names: the home's file store, or a PostgreSQL database (--store URL)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quantlab.config import Paths
from quantlab.errors import ConfigError
from quantlab.store.filestore import FileStore
from quantlab.store.store import Store

if TYPE_CHECKING:
    from quantlab.store.pgstore import PostgresStore

_POSTGRES = ("postgresql://", "postgres://")


def is_postgres(url: str) -> bool:
    return url.startswith(_POSTGRES)


def shown(paths: Paths) -> str:
    """The store as a person may see it: a database URL without its password, or the file store's folder."""
    url = paths.store_url
    if not url:
        return f"{paths.store} (files)"
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit  # only `config show` shows a URL

    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
                      safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def open_store(paths: Paths) -> Store:
    url = paths.store_url
    if not url:
        return FileStore(paths.store)
    if is_postgres(url):
        return _postgres(url)
    raise ConfigError(f"unknown store URL {url!r}: use postgresql://USER@HOST[:PORT]/DATABASE, or no --store for the file store")


def migrate_store(paths: Paths) -> str:
    """`qlab store migrate`: what it did, in words."""
    if not is_postgres(paths.store_url):
        open_store(paths).close()  # validates the URL; the file store converts old layouts when opened
        return f"the file store at {paths.store} needs no migration"
    store = _postgres(paths.store_url, migrate=False)
    try:
        before, after = store.migrate()
    finally:
        store.close()
    return f"schema at version {after}" + (f" (was {before})" if before != after else " (up to date)")


def _postgres(url: str, *, migrate: bool = True) -> PostgresStore:
    try:
        from quantlab.store.pgstore import PostgresStore
    except ImportError as e:
        raise ConfigError(f"the PostgreSQL store needs psycopg: pip install 'quantlab[postgres]' ({e})") from None
    return PostgresStore(url, migrate_schema=migrate)
