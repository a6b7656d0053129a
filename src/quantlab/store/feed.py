"""The change feed: an append-only log of which record changed, so readers pay for changes only.

After every commit that someone may need to act on, the writer appends one
line ``KIND KEY VERSION WORKER`` (WORKER: the Work's assigned worker after the
change, or ``-``). A loop keeps its own cursor, reads only the lines added
since, and re-reads just those records. The feed is a hint, not the truth: a
line can be missing (a writer killed between its commit and its append), so
every loop also makes a full pass at start and a slow safety-net pass.

On disk: ``changes/NNNNNNNN.log`` segments. Appends use O_APPEND with one
write per line, so appenders never interleave and nobody locks. A segment past
SEGMENT_BYTES is followed by the next one; the oldest are pruned, and a reader
whose segment is gone is told to reset (make a full pass).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from quantlab.files import private_dir, write_all
from quantlab.store.table import Change, Cursor

#: Bytes after which appenders start a new segment.
SEGMENT_BYTES = 8 << 20
#: Segments kept; older ones are deleted when a new one starts.
SEGMENTS_KEPT = 4


class FileFeed:
    def __init__(self, root: Path) -> None:
        self.root = root
        private_dir(root)
        self._last: int | None = None  #: the newest segment seen by ``end``

    def _segments(self) -> list[int]:
        return sorted(int(n[:-4]) for n in os.listdir(self.root) if n.endswith(".log") and n[:-4].isdigit())

    def _path(self, segment: int) -> Path:
        return self.root / f"{segment:08d}.log"

    def append(self, change: Change) -> None:
        segments = self._segments()
        segment = segments[-1] if segments else 1
        line = f"{change.kind} {change.key} {change.version} {change.worker or '-'}\n".encode()
        fd = os.open(self._path(segment), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            write_all(fd, line)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size >= SEGMENT_BYTES:
            self._start_segment(segment + 1, segments)

    def _start_segment(self, segment: int, existing: list[int]) -> None:
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self._path(segment), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        for old in existing[:-SEGMENTS_KEPT + 1]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(old))

    def end(self) -> Cursor:
        """A cursor at the end of the feed as it is now (loops ask this every few ms: one stat)."""
        last = self._last
        if last is not None and not os.path.exists(self._path(last + 1)):
            try:
                return Cursor(last, os.stat(self._path(last)).st_size)
            except FileNotFoundError:
                pass
        segments = self._segments()
        if not segments:
            return Cursor(1, 0)
        self._last = segments[-1]
        try:
            size = os.stat(self._path(segments[-1])).st_size
        except FileNotFoundError:
            size = 0
        return Cursor(segments[-1], size)

    def read(self, cursor: Cursor) -> tuple[list[Change], Cursor, bool]:
        """Changes after ``cursor``, the cursor after them, and whether the reader must reset."""
        changes: list[Change] = []
        while True:
            try:
                with open(self._path(cursor.segment), "rb") as f:
                    f.seek(cursor.offset)
                    data = f.read()
            except FileNotFoundError:
                segments = self._segments()
                if segments and segments[0] > cursor.segment:
                    return changes, self.end(), True  # pruned under us: lines were lost
                return changes, cursor, False  # nothing written yet
            end = data.rfind(b"\n") + 1
            changes.extend(_parse(line) for line in data[:end].splitlines())
            cursor = Cursor(cursor.segment, cursor.offset + end)
            if not os.path.exists(self._path(cursor.segment + 1)):
                return changes, cursor, False
            cursor = Cursor(cursor.segment + 1, 0)


def _parse(line: bytes) -> Change:
    kind, key, version, worker = line.decode().split(" ")
    return Change(kind=kind, key=key, version=int(version), worker="" if worker == "-" else worker)
