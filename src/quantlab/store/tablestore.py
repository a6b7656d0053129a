"""TableStore: the store's rules (quantlab/store/store.py) over two small primitives.

A backend provides a versioned table per kind of record (``head``, ``commit``)
and a feed of changes; TableStore turns them into the Store protocol: the
compare-and-swap loop, quarantine of records that do not decode, the epoch
floor of re-created Works, fenced state writes, and the feed line each commit
leaves for the processes that must look. FileStore, MemoryStore and
PostgresStore are such backends.

Over 400 lines: it is one protocol's implementation, every method on the same CAS loop.
TableStore has more than 15 methods: one for each of the Store protocol's operations, over the same CAS loop.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, ContextManager, Protocol, Sequence

import msgspec

from quantlab import exits
from quantlab.errors import Conflict, CorruptRecord, NotFound, StaleWriter, StoreUnavailable
from quantlab.store.records import NO_STATE, T, decode, Director, Event, EventKind, Leader, Resource, StrategyState, Work
from quantlab.store import statewrites
from quantlab.store.statewrites import Outcome, StateWrite
from quantlab.store.store import WorkUpdate, check_id
from quantlab.store.table import Change, Cursor, Head
from quantlab.store.wakes import work_hint


#: Compare-and-swap attempts before a write gives up (each loss means another writer made progress).
CAS_ATTEMPTS = 1000



class Table(Protocol):
    """One kind of record in a backend: versioned heads and compare-and-swap commits."""

    def head(self, key: str) -> Head: ...
    def commit(self, key: str, base: Head, data: bytes | None) -> bool: ...
    def keys(self) -> list[str]: ...


class Feed(Protocol):
    def append(self, change: Change) -> None: ...
    def end(self) -> Cursor: ...
    def read(self, cursor: Cursor) -> tuple[list[Change], Cursor, bool]: ...


_encode = msgspec.json.Encoder().encode


class TableStore:
    """Store over a backend's tables and feed. Subclasses provide ``_table``, ``feed`` and events."""

    feed: Feed
    #: Called with each commit's duration in seconds (a process serving metrics sets it).
    commit_observer: Callable[[float], None] | None = None
    #: Where ``warn`` goes: a daemon sets its log; otherwise one ``warning:`` line on stderr.
    on_warning: Callable[[str], None] | None = None

    def _table(self, kind: str) -> Table:
        raise NotImplementedError

    def round_trips(self) -> int:
        """Statements sent to a database server so far (0 for a store without one)."""
        return 0

    def append_event(self, event: Event) -> None:
        raise NotImplementedError

    def warn(self, message: str) -> None:
        (self.on_warning or exits.warning)(message)

    # ---- generic records ----

    def _read(self, kind: str, key: str, cls: type[T]) -> tuple[T | None, Head]:
        record, head, error = self._read_any(kind, key, cls)
        if error is not None:
            raise error
        return record, head

    def _read_any(self, kind: str, key: str, cls: type[T]) -> tuple[T | None, Head, CorruptRecord | None]:
        """The record (None when absent or when it does not decode), its head, and why it does not decode."""
        try:
            head = self._table(kind).head(check_id(kind, key))
        except CorruptRecord as e:  # the version's own file does not parse: its number is all we know
            return None, Head(e.version, None), e
        if head.data is None:
            return None, head, None
        try:
            return decode(cls, head.data), head, None
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            error = CorruptRecord(f"{kind}/{key} version {head.version} does not decode: {e}", version=head.version)
            return None, head, error

    def _list(self, kind: str, cls: type[T]) -> list[T]:
        out = []
        for key in sorted(self._table(kind).keys()):
            try:
                record, _ = self._read(kind, key, cls)
            except CorruptRecord as e:
                self._report_corrupt(kind, key, e)
                continue
            if record is not None:
                out.append(record)
        return out

    def _report_corrupt(self, kind: str, key: str, error: CorruptRecord) -> None:
        """A record that does not decode is skipped and reported; it stays for the operator."""
        # A reader that cannot write (a read-only home, a full disk) still reads everything else.
        with contextlib.suppress(OSError, StoreUnavailable):
            self.append_event(Event(ts=time.time(), kind=EventKind.QUARANTINED, detail=f"{kind}/{key}: {error}"))

    def _cas(
        self,
        kind: str,
        key: str,
        cls: type[T],
        update: Callable[[T | None, Head], T | None],
        *,
        delete: bool = False,
        announce: Callable[[T | None, T | None], str | None] | None = None,
        over_corrupt: int = 0,
    ) -> tuple[T | None, Head]:
        """Apply ``update`` to the current record until a commit wins; returns the record and its head.

        ``update`` returns the new record, or None to write nothing (with ``delete``: None deletes).
        ``announce`` says what to append to the feed for a commit (the worker hint), None for nothing.
        A record that does not decode raises CorruptRecord, unless it is version ``over_corrupt``:
        it is reported, ``update`` gets None for it, and the new version goes on top (the bad
        one stays below it in the history).
        """
        check_id(kind, key)
        for _ in range(CAS_ATTEMPTS):
            current, head, error = self._read_any(kind, key, cls)
            if error is not None:
                if not over_corrupt or error.version != over_corrupt:
                    raise error
                self._report_corrupt(kind, key, error)
            new = update(current, head)
            if new is None and not delete:
                return current, head
            data = None if new is None else _encode(new)
            hint = announce(current, new) if announce else None
            change = None if hint is None else Change(kind=kind, key=key, version=head.version + 1, worker=hint)
            started = time.perf_counter()
            won = self._commit(kind, key, head, data, change)
            if self.commit_observer is not None:
                self.commit_observer(time.perf_counter() - started)
            if won:
                return new, Head(head.version + 1, data)
        raise Conflict(f"{kind}/{key}: gave up after {CAS_ATTEMPTS} lost races")

    def _commit(self, kind: str, key: str, base: Head, data: bytes | None, change: Change | None) -> bool:
        """Commit version base + 1 and, if it won, its feed line; False when another writer won.

        A backend that can make both one atomic step (PostgreSQL: one statement) overrides this.
        """
        if not self._table(kind).commit(key, base, data):
            return False
        if change is not None:
            try:
                self.feed.append(change)
            except OSError as e:
                self.warn(f"{kind}/{key} version {base.version + 1} is written, but not its change-feed line, "
                          f"so the loops see it at their next full pass: {e.strerror or e}")
        return True

    # ---- works ----

    def add_work(self, work: Work) -> Work:
        floor = self._epoch_floor(work.id)

        def create(current: Work | None, head: Head) -> Work:
            if current is not None:
                raise Conflict(f"strategy {work.id!r} already exists")
            return msgspec.structs.replace(work, epoch=max(work.epoch, floor, head.version))

        new, _ = self._cas("works", work.id, Work, create, announce=work_hint)
        assert new is not None
        return new

    def _epoch_floor(self, work_id: str) -> int:
        """Above every epoch a Work of this id ever had: its removal stamped its state with it."""
        try:
            record = self.load_state(work_id)
        except CorruptRecord:
            return self._table("state").head(work_id).version
        return record.epoch if record is not None else 0

    def find_work(self, work_id: str) -> Work | None:
        return self._read("works", work_id, Work)[0]

    def get_work(self, work_id: str) -> Work:
        work = self.find_work(work_id)
        if work is None:
            raise NotFound(f"no strategy {work_id!r}")
        return work

    def list_works(self) -> list[Work]:
        return self._list("works", Work)

    def update_work(self, work_id: str, update: WorkUpdate) -> Work:
        def apply(current: Work | None, head: Head) -> Work | None:
            if current is None:
                raise NotFound(f"no strategy {work_id!r}")
            return update(msgspec.structs.replace(current))  # a copy: a retried update starts clean

        new, _ = self._cas("works", work_id, Work, apply, announce=work_hint)
        assert new is not None
        return new

    def remove_work(self, work_id: str, only_if: Callable[[Work], bool] | None = None) -> bool:
        last_epoch = 0

        def gone(current: Work | None, head: Head) -> None:
            nonlocal last_epoch
            if current is None:
                raise NotFound(f"no strategy {work_id!r}")
            if only_if is not None and not only_if(msgspec.structs.replace(current)):
                raise _Unchanged
            last_epoch = current.epoch
            return None

        try:
            self._cas("works", work_id, Work, gone, delete=True, announce=work_hint)
        except _Unchanged:
            return False
        # The state is forgotten with a stamp above every epoch the Work had, so a late write
        # from any old child is refused, and a re-created Work starts above it (_epoch_floor).
        self._stamp_state(work_id, last_epoch + 1, forget=True)
        return True

    def discard_work(self, work_id: str) -> bool:
        for _ in range(CAS_ATTEMPTS):
            _, head, error = self._read_any("works", work_id, Work)
            if error is None:
                if head.data is None:
                    raise NotFound(f"no strategy {work_id!r}")
                return False
            # Its epoch is unknown. It started at most at the state's epoch floor (or its version)
            # and rose by at most one per version of the Work since: above both sums is safe.
            ceiling = self._epoch_floor(work_id) + head.version + 1
            change = Change(kind="works", key=work_id, version=head.version + 1)  # its worker rereads it by id
            if self._commit("works", work_id, head, None, change):
                self._report_corrupt("works", work_id, error)
                self._stamp_state(work_id, ceiling, forget=True)
                return True
        raise Conflict(f"works/{work_id}: gave up after {CAS_ATTEMPTS} lost races")

    # ---- resources ----

    def find_resource(self, worker_id: str) -> Resource | None:
        return self._read("resources", worker_id, Resource)[0]

    def list_resources(self) -> list[Resource]:
        return self._list("resources", Resource)

    def update_resource(
        self, worker_id: str, update: Callable[[Resource | None], Resource | None], *, announce: bool = True,
        over_corrupt: int = 0,
    ) -> Resource | None:
        def apply(current: Resource | None, head: Head) -> Resource | None:
            return update(None if current is None else msgspec.structs.replace(current))

        new, _ = self._cas(
            "resources", worker_id, Resource, apply, announce=(lambda old, new: "") if announce else None,
            over_corrupt=over_corrupt,
        )
        return new

    def remove_resource(self, worker_id: str, only_if: Callable[[Resource], bool] | None = None) -> bool:
        removed = False

        def gone(current: Resource | None, head: Head) -> Resource | None:
            nonlocal removed
            removed = current is not None and (only_if is None or only_if(current))
            if not removed:
                raise _Unchanged
            return None

        try:
            self._cas("resources", worker_id, Resource, gone, delete=True, announce=lambda old, new: "")
        except _Unchanged:
            return False
        return removed

    # ---- directors ----

    def put_director(self, director: Director) -> None:
        try:
            self._cas("directors", director.id, Director, lambda current, head: director)
        except CorruptRecord as e:
            # A director is the one writer of its own record and replaces it whole: a version that
            # does not decode is reported and written over, or the director stays out of every list.
            self._cas("directors", director.id, Director, lambda current, head: director, over_corrupt=e.version)

    def list_directors(self) -> list[Director]:
        return self._list("directors", Director)

    def remove_director(self, director_id: str) -> None:
        try:
            self._cas("directors", director_id, Director, _delete_existing, delete=True)
        except _Unchanged:
            pass

    def find_leader(self) -> Leader | None:
        return self._read("leases", "director", Leader)[0]

    def update_leader(
        self, update: Callable[[Leader | None], Leader | None], *, over_corrupt: int = 0
    ) -> Leader | None:
        new, _ = self._cas("leases", "director", Leader, lambda current, head: update(current),
                           over_corrupt=over_corrupt)
        return new

    # ---- strategy state ----

    def load_state(self, work_id: str) -> StrategyState | None:
        record, _ = self._read("state", work_id, StrategyState)
        return record

    def save_state(self, work_id: str, epoch: int, state_json: bytes | None) -> StrategyState:
        def write(current: StrategyState | None, head: Head) -> StrategyState | None:
            if current is not None and current.epoch > epoch:
                raise StaleWriter(f"state of {work_id!r} is held by epoch {current.epoch}, not {epoch}")
            if state_json is None:
                if current is not None and current.epoch == epoch:
                    return None  # already stamped (a restart within the epoch): nothing to write
                return StrategyState(epoch=epoch, state=current.state if current else NO_STATE)
            return StrategyState(epoch=epoch, state=msgspec.Raw(state_json))

        new, _ = self._cas("state", work_id, StrategyState, write)
        assert new is not None
        return new

    def durable_together(self) -> ContextManager[None]:
        return contextlib.nullcontext()

    def durable_later(self) -> ContextManager[None]:
        return contextlib.nullcontext()

    def sync(self) -> None:
        pass

    def save_states(self, writes: Sequence[StateWrite]) -> list[Outcome]:
        for write in writes:
            check_id("state", write.work_id)
        started = time.perf_counter()
        outcomes = statewrites.save_states(writes, self._heads_of_states, self._commit_states)
        if self.commit_observer is not None:
            self.commit_observer(time.perf_counter() - started)
        return outcomes

    def _heads_of_states(self, keys: list[str]) -> list[Head]:
        """The heads of many state records (a backend may read them in one round trip)."""
        table = self._table("state")
        return [table.head(key) for key in keys]

    def _commit_states(self, commits: list[tuple[str, Head, bytes]]) -> list[bool]:
        """Commit many state records as one durable step; a backend with a cheaper way overrides it."""
        table = self._table("state")
        return [table.commit(key, base, data) for key, base, data in commits]

    def _stamp_state(self, work_id: str, epoch: int, *, forget: bool) -> None:
        def stamp(current: StrategyState | None, head: Head) -> StrategyState:
            floor = max(epoch, current.epoch + 1 if current else 0)
            return StrategyState(epoch=floor, state=NO_STATE if forget or current is None else current.state)

        try:
            self._cas("state", work_id, StrategyState, stamp)
        except CorruptRecord:
            self._overwrite_corrupt_state(work_id, epoch)

    def _overwrite_corrupt_state(self, work_id: str, epoch: int) -> None:
        """Forgetting a state that does not decode: a new version on top, the bad one left in history."""
        table = self._table("state")
        head = table.head(work_id)
        table.commit(work_id, head, _encode(StrategyState(epoch=max(epoch, head.version))))

    # ---- blobs ----

    def get_blob(self, kind: str, key: str) -> bytes | None:
        return self._table(f"blobs.{check_id('blob', kind)}").head(check_id("blob", key)).data

    def blob_keys(self, kind: str) -> list[str]:
        return self._table(f"blobs.{check_id('blob', kind)}").keys()

    def update_blob(self, kind: str, key: str, update: Callable[[bytes | None], bytes | None], *,
                    over_corrupt: int = 0) -> bytes | None:
        table = self._table(f"blobs.{check_id('blob', kind)}")
        check_id("blob", key)
        for _ in range(CAS_ATTEMPTS):
            try:
                head = table.head(key)
            except CorruptRecord as e:  # its file does not parse: only a write naming that version replaces it
                if not over_corrupt or e.version != over_corrupt:
                    raise
                self._report_corrupt(f"blobs.{kind}", key, e)
                head = Head(e.version, None)
            new = update(head.data)
            if new is None:
                return head.data
            if table.commit(key, head, new):
                return new
        raise Conflict(f"blob {kind}/{key}: gave up after {CAS_ATTEMPTS} lost races")

    # ---- the change feed ----

    def changes_end(self) -> Cursor:
        return self.feed.end()

    def changes(self, cursor: Cursor) -> tuple[list[Change], Cursor, bool]:
        return self.feed.read(cursor)


class _Unchanged(Exception):
    """Internal: a conditional delete found nothing to delete."""


def _delete_existing(current: msgspec.Struct | None, head: Head) -> None:
    if current is None:
        raise _Unchanged
    return None
