"""A strategy's log, rotated by its worker: copy, then truncate in place.

The child writes its log through fd 1 and 2 (opened with O_APPEND by the zygote
before the child's sandbox) and may open no path under the home, so it cannot
rename its log away itself. The worker does it for it, the way logrotate's
``copytruncate`` does: the older files move up one (ID.log.1 to ID.log.2...),
the log's content is copied to ID.log.1, and the log is truncated; the child's
next write lands at its new end, the start. A line the child writes between the
copy's end and the truncation is lost: the window is one system call wide.
The worker looks at each log as it supervises its strategy (each tick), at
most every EVERY seconds, so a log passes its size by at most what the
strategy wrote in that time.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Bytes copied at a time.
CHUNK = 1 << 20
#: Seconds between two looks at one log's size (a stat each: a thousand strategies at 1 Hz would make a thousand a second).
EVERY = 1.0


def rotate(path: Path, max_bytes: int, keep: int) -> bool:
    """Rotate ``path`` if it holds ``max_bytes`` or more, keeping ``keep`` older files; True if it did."""
    if max_bytes <= 0 or keep <= 0:
        return False
    try:
        if os.stat(path).st_size < max_bytes:
            return False
        for n in range(keep - 1, 0, -1):
            older = Path(f"{path}.{n}")
            if older.exists():
                os.replace(older, f"{path}.{n + 1}")
        _copy_truncate(path, Path(f"{path}.1"))
    except FileNotFoundError:
        return False  # removed meanwhile (`strategy rm`): nothing to rotate
    return True


def _copy_truncate(path: Path, to: Path) -> None:
    """Copied in the kernel (a 10 MB log in ~3 ms from the page cache), to its end as it is then."""
    with open(path, "rb") as source, open(to, "wb") as target:
        os.fchmod(target.fileno(), 0o600)
        while os.sendfile(target.fileno(), source.fileno(), None, CHUNK):
            pass  # until a read finds nothing more: what came during the copy is copied too
        os.truncate(path, 0)
