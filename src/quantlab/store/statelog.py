"""Strategy states on the file store: the writer appends to its record instead of making a new file.

A worker commits a strategy's state on nearly every tick. As a plain versioned
record (vfiles.py) each commit creates a file, links it, unlinks the temporary
and prunes an old version: four directory changes, which under 200 strategies
at 10 Hz would be most of the worker's time. Here the process that
committed version v of a state (its owner) writes the next states as frames
appended to ``VERSION.log`` beside it; the record's value is the last whole
frame of that log, or version v's own data while the log has none. A frame is
a length, a CRC32 and the data: a torn tail (a crash mid-write) fails its
check and is ignored.

The compare-and-swap of vfiles stays, with the log's frame count as part of
the head (``Head.frames``):

- Only the owner appends, and only on the head it last wrote. Any other base,
  and a log grown past LOG_LIMIT, takes the slow path: a new version.
- Anyone else committing on version v first seals it: it takes the write
  permission off ``VERSION.log`` (or creates it so, when there is none yet),
  then reads the head again: if the log grew meanwhile, it lost the race and
  decides again. Otherwise it links version v+1, which no reader looks past.
- The owner keeps its log open and, after each append, looks at the open
  file's mode (fstat: no path, no lookup). Writable: the frame was written
  before any seal, so it is in whatever a later sealer reads, and it counts.
  Sealed (or unlinked): the frame may or may not have been read, so the owner
  reports a lost race, reads the new head and decides again (a newer epoch's
  head refuses it as a stale writer). The seal is a mode, not a file of its
  own, because a file can be unlinked under an open descriptor: the mode
  stays with what the owner holds. The mode is read, never enforced: it
  holds for root too.
- A version pruned long ago loses its sealed log, and a stalled owner could
  start a fresh one: the first append to a log also checks that the
  version's own file is still there (pruning unlinks it before its log).

So a commit that was answered as written is never lost, and once a newer
version is linked no old log is read. Nobody waits for anyone: a sealed
owner simply loses its next race.
"""

from __future__ import annotations

import contextlib
import os
import resource
import stat
import struct
import threading
import zlib
from pathlib import Path
from typing import Callable, NamedTuple

from quantlab.errors import CorruptRecord
from quantlab.files import fsync_dir, open_adopted, write_all
from quantlab.store.table import Head
from quantlab.store.vfiles import READ_RETRIES, VersionedDir, read_file, version_name

#: A log longer than this is not appended to: the next state becomes a new version with a new log.
LOG_LIMIT = 256 * 1024
#: Logs kept open to append to: a quarter of the descriptors this process may open, within these
#: bounds (a worker raises its limit at its start, and writes a state a strategy a heartbeat). The
#: least recently written is closed, and opened again by its path when next written.
OPEN_LOGS = (64, 4096)
SIDECARS = (".log",)
#: A sealed log's mode: no write permission (statelog's seal, read with fstat).
SEALED = 0o400

_FRAME = struct.Struct("<II")  #: data length, CRC32 of the data


class _Owned(NamedTuple):
    """The version this process committed and appends to, as of its last write."""

    head: Head
    size: int  #: bytes in its log
    path: str  #: the version's file; its log and seal are this plus a suffix


def frame(data: bytes) -> bytes:
    return _FRAME.pack(len(data), zlib.crc32(data)) + data


def last_frame(raw: bytes) -> tuple[int, bytes | None]:
    """How many whole frames ``raw`` starts with, and the last one's data (None when there are none)."""
    count, last, at = 0, None, 0
    while at + _FRAME.size <= len(raw):
        length, crc = _FRAME.unpack_from(raw, at)
        data = raw[at + _FRAME.size : at + _FRAME.size + length]
        if len(data) != length or zlib.crc32(data) != crc:
            break  # a torn tail: its writer died mid-append, and nobody appends after it
        count, last, at = count + 1, data, at + _FRAME.size + length
    return count, last


