"""The worker's list of its strategy children, kept in a file where whoever outlives the worker finds it.

A child is written down with its start time the moment the worker learns its
pid, and struck off once it is reaped; each child leads its own session and
process group (it calls setsid), so its pid names those too. When the worker dies without cleaning up (SIGKILL), its children are
stopped (their parent-death signal) and the zygote of the moment, or the
worker's next start, ends every one still listed and all their descendants:
no single zygote has to have forked them all.

A pid is acted on only while it is still the same process (the start time
matches): a pid the system gave to a stranger since is left alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec

from quantlab.files import private_dir, write_durable
from quantlab.worker import procfs, procs


class Member(msgspec.Struct, array_like=True, frozen=True):
    pid: int  #: also its process group's and its session's id
    started: float  #: procfs.started: what tells the same process from a later one with its pid


class Listing(msgspec.Struct, frozen=True):
    worker: int  #: the pid of the worker that wrote it: a zygote ends only its own worker's children
    children: list[Member]


_encode = msgspec.json.encode
_decode = msgspec.json.Decoder(Listing).decode


def members(pids: list[int]) -> list[Member]:
    """The live ones of ``pids``, as the list keeps them."""
    out = []
    for pid in pids:
        try:
            out.append(Member(pid, procfs.started(pid)))
        except OSError:
            continue  # gone already
    return out


def load(path: Path, worker: int | None = None) -> list[Member]:
    """The children listed in ``path`` (only if ``worker`` wrote it, when given); none when there
    is no list or it does not decode: nothing is then known to end."""
    try:
        listing = _decode(path.read_bytes())
    except (OSError, msgspec.DecodeError):
        return []
    return listing.children if worker is None or listing.worker == worker else []


def end(listed: list[Member]) -> int:
    """Kill every listed child that is still the same process, with its group, session and descendants; how many."""
    alive = [m.pid for m in listed if _same(m)]
    # While a leader lives (stopped, or a zombie) no other process can hold its group or session id.
    procs.kill_trees(alive + procfs.in_sessions(set(alive)))
    for pid in alive:
        procs.kill_group(pid)
    return len(alive)


def _same(member: Member) -> bool:
    try:
        return abs(procfs.started(member.pid) - member.started) < 0.05
    except OSError:
        return False


class Family:
    """The children a worker has now, written to ``path`` at the end of each loop pass that changed it."""

    def __init__(self, path: Path, log: logging.Logger) -> None:
        self.path = path
        self.log = log
        self.members: dict[int, Member] = {}
        self.changed = False

    def end_previous(self) -> None:
        """What the previous incarnation of this worker left running, ended: before this one forks anything."""
        ended = end(load(self.path))
        if ended:
            self.log.warning("ended %d strategy children a previous run of this worker left behind", ended)
        private_dir(self.path.parent)
        self.save(force=True)

    def add(self, pid: int) -> None:
        for member in members([pid]):
            self.members[pid] = member
            self.changed = True

    def remove(self, pid: int) -> None:
        if self.members.pop(pid, None) is not None:
            self.changed = True

    def save(self, force: bool = False) -> None:
        """Write the list if it changed; not synced: a power cut also ends every process it names."""
        if not (self.changed or force):
            return
        self.changed = False  # a write that fails is tried again with the next change, not every pass
        fresh = self.path.with_name(self.path.name + ".new")
        try:
            fresh.unlink(missing_ok=True)
            write_durable(fresh, _encode(Listing(os.getpid(), list(self.members.values()))), sync=False)
            fresh.replace(self.path)  # whoever reads it sees the old list or the new one, whole
        except OSError as e:
            self.log.warning("cannot write the list of strategy children to %s: %s", self.path, e)
