"""FileStore: the embedded store, a directory on one host.

Layout under the root::

    works/ID/VERSION  resources/ID/VERSION  directors/ID/VERSION  leases/director/VERSION
    state/ID/VERSION  blobs/KIND/KEY/VERSION  changes/NNNNNNNN.log  events.jsonl  inbox/ID/

Records are versioned files committed by compare-and-swap (quantlab/store/vfiles.py):
no process ever waits for a lock another one holds. Events and the change feed
are O_APPEND logs, one write per line. Messages for a strategy are files with
unique names, taken by renaming them away. ``filelock`` is used for one thing
only, outside this module: a live worker holds its id's lock file so that a
second process with the same id is refused at once (nobody waits on it).

A home this process cannot write (a read-only mount, a folder that is not its
user's to write) is opened for reading: the commands that only read work, and
every write fails with the filesystem's error.

FileStore has more than 15 methods: TableStore's primitives, and the messages, events and syncs, on files.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import msgspec

from quantlab.files import READ_ONLY_ERRORS, fsync_dir, private_dir, private_dir_if_writable, sync_filesystem
from quantlab.files import open_adopted, write_durable
from quantlab.store.feed import FileFeed
from quantlab.store.records import Event, EventKind
from quantlab.store.statelog import StateLog
from quantlab.store.store import check_id
from quantlab.store.tablestore import TableStore
from quantlab.store.table import Change, Head
from quantlab.store.vfiles import VersionedDir, read_file
from quantlab.errors import CorruptRecord

_encode = msgspec.json.Encoder().encode
_decode_event = msgspec.json.Decoder(Event).decode

_KINDS = ("works", "resources", "directors", "leases", "state")


class FileStore(TableStore):
    feed: FileFeed

    def __init__(self, root: Path) -> None:
        self.root = root
        if private_dir_if_writable(root):
            _keep_private(root)
        self._tables: dict[str, VersionedDir | StateLog] = {}
        self._batch = threading.local()  #: per thread: ``active`` inside durable_together, ``pending`` a sync owed
        self.feed = FileFeed(root / "changes", on_skipped=self._report_skipped)
        self._events = root / "events.jsonl"
        self._reported: set[str] = set()
        for kind in _KINDS:
            _migrate_flat_records(self._table(kind).root, wrap_state=kind == "state")
        for kind in _folders(root / "blobs"):
            _migrate_flat_records(self._table(f"blobs.{kind}").root)

    def _table(self, kind: str) -> VersionedDir | StateLog:
        table = self._tables.get(kind)
        if table is None:
            root = self.root.joinpath(*kind.split("."))
            # States are written on nearly every tick by one process: it appends to its own version.
            table = StateLog(root, self._durable) if kind == "state" else VersionedDir(root, self._durable)
            self._tables[kind] = table
        return table

    def _durable(self) -> bool:
        """Asked by each commit: False inside durable_together, which then owes the batch a sync."""
        if getattr(self._batch, "active", False):
            self._batch.pending = True
            return False
        return True

    def _report_corrupt(self, kind: str, key: str, error: CorruptRecord) -> None:
        if str(error) not in self._reported:  # once per process and version, not on every pass
            self._reported.add(str(error))
            super()._report_corrupt(kind, key, error)

    def _report_skipped(self, where: str) -> None:
        """A torn or undecodable feed line: recorded once per process and place (each loop reads it once)."""
        if where in self._reported:
            return
        self._reported.add(where)
        detail = (f"changes/{where}: a torn or undecodable change-feed line was skipped "
                  f"({self.feed.skipped} so far in pid {os.getpid()}); the loops made a full pass")
        with contextlib.suppress(OSError):  # the disk that tore it may still be full
            self.append_event(Event(ts=time.time(), kind=EventKind.FEED_LINE_SKIPPED, detail=detail))

    @contextlib.contextmanager
    def durable_together(self) -> Iterator[None]:
        """Commits of this thread inside are synced once, at the end: one syncfs for the batch.

        Without it each commit costs three fsyncs (the file, its folder, a new record's parent).
        A version is visible before the sync, but the block's caller tells nobody (answers no
        heartbeat, prints no "submitted") before the block ends; a failure raises out of it.
        """
        if getattr(self._batch, "active", False):  # nested (a thread's first block finds no flag yet)
            yield
            return
        self._batch.active, self._batch.pending = True, False
        try:
            yield
        finally:
            self._batch.active = False
            if self._batch.pending:  # most blocks (a pass, a batch of messages) commit nothing
                sync_filesystem(self.root)

    @contextlib.contextmanager
    def durable_later(self) -> Iterator[None]:
        """Commits of this thread inside are not synced: the caller calls ``sync()`` before telling anyone."""
        if getattr(self._batch, "active", False):  # inside a durable block: that block syncs them
            yield
            return
        self._batch.active = True
        try:
            yield
        finally:
            self._batch.active = False

    def sync(self) -> None:
        sync_filesystem(self.root)

    def _heads_of_states(self, keys: list[str]) -> list[Head]:
        # A worker is almost always the last writer of its strategies' states: its own last
        # commit saves reading each record (another writer's commit makes ours lose, then it reads).
        table = self._states()
        return [table.last_written(key) or table.head(key) for key in keys]

    def _states(self) -> StateLog:
        table = self._table("state")
        assert isinstance(table, StateLog)
        return table

    def _commit_states(self, commits: list[tuple[str, Head, bytes]]) -> list[bool]:
        with self.durable_together():
            return super()._commit_states(commits)

    # ---- messages ----

    def _inbox(self, work_id: str) -> Path:
        return self.root / "inbox" / check_id("strategy", work_id)

    def push_message(self, work_id: str, data: Any) -> None:
        folder = self._inbox(work_id)
        private_dir(folder)
        write_durable(folder / f"{time.time_ns()}-{os.urandom(4).hex()}.json", _encode(data))
        fsync_dir(folder)
        try:
            self.feed.append(Change(kind="inbox", key=work_id, version=0))  # wakes its worker now
        except OSError as e:  # the message is written: its worker finds it at its next full pass
            self.warn(f"the message to {work_id} is written, but not its change-feed line, so its worker "
                      f"finds it at its next full pass: {e.strerror or e}")

    def take_messages(self, work_id: str) -> list[Any]:
        folder = self._inbox(work_id)
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            try:
                data = read_file(folder / name)
                os.unlink(folder / name)  # only the worker that owns the strategy takes its messages
            except FileNotFoundError:
                continue
            with contextlib.suppress(msgspec.DecodeError):
                out.append(msgspec.json.decode(data))
        return out

    # ---- events ----

    def append_event(self, event: Event) -> None:
        # One write() of one line on an O_APPEND descriptor: concurrent appenders never interleave.
        # A short one (a full disk) is not continued: the rest would land after other appenders'
        # lines. The torn line fails to decode, and readers skip it.
        line = _encode(event) + b"\n"
        fd = open_adopted(self._events, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            written = os.write(fd, line)
        finally:
            os.close(fd)
        if written != len(line):
            raise OSError(f"short write ({written} of {len(line)} bytes) to {self._events}")

    def read_events(self, offset: int = 0) -> tuple[list[Event], int]:
        """Events from byte ``offset`` on, and the offset after the last whole line."""
        try:
            with open(self._events, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return [], 0
        end = data.rfind(b"\n") + 1
        events = []
        for line in data[:end].splitlines():
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                events.append(_decode_event(line))
        return events, offset + end

    def close(self) -> None:
        states = self._tables.get("state")
        if isinstance(states, StateLog):
            states.close()  # the logs it holds open


def _keep_private(root: Path) -> None:
    """Take group and other permissions off a store made under another umask; never add any.

    A home its owner made read-only (chmod -R a-w) stays so: reading it must not make it writable.
    """
    mode = root.stat().st_mode
    if mode & 0o077:
        try:
            os.chmod(root, mode & 0o700)
        except OSError as e:  # a read-only mount, or a store another user owns: read it as it is
            if e.errno not in READ_ONLY_ERRORS:
                raise


def _folders(parent: Path) -> list[str]:
    """The folders in ``parent``, [] without it.

    Every process that opens the store looks for old layouts: plain listings, not pathlib's
    glob, whose pattern matching costs a command more than the look itself.
    """
    try:
        with os.scandir(parent) as entries:
            return [entry.name for entry in entries if entry.is_dir()]
    except FileNotFoundError:
        return []


def _migrate_flat_records(folder: Path, *, wrap_state: bool = False) -> None:
    """Stores written before versioned records kept ``KIND/ID.json``: make each version 1 of ID."""
    table = VersionedDir(folder)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:  # a read-only home without this kind yet
        return
    for name in names:
        if name.startswith(".") or not name.endswith(".json"):
            continue
        path = folder / name
        data = read_file(path)
        if wrap_state:  # the bare ctx.state of old, at epoch 0
            data = b'{"epoch":0,"state":' + data + b"}"
        head = table.head(path.stem)
        if head.version == 0:
            table.commit(path.stem, head, data)
        path.unlink()
