"""The change feed: an append-only log of which record changed, so readers pay for changes only.

After every commit that someone may need to act on, the writer appends one
line ``KIND KEY VERSION WORKER CRC`` (WORKER: the Work's assigned worker after
the change, or ``-``; CRC: the CRC32 of the line before it, 8 hex digits). A
loop keeps its own cursor, reads only the lines added since, and re-reads just
those records. The feed is a hint, not the truth: a line can be missing (a
writer killed between its commit and its append, a full disk), so every loop
also makes a full pass at start, whenever a read says lines were lost, and as
a slow safety net.

On disk: ``changes/NNNNNNNN.log`` segments; nobody locks. Three rules keep
every line where readers look:

- **A line is written whole or not at all**: one write(2) of the whole line
  on an O_APPEND descriptor, so appenders never interleave. A short write (a
  full disk) is not continued, since the rest would land after other
  appenders' lines: the append fails, and the appender starts a new segment so
  that the torn bytes end a segment readers leave. A reader skips a line that
  fails its CRC (torn bytes, alone or run into the whole line written after
  them), counts it (``on_skipped``) and reports the read as lost: the bytes may
  have swallowed a line, so loops make a full pass.
- **No line lands only where readers have left.** A reader leaves segment N
  for N+1 once N+1 exists, and it looks for N+1 *before* it reads the rest of
  N: whatever was in N before N+1 appeared is read. An appender looks for N+1
  *after* its write to N; when it is there, readers may have left N before the
  line landed, so the line is appended again to the newest segment (a hint
  read twice costs a re-read). Bytes after the last whole line of a segment a
  reader leaves are a torn line: skipped and reported as lost.
- A segment past SEGMENT_BYTES is followed by the next one; the oldest are
  pruned, and a reader whose segment is gone is told to reset.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from pathlib import Path
from typing import Callable

from quantlab.files import open_adopted, private_dir_if_writable
from quantlab.store.table import Change, Cursor

#: Bytes after which appenders start a new segment.
SEGMENT_BYTES = 8 << 20
#: Segments kept; older ones are deleted when a new one starts.
SEGMENTS_KEPT = 4


class FileFeed:
    def __init__(self, root: Path, on_skipped: Callable[[str], None] | None = None) -> None:
        self.root = root
        private_dir_if_writable(root)  # a read-only home: readers find no segment, appends fail
        self._last: int | None = None  #: the newest segment seen by ``end``
        #: Told where each torn or undecodable line was skipped (the file store records it once).
        self.on_skipped = on_skipped
        self.skipped = 0  #: lines this process skipped

    def _segments(self) -> list[int]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(int(n[:-4]) for n in names if n.endswith(".log") and n[:-4].isdigit())

    def _path(self, segment: int) -> Path:
        return self.root / f"{segment:08d}.log"

    def append(self, change: Change) -> None:
        line = encode(change)
        while True:
            segments = self._segments()
            segment = segments[-1] if segments else 1
            try:
                # Created only as the first segment: a listed one that is gone now was pruned,
                # and making it again would put the line where nobody reads.
                fd = open_adopted(self._path(segment), os.O_WRONLY | os.O_APPEND | (0 if segments else os.O_CREAT))
            except FileNotFoundError:
                if not segments:
                    raise  # the feed's folder itself is gone
                continue
            try:
                written = os.write(fd, line)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if written != len(line):
                with contextlib.suppress(OSError):  # readers leave the torn bytes behind with this segment
                    self._start_segment(segment + 1, segments)
                raise OSError(f"short write ({written} of {len(line)} bytes) to {self._path(segment)}")
            if not os.path.exists(self._path(segment + 1)):
                break  # still the newest: a reader that leaves it later reads the line first
        if size >= SEGMENT_BYTES:
            self._start_segment(segment + 1, segments)

    def _start_segment(self, segment: int, existing: list[int]) -> None:
        with contextlib.suppress(FileExistsError):
            os.close(open_adopted(self._path(segment), os.O_WRONLY | os.O_CREAT | os.O_EXCL))
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
        lost = False
        while True:
            # Before the read (the module's docstring says why): a segment that has a successor
            # by now is read to its end and left.
            leaving = os.path.exists(self._path(cursor.segment + 1))
            try:
                with open(self._path(cursor.segment), "rb") as f:
                    f.seek(cursor.offset)
                    data = f.read()
            except FileNotFoundError:
                segments = self._segments()
                if segments and segments[0] > cursor.segment:
                    return changes, self.end(), True  # pruned under us: lines were lost
                return changes, cursor, lost  # nothing written yet
            end = data.rfind(b"\n") + 1
            at = cursor.offset
            for line in data[:end].split(b"\n")[:-1]:
                change = parse(line)
                if change is None:
                    lost = True
                    self._skip(cursor.segment, at)
                else:
                    changes.append(change)
                at += len(line) + 1
            if not leaving:
                return changes, Cursor(cursor.segment, cursor.offset + end), lost
            if end < len(data):  # a torn line ends the segment we leave
                lost = True
                self._skip(cursor.segment, cursor.offset + end)
            cursor = Cursor(cursor.segment + 1, 0)

    def _skip(self, segment: int, offset: int) -> None:
        self.skipped += 1
        if self.on_skipped is not None:
            self.on_skipped(f"{self._path(segment).name} at byte {offset}")


def encode(change: Change) -> bytes:
    body = f"{change.kind} {change.key} {change.version} {change.worker or '-'}".encode()
    return body + b" %08x\n" % zlib.crc32(body)


def parse(line: bytes) -> Change | None:
    """The change a line names; None when it is torn or does not decode.

    A line of four fields, without a CRC (an older quantlab sharing the store writes those), is
    read as it is: torn bytes run into the next line always make five or more fields.
    """
    fields = line.split(b" ")
    if len(fields) == 5:
        if fields[4] != b"%08x" % zlib.crc32(line[: -len(fields[4]) - 1]):
            return None
    elif len(fields) != 4:
        return None
    try:
        kind, key, version, worker = (field.decode() for field in fields[:4])
        return Change(kind=kind, key=key, version=int(version), worker="" if worker == "-" else worker)
    except ValueError:  # UnicodeDecodeError is one
        return None
