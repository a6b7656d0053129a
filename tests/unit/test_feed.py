"""The file store's change feed: lines whole or skipped, and never where readers have left."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable

import pytest

from quantlab.store import feed as feedmod
from quantlab.store.feed import FileFeed
from quantlab.store.table import Change


def change(key: str, version: int = 1) -> Change:
    return Change(kind="works", key=key, version=version, worker="w1")


def keys(changes: list[Change]) -> list[str]:
    return [c.key for c in changes]


def test_a_torn_line_is_skipped_and_reported_and_the_next_line_is_read(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk cuts an append short; the line written once space is back must still be read, not
    run into the torn bytes (which, parsed as a line, raised in every reader)."""
    skipped: list[str] = []
    writer, reader = FileFeed(tmp_path), FileFeed(tmp_path)
    reader.on_skipped = skipped.append
    writer.append(change("a"))
    cursor = reader.end()
    real_write = os.write
    calls = []

    def half_then_full(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data)[: len(data) // 2])  # the rest did not fit
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError):
        writer.append(change("torn"))
    monkeypatch.undo()
    writer.append(change("after"))  # space came back
    changes, cursor, lost = reader.read(cursor)
    assert keys(changes) == ["after"]
    assert lost  # the torn bytes may have hidden a line: the reader makes a full pass
    assert reader.skipped == 1 and len(skipped) == 1
    assert reader.read(cursor) == ([], cursor, False)


def test_an_undecodable_line_between_whole_ones_is_skipped(tmp_path: Path) -> None:
    reader = FileFeed(tmp_path)
    writer = FileFeed(tmp_path)
    cursor = reader.end()
    writer.append(change("a"))
    with open(tmp_path / "00000001.log", "ab") as f:
        f.write(b"works b 2 w1 with too many fields\n")  # what a torn line run into the next one looks like
    writer.append(change("c"))
    changes, _, lost = reader.read(cursor)
    assert keys(changes) == ["a", "c"] and lost and reader.skipped == 1


def test_a_line_whose_checksum_fails_is_not_taken_for_a_change(tmp_path: Path) -> None:
    """A torn prefix can split into four fields that parse: ``works s 12 w1`` cut to ``works s 12 w``."""
    reader = FileFeed(tmp_path)
    cursor = reader.end()
    line = feedmod.encode(change("s", 12))
    (tmp_path / "00000001.log").write_bytes(line.replace(b" w1 ", b" w2 "))
    changes, _, lost = reader.read(cursor)
    assert changes == [] and lost


def test_a_line_without_a_checksum_from_a_process_not_yet_upgraded_is_read(tmp_path: Path) -> None:
    reader = FileFeed(tmp_path)
    cursor = reader.end()
    (tmp_path / "00000001.log").write_bytes(b"works s 3 w1\nworks t 4 -\n")
    changes, _, lost = reader.read(cursor)
    assert changes == [change("s", 3), Change(kind="works", key="t", version=4)] and not lost


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> int:
    """A new segment every few lines, and none pruned: a reader that misses a line cannot blame pruning."""
    monkeypatch.setattr(feedmod, "SEGMENT_BYTES", 200)
    monkeypatch.setattr(feedmod, "SEGMENTS_KEPT", 100_000)
    return 200


def rotate(feed: FileFeed) -> None:
    """Append until a new segment begins."""
    first = feed.end().segment
    while feed.end().segment == first:
        feed.append(change("filler"))


def test_an_append_that_chose_its_segment_before_a_rotation_is_still_read(tmp_path: Path, small_segments: int) -> None:
    """The appender lists the segments, then others fill the newest, start the next one and a
    reader moves on to it; only then does the appender's write land, in the segment left behind."""
    late, others, reader = FileFeed(tmp_path), FileFeed(tmp_path), FileFeed(tmp_path)
    others.append(change("first"))
    cursor = reader.end()
    real = FileFeed._segments
    moved: list[object] = []

    def listed_before_a_rotation(self: FileFeed) -> list[int]:
        segments = real(self)
        if not moved:
            rotate(others)
            moved.append(reader.read(cursor))  # the reader leaves the old segment for the new one
        return segments

    late._segments = listed_before_a_rotation.__get__(late)  # type: ignore[method-assign]
    late.append(change("stop"))
    (before, cursor, _), = moved  # type: ignore[misc]
    assert "stop" not in keys(before)
    changes, _, lost = reader.read(cursor)
    assert "stop" in keys(changes) or lost, "the line landed where the reader never looks again"


def test_a_reader_leaving_a_segment_reads_what_landed_before_the_next_began(
    tmp_path: Path, small_segments: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the reader's read of the old segment and its look for the next one, a line lands
    in the old segment and a rotation starts the next: the reader must not leave without it."""
    writer, reader = FileFeed(tmp_path), FileFeed(tmp_path)
    writer.append(change("first"))
    cursor = reader.end()
    next_segment = str(tmp_path / f"{cursor.segment + 1:08d}.log")
    real_exists = os.path.exists
    raced: list[bool] = []

    def exists(path: object) -> bool:
        if str(path) == next_segment and not raced:
            raced.append(True)
            writer.append(change("stop"))  # lands in the old segment: the next one is not there yet
            writer._start_segment(cursor.segment + 1, writer._segments())
        return real_exists(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os.path, "exists", exists)
    changes, cursor, lost = reader.read(cursor)
    monkeypatch.undo()
    changes2, _, lost2 = reader.read(cursor)
    assert "stop" in keys(changes + changes2) or lost or lost2, "the reader left the segment without the line"


def test_many_appenders_across_rotations_lose_no_line(tmp_path: Path, small_segments: int) -> None:
    """Every line appended is read, across many small segments and appenders racing their rotations."""
    import threading

    reader = FileFeed(tmp_path)
    cursor = reader.end()
    seen: set[str] = set()
    done = threading.Event()

    def append_many(name: str) -> Callable[[], None]:
        def run() -> None:
            feed = FileFeed(tmp_path)
            for i in range(150):
                feed.append(change(f"{name}-{i}"))
        return run

    threads = [threading.Thread(target=append_many(f"t{n}")) for n in range(4)]
    for t in threads:
        t.start()
    while not done.is_set():
        if not any(t.is_alive() for t in threads):
            done.set()
        changes, cursor, _ = reader.read(cursor)
        seen.update(keys(changes))
    changes, cursor, _ = reader.read(cursor)
    seen.update(keys(changes))
    expected = {f"t{n}-{i}" for n in range(4) for i in range(150)}
    assert expected <= seen, f"{len(expected - seen)} lines never read"
