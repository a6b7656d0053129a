"""A uid per strategy: `qlab worker start --strategy-uids FIRST-LAST`.

Each strategy child then runs as a uid of its own from the range, with the
group of the same number and no supplementary group, switched to in the
child after the fork, before its lock-down and its sandbox
(quantlab/worker/zygote.py). So the worker's files (the home, the store, the
logs, the accounts file: 0700 folders and 0600 files of the worker's user)
are closed to it by plain permissions, and so are its neighbours' processes,
even where the kernel has no Landlock.

The worker chooses the uid, so that two strategies that run at once never
share one: a uid is free again once its child is reaped. A strategy gets the
uid it had last when that one is free, and its first one is found from its
id, so it mostly keeps one across restarts of itself and of the worker.

Switching takes CAP_SETUID and CAP_SETGID (in the zygote, which inherits
them), and signalling children of other uids takes CAP_KILL: root has them,
and the systemd unit gives them to the worker's user alone
(`qlab systemd render --strategy-uids`).
"""

from __future__ import annotations

import os
import re
import zlib

import msgspec

from quantlab.errors import ConfigError
from quantlab.worker import procfs

_RANGE = re.compile(r"(\d+)-(\d+)")
#: The capabilities the worker needs, by their bit in /proc/self/status's CapEff.
NEEDED = {"CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7}
#: The highest uid a range may hold: 65534 is "nobody", and 2**32 - 1 means "no change" to setresuid.
HIGHEST = 65533


class UidRange(msgspec.Struct, frozen=True):
    first: int
    last: int

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


def parse(text: str) -> UidRange:
    """``FIRST-LAST`` as a range; ConfigError, naming the option, when it is not one strategies can use."""
    found = _RANGE.fullmatch(text.strip())
    if found is None:
        raise ConfigError(f"--strategy-uids {text!r}: give a range of uids, FIRST-LAST, e.g. 61000-61999")
    uids = UidRange(int(found[1]), int(found[2]))
    if not 1000 <= uids.first <= uids.last <= HIGHEST:
        raise ConfigError(f"--strategy-uids {uids}: give FIRST <= LAST between 1000 and {HIGHEST} "
                          "(below 1000 are the system's users)")
    if os.geteuid() in range(uids.first, uids.last + 1):
        raise ConfigError(f"--strategy-uids {uids} holds the worker's own uid {os.geteuid()}")
    return uids


def missing_capabilities() -> list[str]:
    """The capabilities the worker lacks to run strategies under their own uids."""
    effective = procfs.effective_capabilities()
    return [name for name, bit in NEEDED.items() if not effective >> bit & 1]


class UidPool:
    """Which uid of the range each running strategy child holds."""

    def __init__(self, uids: UidRange) -> None:
        self.uids = uids
        self.held: dict[int, str] = {}  #: uid -> the strategy whose child holds it
        self.last: dict[str, int] = {}  #: strategy -> the uid it had last

    def take(self, strategy: str) -> int | None:
        """A uid no running child holds, the strategy's own where it can; None when every one is held."""
        start = self.last.get(strategy, self.uids.first + zlib.crc32(strategy.encode()) % len(self.uids))
        for step in range(len(self.uids)):
            uid = self.uids.first + (start - self.uids.first + step) % len(self.uids)
            if uid not in self.held:
                self.held[uid] = strategy
                self.last[strategy] = uid
                return uid
        return None

    def release(self, uid: int) -> None:
        """Its child was reaped (or never forked): another strategy may have it."""
        self.held.pop(uid, None)


def pool(uids: UidRange | None) -> UidPool | None:
    """The worker's pool for ``uids`` (None: none); ConfigError when the worker cannot switch to them or signal them."""
    if uids is None:
        return None
    if lacking := missing_capabilities():
        raise ConfigError(f"--strategy-uids {uids} needs root, or {', '.join(NEEDED)}: this worker lacks "
                          f"{', '.join(lacking)}")
    return UidPool(uids)


def become(uid: int) -> None:
    """Run as ``uid``, its group of the same number and no other (in a child, with CAP_SETUID and CAP_SETGID)."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
