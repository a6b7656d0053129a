"""The store protocol, and the record logic every table-based store shares.

Whatever the backend, the rules are the same (tests/unit/test_store_contract.py
runs one suite against each):

- **No lock another process waits on.** Every change is a compare-and-swap on
  one record's version: read version v, commit v+1 only if the record is still
  at v; the loser re-reads and applies its update again. So an update function
  may run more than once and must decide from the record it is given.
- **Leases and fences are data.** A worker's registration carries its holder
  and renewal count, the director's leadership is a ``Leader`` record with a
  term, a Work's epoch is never handed out twice for one id (a re-created Work
  starts above every epoch its predecessors had), and a strategy's state
  carries the epoch of its writer and refuses older ones.
- **Durable or an error.** A commit that returns has reached the disk (or the
  database); one that raises changed nothing. What follows a commit is a hint
  or a record of it (its feed line, its events): failing to write one is a
  warning (``warn``), never an error, since the commit stands.
- **A record that does not decode is quarantined**: reported once as an event
  and skipped by listings, kept as it is, and replaced only by a write that
  names its version (``over_corrupt``, ``discard_work``).
- **Readers pay for what changed.** ``changes`` returns what was committed
  since a cursor, so loops re-read only those records.

``TableStore`` implements all of it over two small primitives a backend
provides: a versioned table per kind (head, commit) and a feed. FileStore,
MemoryStore and PostgresStore are such backends.

Store has more than 15 methods: it is the protocol every caller and backend shares, one method per operation.
"""

from __future__ import annotations

import re
from typing import Any, Callable, ContextManager, Iterable, Protocol, Sequence

from quantlab.errors import BadInput, StoreUnavailable
from quantlab.store.records import Director, Event, Leader, Resource, StrategyState, Work
from quantlab.store.statewrites import Outcome, StateWrite
from quantlab.store.table import Change, Cursor

WorkUpdate = Callable[[Work], Work | None]
"""Gets the current Work, returns the new one (or None: leave it as it is).

It may raise (e.g. StaleWriter) to refuse the write; nothing is written then.
It may be called again with a newer Work when another writer got there first.
"""

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")

def check_id(kind: str, value: str) -> str:
    """Ids become file names and routing ids: keep them to a safe alphabet."""
    if not _ID.match(value):
        raise BadInput(
            f"{kind} id {value!r} is not valid: use letters, digits and _.@- (at most 128, not starting with a symbol)"
        )
    return value


