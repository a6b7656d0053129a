"""What the worker reads about processes, straight from /proc (Linux): their tree, CPU time, memory, start.

psutil did this before. The worker needs five numbers from three files, and
psutil's modules cost every process that imports them about 0.7 MB (the
worker, and its zygote through `procs`), for five numbers.

Every function raises OSError (FileNotFoundError, ProcessLookupError) when
the process is gone.
"""

from __future__ import annotations

import os

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (``state`` first): the name may hold spaces."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2 :].decode().split()


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``: its children, theirs, and so on (one scan of /proc)."""
    return descendants_of([pid])


def descendants_of(pids: list[int]) -> list[int]:
    """Every live descendant of any of ``pids`` (one scan of /proc)."""
    by_parent: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            parent = int(_stat(int(name))[1])
        except OSError:
            continue  # exited meanwhile
        by_parent.setdefault(parent, []).append(int(name))
    found: list[int] = []
    todo = list(pids)
    while todo:
        children = by_parent.get(todo.pop(), [])
        found.extend(children)
        todo.extend(children)
    return found


def children(pid: int) -> list[int]:
    """The children of ``pid``'s main thread (where orphans re-parented to a subreaper go)."""
    with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
        return [int(field) for field in f.read().split()]


def session(pid: int) -> int:
    return int(_stat(pid)[3])


def exited(pid: int) -> bool:
    """A zombie: it exited and waits to be reaped."""
    return _stat(pid)[0] == "Z"


def in_sessions(sessions: set[int]) -> list[int]:
    """Every live process in one of ``sessions`` (one scan of /proc)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if int(_stat(int(name))[3]) in sessions:
                found.append(int(name))
        except OSError:
            continue  # exited meanwhile
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time the process used so far, user and system."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def started(pid: int) -> float:
    """When the process started, as a Unix time (what psutil's create_time() gives)."""
    return _boot_time() + int(_stat(pid)[19]) / _CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE_SIZE


def pss_bytes(pid: int) -> int:
    """Proportional set size: each shared page counts divided by the processes sharing it."""
    with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
        for line in f:
            if line.startswith(b"Pss:"):
                return int(line.split()[1]) * 1024
    return 0  # a zombie has no mappings


def effective_capabilities() -> int:
    """This process's effective capabilities, a bit per capability (CapEff of /proc/self/status)."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"CapEff:"):
                return int(line.split()[1], 16)
    return 0


def parent(status_fd: int) -> int:
    """The parent's pid, read from a /proc/PID/status opened earlier: as the /proc it was opened in
    numbers it, even after a /proc of another PID namespace is mounted over that one."""
    data = os.pread(status_fd, 4096, 0)
    start = data.index(b"\nPPid:") + 6
    return int(data[start : data.index(b"\n", start)])


def _boot_time() -> float:
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")
