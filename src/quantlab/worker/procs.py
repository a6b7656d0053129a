"""Linux process plumbing: subreaper, parent-death signal, killing a group, reaping.

Hygiene: every way a strategy child ends goes through `Children.reap`,
which kills the child's whole process group before it reaps the child (the
unreaped leader keeps the group id from being reused, so the kill cannot hit
a stranger), and the worker, a child subreaper, also reaps every orphan it
inherits (the helpers of a dead strategy), so nothing is left as a zombie or
running on.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
from typing import Callable

from quantlab.worker import procfs

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_DUMPABLE = 4
_libc = ctypes.CDLL(None, use_errno=True)
#: Looked up once, at import: in the zygote, before its forks. Looked up by each child (its
#: parent-death signal), ctypes' lookup would cost each child 0.05 MB of private memory.
_libc_prctl = _libc.prctl


def _prctl(option: int, value: int) -> None:
    if _libc_prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def become_subreaper() -> None:
    """Orphans below this process (the zygote's grandchildren) are re-parented to it."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def become_undumpable() -> None:
    """Same-user processes (a strategy) may no longer read this one's /proc environ and memory, nor attach.

    The kernel then owns /proc/PID/{environ,mem,maps,...} and refuses ptrace access without
    CAP_SYS_PTRACE; no core dump is written either. The worker holds the exchange secrets.
    """
    _prctl(_PR_SET_DUMPABLE, 0)


def die_with_parent(expected_parent: int, sig: int = signal.SIGKILL) -> None:
    """Get ``sig`` when the parent dies; exit now if it already has."""
    _prctl(_PR_SET_PDEATHSIG, sig)
    if os.getppid() != expected_parent:
        os._exit(1)


def kill_group(pgid: int) -> None:
    """SIGKILL a whole process group; a group that is already gone is fine."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def describe_status(status: int) -> str:
    """'exit code 3' or 'signal SIGKILL', from a waitpid status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"signal {signal.Signals(sig).name}"
        except ValueError:
            return f"signal {sig}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


class Children:
    """The strategy children this worker is the parent of: a pidfd each, reaped here and only here."""

    def __init__(self, watch: Callable[[int, Callable[[], None]], None], unwatch: Callable[[int], None], log: logging.Logger) -> None:
        self._watch = watch
        self._unwatch = unwatch
        self.log = log
        self.tracked: dict[int, tuple[int, Callable[[int], None]]] = {}  #: pid -> (pidfd, on_exit)

    def track(self, pid: int, on_exit: Callable[[int], None]) -> None:
        """Watch ``pid`` (our child); ``on_exit(wait status)`` runs once it is reaped."""
        pidfd = os.pidfd_open(pid)
        self.tracked[pid] = (pidfd, on_exit)
        self._watch(pidfd, lambda: self.reap(pid))

    def reap(self, pid: int) -> None:
        """Reap ``pid`` if it has exited: kill its group first, then report its status."""
        if pid not in self.tracked:
            return
        # Peek first: a stale poller event (a pidfd number reused) must never block in waitpid.
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            return
        pidfd, on_exit = self.tracked.pop(pid)
        kill_group(pid)  # its helpers go with it, while the zombie leader still holds the group id
        _, status = os.waitpid(pid, 0)
        self._unwatch(pidfd)
        os.close(pidfd)
        on_exit(status)

    def reap_orphans(self, reap_other: Callable[[int], bool]) -> int:
        """Reap every exited child: ours through `reap`, others that ``reap_other`` claims
        (the zygote's Popen), and orphans re-parented to us. How many orphans were reaped."""
        orphans = 0
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return orphans
            if info is None:
                return orphans
            pid = info.si_pid
            if pid in self.tracked:
                self.reap(pid)
            elif not reap_other(pid):
                os.waitpid(pid, os.WNOHANG)
                orphans += 1

    def kill_all(self) -> None:
        for pid in list(self.tracked):
            kill_group(pid)


def tree_memory_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants in MB (pages shared with the zygote count too)."""
    total = 0
    for member in (pid, *procfs.descendants(pid)):
        try:
            total += procfs.rss_bytes(member)
        except OSError:
            continue  # exited meanwhile
    return total / 1e6