class Store(Protocol):
    # works
    def add_work(self, work: Work) -> Work:
        """Create a Work; its epoch starts above any its id had before. Conflict if it exists."""
        ...

    def get_work(self, work_id: str) -> Work: ...
    def find_work(self, work_id: str) -> Work | None: ...
    def list_works(self) -> list[Work]: ...
    def update_work(self, work_id: str, update: WorkUpdate) -> Work: ...
    def remove_work(self, work_id: str, only_if: Callable[[Work], bool] | None = None) -> bool:
        """Delete the Work (if ``only_if`` holds for it as it is then) and forget its state.

        A late write from any of its epochs is refused. NotFound when there is none; False
        when ``only_if`` said no.
        """
        ...

    def discard_work(self, work_id: str) -> bool:
        """Delete a Work whose head does not decode, and forget its state: what `remove` does
        when the Work machine cannot read the record.

        A late write from any epoch it could have had is refused. False (nothing written) when
        the head decodes: that one is removed through the Work machine. NotFound when there is none.
        """
        ...

    # resources (workers)
    def find_resource(self, worker_id: str) -> Resource | None: ...
    def list_resources(self) -> list[Resource]: ...
    def update_resource(
        self, worker_id: str, update: Callable[[Resource | None], Resource | None], *, announce: bool = True,
        over_corrupt: int = 0,
    ) -> Resource | None:
        """Compare-and-swap one worker record; ``announce`` False for renewals nobody needs to wake for.

        A record that does not decode raises CorruptRecord, unless ``over_corrupt`` names its
        version: then ``update`` gets None and what it returns replaces it.
        """
        ...

    def remove_resource(self, worker_id: str, only_if: Callable[[Resource], bool] | None = None) -> bool: ...

    # directors
    def put_director(self, director: Director) -> None: ...
    def list_directors(self) -> list[Director]: ...
    def remove_director(self, director_id: str) -> None: ...
    def find_leader(self) -> Leader | None: ...
    def update_leader(
        self, update: Callable[[Leader | None], Leader | None], *, over_corrupt: int = 0
    ) -> Leader | None:
        """Compare-and-swap the leadership record (``over_corrupt``: as for ``update_resource``)."""
        ...

    # strategy state
    def load_state(self, work_id: str) -> StrategyState | None:
        """The stored state; None when there is none; CorruptRecord when it does not decode."""
        ...

    def save_state(self, work_id: str, epoch: int, state_json: bytes | None) -> StrategyState:
        """Write as the holder of ``epoch`` (None keeps the state and only stamps the epoch).

        StaleWriter when a newer epoch holds the state.
        """
        ...

    def durable_together(self) -> ContextManager[None]:
        """Inside, this thread's commits may be made durable together when the block ends.

        A caller that writes many records at once (`qlab apply`) tells nobody before the block
        ends. Stores whose every commit is cheap to make durable do nothing special.
        """
        ...

    def durable_later(self) -> ContextManager[None]:
        """Inside, this thread's commits leave making them durable to a later ``sync()``.

        For a caller that syncs on another thread (the worker's state commits) and tells
        nobody of a write before that sync returned. Stores whose commits are durable as
        they return (PostgreSQL) do nothing special.
        """
        ...

    def sync(self) -> None:
        """Make durable every commit made inside ``durable_later`` so far, by any thread."""
        ...

    def save_states(self, writes: Sequence[StateWrite]) -> list[Outcome]:
        """Write many states as one durable step (group commit); an outcome per write, in order.

        Each write is fenced like save_state: a StaleWriter outcome refuses that one only.
        Raises (OSError, StoreUnavailable) when the store failed: then none is known durable.
        """
        ...

    # opaque documents (paper accounts)
    def get_blob(self, kind: str, key: str) -> bytes | None: ...
    def blob_keys(self, kind: str) -> list[str]: ...
    def update_blob(self, kind: str, key: str, update: Callable[[bytes | None], bytes | None], *,
                    over_corrupt: int = 0) -> bytes | None:
        """Compare-and-swap one document; None from ``update`` writes nothing.

        A document whose stored form does not parse raises CorruptRecord, unless it is version
        ``over_corrupt``: ``update`` then gets None for it and the new version goes on top.
        """
        ...

    # messages for a strategy's st_message hook (`qlab strategy send`), taken by its worker
    def push_message(self, work_id: str, data: Any) -> None: ...
    def take_messages(self, work_id: str) -> list[Any]: ...

    # events: append-only
    def append_event(self, event: Event) -> None: ...
    def read_events(self, offset: int = 0) -> tuple[list[Event], int]: ...

    # the change feed
    def changes_end(self) -> Cursor: ...
    def changes(self, cursor: Cursor) -> tuple[list[Change], Cursor, bool]:
        """Changes after ``cursor``, the next cursor, and True when some were lost (make a full pass)."""
        ...

    def warn(self, message: str) -> None:
        """Say what went wrong without failing the call: a commit whose feed line or event was not written."""
        ...

    def close(self) -> None: ...


def record_events(store: Store, events: Iterable[Event]) -> None:
    """Append the events of a commit that has landed; one that cannot be written is a warning.

    The commit stands either way, so the call that made it must not fail: its caller would
    report an error for a change that was made.
    """
    for event in events:
        try:
            store.append_event(event)
        except (OSError, StoreUnavailable) as e:
            what = f" of {event.strategy}" if event.strategy else ""
            store.warn(f"the change is written, but not its {event.kind} event{what}: "
                       f"{getattr(e, 'strerror', None) or e}")


__all__ = ["Change", "Cursor", "Store", "WorkUpdate", "check_id", "record_events"]
