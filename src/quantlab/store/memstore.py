"""MemoryStore: the store contract in one process, for unit tests of the director and the manager.

Same record logic as the file store (TableStore); tables are dicts behind a
threading lock held only for the compare-and-swap itself.
"""

from __future__ import annotations

import threading
from typing import Any

import msgspec

from quantlab.store.records import Event
from quantlab.store.tablestore import TableStore
from quantlab.store.table import ABSENT, Change, Cursor, Head


class MemoryTable:
    def __init__(self) -> None:
        self.heads: dict[str, Head] = {}
        self.lock = threading.Lock()

    def head(self, key: str) -> Head:
        return self.heads.get(key, ABSENT)

    def commit(self, key: str, base: Head, data: bytes | None) -> bool:
        with self.lock:
            if self.heads.get(key, ABSENT).version != base.version:
                return False
            self.heads[key] = Head(base.version + 1, data, str(base.version + 1))
            return True

    def keys(self) -> list[str]:
        return list(self.heads)


class MemoryFeed:
    def __init__(self) -> None:
        self.lines: list[Change] = []

    def append(self, change: Change) -> None:
        self.lines.append(change)

    def end(self) -> Cursor:
        return Cursor(1, len(self.lines))

    def read(self, cursor: Cursor) -> tuple[list[Change], Cursor, bool]:
        return self.lines[cursor.offset :], self.end(), False


class MemoryStore(TableStore):
    def __init__(self) -> None:
        self.tables: dict[str, MemoryTable] = {}
        self.feed = MemoryFeed()
        self.events: list[Event] = []
        self.inbox: dict[str, list[Any]] = {}

    def _table(self, kind: str) -> MemoryTable:
        return self.tables.setdefault(kind, MemoryTable())

    def push_message(self, work_id: str, data: Any) -> None:
        self.inbox.setdefault(work_id, []).append(msgspec.json.decode(msgspec.json.encode(data)))
        self.feed.append(Change(kind="inbox", key=work_id, version=0))

    def take_messages(self, work_id: str) -> list[Any]:
        return self.inbox.pop(work_id, [])

    def append_event(self, event: Event) -> None:
        self.events.append(event)

    def read_events(self, offset: int = 0) -> tuple[list[Event], int]:
        return self.events[offset:], len(self.events)

    def close(self) -> None:
        pass