class StateLog:
    """The ``state`` table of a file store: versioned records whose owner appends to the head."""

    def __init__(self, root: Path, durable: Callable[[], bool]) -> None:
        self.dir = VersionedDir(root, durable, remember=True, sidecars=SIDECARS)
        self.durable = durable
        self.owned: dict[str, _Owned] = {}  #: per key, the version this process appends to
        self.fds: dict[str, int] = {}  #: per key, its log held open, least recently written first
        self.open_logs = min(max(resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4, OPEN_LOGS[0]), OPEN_LOGS[1])
        self._lock = threading.Lock()  #: one writer of this process at a time (never held across processes)
        self._root = str(root)  #: plain strings: a path is made on every append

    @property
    def root(self) -> Path:
        return self.dir.root

    def last_written(self, key: str) -> Head | None:
        """The head this process last wrote: a good guess of the base of its next write."""
        owned = self.owned.get(key)
        return None if owned is None else owned.head

    def keys(self) -> list[str]:
        return self.dir.keys()

    def head(self, key: str) -> Head:
        for _ in range(READ_RETRIES):
            base = self.dir.head(key)
            if base.data is None:
                return base  # absent or deleted: a tombstone never gets a log
            try:
                raw = read_file(self._path(key, base.version, ".log"))
            except FileNotFoundError:
                if os.path.exists(self._path(key, base.version + 1, "")):
                    continue  # the log went with a newer version committed while we read: read that
                return base
            frames, data = last_frame(raw)
            return base if data is None else base._replace(data=data, frames=frames)
        raise CorruptRecord(f"{self.dir.folder(key)}: the head kept changing while read")

    def commit(self, key: str, base: Head, data: bytes | None) -> bool:
        with self._lock:
            owned = self.owned.get(key)
            if owned is not None and owned.head.version != base.version:
                owned = None  # we own an older version: this base is someone else's
            if owned is not None:
                if not _same(owned.head, base):
                    return False  # our own later frame is the head: decide again on it
                if data is not None and owned.size < LOG_LIMIT:
                    return self._append(key, owned, data)
                # A new version on our own log (full, or a delete): nobody else appends to it.
            elif base.version:
                self._seal(key, base.version)
                if not _same(self.head(key), base):
                    self._forget(key)
                    return False  # its owner appended meanwhile: decide again on what it wrote
            self._forget(key)
            return self._link(key, base, data, drop_log=owned is not None)

    def _append(self, key: str, owned: _Owned, data: bytes) -> bool:
        head, first = owned.head, owned.size == 0
        durable = self.durable()
        try:
            fd = self._open(key, owned)
        except FileExistsError:  # a log this process did not start (a sealer's) is not ours to extend
            self._forget(key)
            return self._link(key, head, data)
        except (FileNotFoundError, PermissionError):  # removed by a newer version's writer, or sealed
            self._forget(key)
            return False
        try:
            record = frame(data)
            write_all(fd, record)  # a failure (a full disk) leaves a torn tail, which nobody counts
            if durable:
                os.fdatasync(fd)
        except BaseException:
            self._forget(key)
            raise
        if durable and first:
            fsync_dir(Path(owned.path).parent)
        if _sealed(fd) or (first and not os.path.exists(owned.path)):
            self._forget(key)  # another process is committing a new version: this frame may not count
            return False
        new = head._replace(data=data, frames=head.frames + 1)
        self.owned[key] = owned._replace(head=new, size=owned.size + len(record))
        return True

    def _link(self, key: str, base: Head, data: bytes | None, *, drop_log: bool = False) -> bool:
        """Version base + 1 as a file of its own (vfiles); this process then owns its log.

        ``drop_log``: base's log was ours, and no reader looks past the new version, so it goes
        now. A log another process owned stays until its version is pruned: it carries the seal.
        """
        if not self.dir.commit(key, base, data):
            return False
        if drop_log:
            self.dir.discard([self._path(key, base.version, ".log")])
        new = self.dir.committed.get(key)
        if new is not None and data is not None:
            self.owned[key] = _Owned(new, 0, self._path(key, new.version, ""))
        return True

    def _open(self, key: str, owned: _Owned) -> int:
        """The owned log's descriptor: held open, or opened (made, for its first frame) and held."""
        fd = self.fds.pop(key, None)
        if fd is None:
            create = os.O_CREAT | os.O_EXCL if owned.size == 0 else 0
            fd = open_adopted(owned.path + ".log", os.O_WRONLY | os.O_APPEND | create)
            while len(self.fds) >= self.open_logs:
                os.close(self.fds.pop(next(iter(self.fds))))
        self.fds[key] = fd  # the most recently written last
        return fd

    def _seal(self, key: str, version: int) -> None:
        log = self._path(key, version, ".log")
        try:
            os.close(open_adopted(log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SEALED))  # no log yet: born sealed
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):  # gone with a version linked meanwhile
                os.chmod(log, SEALED)

    def _forget(self, key: str) -> None:
        self.owned.pop(key, None)
        fd = self.fds.pop(key, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for key in list(self.fds):
            self._forget(key)

    def _path(self, key: str, version: int, suffix: str) -> str:
        return f"{self._root}/{key}/{version_name(version)}{suffix}"


def _sealed(fd: int) -> bool:
    """Whether a new version is being made over the one whose open log this is (or was: unlinked)."""
    st = os.fstat(fd)
    return st.st_nlink == 0 or not st.st_mode & stat.S_IWUSR


def _same(a: Head, b: Head) -> bool:
    """The same head: version, the nonce of its writer, and the frames appended to it."""
    return (a.version, a.nonce, a.frames) == (b.version, b.nonce, b.frames)
