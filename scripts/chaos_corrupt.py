"""The ``corrupt-record`` fault: garbage over a record no strategy runs from, or a torn change-feed line.

The file store must take either without a daemon stopping or a strategy
missing a beat: a version that does not decode is reported and skipped (or
written over by its one writer), and a feed line that fails its CRC makes the
loops do a full pass. Only records nothing running depends on are damaged: a
decoy work and worker that exist only as garbage, and the directors' own
records (each director writes its own over). Not the halts document: its
readers fail closed, so every paper order would be refused until an operator
repaired it. A file store only: on PostgreSQL there are no files to damage.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

#: Records named so that nothing the soak runs can be them.
DECOY = "chaos-decoy"
#: Bytes the head of a record is overwritten with, at most.
GARBAGE_BYTES = 200


def damage(store: Path, rng: random.Random) -> str:
    """Damage one record's head version, or the newest feed segment; what was done, in words."""
    if rng.random() < 0.3:
        return _tear_feed(store, rng)
    folders = [store / "works" / DECOY, store / "resources" / DECOY]
    folders += _subfolders(store / "directors")
    folder = rng.choice(folders)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    versions = sorted(n for n in os.listdir(folder) if n.isdigit())
    head = folder / (versions[-1] if versions else f"{1:012d}")
    if versions and rng.random() < 0.5:
        try:  # a torn write: the head cut short
            raw = head.read_bytes()
        except FileNotFoundError:  # pruned under us by a newer commit: garbage it is
            raw = b""
        data, how = raw[: rng.randrange(0, max(1, len(raw)))], "truncated"
    else:
        data, how = rng.randbytes(rng.randrange(1, GARBAGE_BYTES)), "garbage over"
    head.write_bytes(data)
    return f"{how} {head.relative_to(store)}"


def _tear_feed(store: Path, rng: random.Random) -> str:
    segments = sorted((store / "changes").glob("*.log"))
    if not segments:
        return "no feed segment yet"
    torn = rng.choice([b"works s01 7", rng.randbytes(rng.randrange(1, 40)), b"works s01 9 w1 00000000\n"])
    with open(segments[-1], "ab") as f:  # one write, as an appender cut short would leave it
        f.write(torn)
    return f"torn line ({len(torn)} bytes) in changes/{segments[-1].name}"


def _subfolders(parent: Path) -> list[Path]:
    try:
        return [p for p in parent.iterdir() if p.is_dir()]
    except FileNotFoundError:
        return []
