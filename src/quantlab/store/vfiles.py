"""Lock-free records on a plain filesystem: a directory per record, a file per version.

A record ``KEY`` of a kind lives in ``KIND/KEY/`` as files named by their
version, ``000000000007``. Each file is one header line, then the record::

    {"v":7,"n":"<nonce>","p":"<nonce of version 6>","gone":false}
    {...the record, msgspec JSON...}

The head is the highest version. A commit is a compare-and-swap on it: read
version v, write the new content to a private temporary file (every byte,
then fsync), and ``link`` it to the name of version v+1. link(2) never
replaces a name, so of two writers from v exactly one succeeds; the other gets
EEXIST, re-reads and decides again. Then the directory is fsynced, so a
committed version survives a power cut. A writer stopped at any instruction
holds nothing anyone else waits for: its temporary file is private.

Old versions are pruned (the last KEEP stay), which frees their names. A
writer that read version v long ago could then link v+1 after v+1 was pruned,
under a newer head. So after linking, a writer checks that its version is in
the history: each version carries the nonces of its last ANCESTORS
predecessors (``a``), and the writer looks for its own nonce in the current
head's list. Found: committed, whatever was built on it meanwhile. Not found
while the list reaches back past its version: not part of the history, so it
reports a conflict and applies its update again on the new head. Only a writer
stalled between its link and its check for more than ANCESTORS commits by
others cannot tell; it then retries too, so an update function must be safe to
apply again to a newer record (every quantlab update is: they set values, or
bump a number once per decision they re-check).

Deleting writes a tombstone version (``gone``), so the history of an id, and
with it every fencing token ever handed out for it, survives a delete and a
re-create.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import msgspec

from quantlab.errors import CorruptRecord
from quantlab.files import adopt, fsync_dir, private_dir, private_dir_if_writable, write_durable
from quantlab.store.table import ABSENT, Head

if TYPE_CHECKING:  # the pruner's queue is made by the processes that batch commits, not by every reader
    import queue

#: Versions kept per record; older ones are pruned after each commit.
KEEP = 4
#: Every this many versions a commit lists its folder for old versions a crash left behind.
PRUNE_SCAN = 64
#: Predecessor nonces each version carries, so a writer can find its own commit under newer ones.
ANCESTORS = 32
#: Reads retried when the head was pruned between listing and opening it.
READ_RETRIES = 50
#: Bytes asked of each read(2) of a record: most records fit in one.
READ_CHUNK = 1 << 16
_WIDTH = 12


class _Header(msgspec.Struct):
    v: int
    n: str
    p: str = ""
    gone: bool = False
    a: list[str] = []  #: predecessors' nonces, newest first (``p`` is the first)


_decode_header = msgspec.json.Decoder(_Header).decode
_encode = msgspec.json.encode


def read_file(path: Path | str) -> bytes:
    # Plain descriptor reads: open() adds five syscalls (two fstat, an ioctl, two lseek) and two
    # objects to every record read, and a full pass reads every record.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, READ_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def version_name(version: int) -> str:
    return f"{version:0{_WIDTH}d}"


def _versions(folder: Path) -> dict[int, list[str]]:
    """Each version in ``folder`` with its files: the version's own and its sidecars (``7.log``)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return {}
    out: dict[int, list[str]] = {}
    for name in names:
        number = name.partition(".")[0]
        if number.isdigit():
            out.setdefault(int(number), []).append(name)
    return out


