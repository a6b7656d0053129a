"""The values a store backend and the store interface pass each other: a record's head, a change.

Backend-neutral: the file, memory and PostgreSQL backends build them, and
``store.py`` reads them, so none of them has to import another backend to
speak to the interface.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec


class Head(NamedTuple):
    """A record's current version as read: ``data`` None when absent (never written, or deleted)."""

    version: int
    data: bytes | None
    nonce: str = ""
    ancestors: tuple[str, ...] = ()  #: the nonces of its predecessors, newest first
    frames: int = 0  #: states appended to this version by its writer (statelog.py)


ABSENT = Head(0, None, "")


class Change(msgspec.Struct, frozen=True):
    """One line of the change feed (feed.py): which record changed, to which version."""

    kind: str
    key: str
    version: int
    worker: str = ""  #: for works: the assigned worker after the change ("" for none)


class Cursor(NamedTuple):
    """A reader's place in the change feed."""

    segment: int
    offset: int
