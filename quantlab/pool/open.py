"""Open the store of a home directory."""

from __future__ import annotations

from quantlab.config import Paths
from quantlab.pool.filestore import FileStore
from quantlab.pool.store import Store


def open_store(paths: Paths) -> Store:
    return FileStore(paths.store)