class VersionedDir:
    """The records of one kind: ``root/KEY/VERSION``."""

    def __init__(
        self, root: Path, durable: Callable[[], bool] = lambda: True, *, remember: bool = False,
        sidecars: tuple[str, ...] = (),
    ) -> None:
        self.root = root
        #: Suffixes of files that belong to a version (``7.log``): pruned with it.
        self.sidecars = sidecars
        #: Whether a commit syncs its own writes now; False inside a batch its owner syncs at once.
        self.durable = durable
        #: With ``remember``, the head this process last committed, per key: a good guess of the
        #: head for its next commit to the same record (a wrong guess loses the race, is read again).
        self.remember = remember
        self.committed: dict[str, Head] = {}
        self._folders: set[str] = set()  #: record folders known to exist (they are never removed)
        private_dir_if_writable(root)  # a read-only home: reads find it as it is, a commit fails

    def folder(self, key: str) -> Path:
        return self.root / key

    def keys(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:  # never written, in a home this process cannot write
            return []
        return [n for n in names if not n.startswith(".")]

    def head(self, key: str) -> Head:
        """The highest version of ``key``; CorruptRecord when its file does not parse."""
        folder = f"{self.root}/{key}"  # plain strings: this runs once per record in a full pass
        for _ in range(READ_RETRIES):
            try:
                names = [n for n in os.listdir(folder) if n.isdigit()]
            except FileNotFoundError:
                return ABSENT
            if not names:
                return ABSENT
            path = f"{folder}/{max(names)}"  # fixed-width names: the highest sorts last
            try:
                raw = read_file(path)
            except FileNotFoundError:
                continue  # pruned after a newer commit while we looked: look again
            header, data = _parse(path, raw)
            return Head(header.v, None if header.gone else data, header.n, tuple(header.a))
        raise CorruptRecord(f"{folder}: the head kept vanishing while read")

    def commit(self, key: str, base: Head, data: bytes | None) -> bool:
        """Write ``data`` (None: a tombstone) as version base.version + 1; False if another writer won.

        When ``durable()`` says False the fsyncs are left to the owner, who syncs a whole batch
        at once (sync_filesystem) before it tells anyone the batch is written.
        """
        durable = self.durable()
        folder = self.folder(key)
        self._ensure(folder, durable)
        version = base.version + 1
        nonce = os.urandom(8).hex()
        ancestors = [base.nonce, *base.ancestors[: ANCESTORS - 1]] if base.nonce else []
        header = _encode(_Header(v=version, n=nonce, p=base.nonce, gone=data is None, a=ancestors))
        tmp = folder / f".tmp-{os.getpid()}-{nonce}"
        write_durable(tmp, header + b"\n" + (data or b""), sync=durable)
        try:
            os.link(tmp, folder / version_name(version))
        except FileExistsError:
            self.committed.pop(key, None)  # someone else wrote since: the next try reads the head
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if durable:
            fsync_dir(folder)
        if not self._in_history(key, version, nonce):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / version_name(version))
            self.committed.pop(key, None)
            return False
        if self.remember:
            self.committed[key] = Head(version, data, nonce, tuple(ancestors))
        self._prune(folder, version)
        return True

    def _ensure(self, folder: Path, durable: bool = True) -> None:
        if str(folder) in self._folders:
            return
        private_dir(self.root)  # made already, unless the home could not be written when we started
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            self._folders.add(str(folder))
            return
        adopt(folder)
        if durable:
            fsync_dir(self.root)  # the new record's directory must survive a power cut too
        self._folders.add(str(folder))

    def _in_history(self, key: str, version: int, nonce: str) -> bool:
        """Whether our freshly linked ``version`` is part of the record's history."""
        try:
            head = self.head(key)
        except CorruptRecord:
            return False
        if head.version == version:
            return head.nonce == nonce
        # Not among the head's ancestors: when the list reaches back to our version, we are
        # certainly not in the history; past it we cannot tell, and trying again is the safe side.
        return nonce in head.ancestors

    def _prune(self, folder: Path, version: int) -> None:
        """Drop the version that fell out of the last KEEP; every PRUNE_SCAN versions, any older one left."""
        if version % PRUNE_SCAN == 0:
            olds = {old: names for old, names in _versions(folder).items() if old <= version - KEEP}
            # Sorted: a version's own file goes before its sidecars (statelog.py relies on it).
            self.discard([f"{folder}/{name}" for names in olds.values() for name in sorted(names)])
        elif version > KEEP:
            old = version_name(version - KEEP)
            self.discard([f"{folder}/{old}{suffix}" for suffix in ("", *self.sidecars)])

    def discard(self, paths: list[str]) -> None:
        """Unlink files nobody reads any more: now, or by the pruner thread inside a batch."""
        if self.durable():
            _unlink_all(paths)
        else:
            _pruner().put(paths)


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@functools.cache
def _pruner() -> queue.SimpleQueue[list[str]]:
    """Old versions of batched commits are unlinked by a thread of their own.

    An unlink waits for the filesystem's journal, which the batch's sync has just made busy:
    on the worker's loop thread that wait would be most of a group commit's time. A
    version left behind by an exit is harmless, and a later PRUNE_SCAN removes it.
    """
    import queue

    paths: queue.SimpleQueue[list[str]] = queue.SimpleQueue()

    def run() -> None:
        while True:
            _unlink_all(paths.get())

    threading.Thread(target=run, name="qlab-prune", daemon=True).start()
    return paths


def _parse(path: Path | str, raw: bytes) -> tuple[_Header, bytes]:
    line, sep, data = raw.partition(b"\n")
    version = int(os.path.basename(path))
    try:
        header = _decode_header(line)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise CorruptRecord(f"{path}: bad header: {e}", version=version) from None
    if not sep or header.v != version:
        raise CorruptRecord(f"{path}: header does not match the file", version=version)
    return header, data
