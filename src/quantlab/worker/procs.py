"""Linux process plumbing: subreaper, parent-death signal, a child's lock-down, killing, reaping.

Hygiene: every way a strategy child ends goes through `Children.reap`,
which kills the child's whole process group before it reaps the child (the
unreaped leader keeps the group id from being reused, so the kill cannot hit
a stranger), and the worker, a child subreaper, kills every process
re-parented to it that is not its child (`strays`: a helper in a session of
its own, or left by a double fork) and reaps every orphan it inherits, so
nothing is left as a zombie or running on.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
import signal
from typing import Callable, Iterator

from quantlab.worker import procfs, strategyuids

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_DUMPABLE = 4
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAPABILITY_VERSION_3 = 0x20080522
_libc = ctypes.CDLL(None, use_errno=True)
#: Looked up once, at import: in the zygote, before its forks. Looked up by each child (its
#: parent-death signal, its lock-down), ctypes' lookup would cost each child 0.05 MB of private memory.
_libc_prctl = _libc.prctl
_libc_capset = _libc.capset
#: capset's header and its two data words (all zero: no capability at all), made once for the same reason.
_CAP_HEADER = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)
_CAP_NONE = (ctypes.c_uint32 * 6)()


def _prctl(option: int, value: int) -> None:
    if _libc_prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def become_subreaper() -> None:
    """Orphans below this process (the zygote's grandchildren) are re-parented to it."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


#: Descriptors a strategy costs its worker, about: its pidfd, its channel connection, its state log,
#: and its log while it rotates, with room for the store's own.
FILES_PER_STRATEGY = 4


def raise_open_files_limit(strategies: int) -> str:
    """The soft limit on open files raised to the hard one; a line to log when that is still short
    for ``strategies``, else "".

    systemd starts a service with a soft limit of 1,024 (and a hard one of 524,288): a worker
    holds a few descriptors a strategy, and at a few hundred strategies would fail every open
    with EMFILE.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard == resource.RLIM_INFINITY or hard >= FILES_PER_STRATEGY * strategies:
        return ""
    return (f"this worker may open {hard} files, and {strategies} strategies need about "
            f"{FILES_PER_STRATEGY * strategies}: raise its hard limit (ulimit -Hn, or LimitNOFILE= in its unit)")


def become_undumpable() -> None:
    """Same-user processes (a strategy) may no longer read this one's /proc environ and memory, nor attach.

    The kernel then owns /proc/PID/{environ,mem,maps,...} and refuses ptrace access without
    CAP_SYS_PTRACE; no core dump is written either. The worker holds the exchange secrets.
    """
    _prctl(_PR_SET_DUMPABLE, 0)


@contextlib.contextmanager
def dumpable() -> Iterator[None]:
    """Dumpable for the moment of the block (see ``become_undumpable``), and not again after it."""
    _prctl(_PR_SET_DUMPABLE, 1)
    try:
        yield
    finally:
        _prctl(_PR_SET_DUMPABLE, 0)


def lock_down(uid: int | None = None) -> None:
    """Make this process (a strategy child, before it runs any strategy code) unable to reach past itself.

    ``uid``: the uid (and gid) it runs as from now on (quantlab/worker/strategyuids.py), taken after
    the bounding set is emptied (that needs CAP_SETPCAP, which a switch away from root drops) and
    before the other capabilities go (the switch needs CAP_SETUID and CAP_SETGID).

    No capability, none to gain again (an empty bounding set, ``no_new_privs``: an exec of a
    set-user-ID program or of any file by root gives nothing), and not dumpable: a process of
    the same user can then neither attach to it nor read its /proc memory and environment,
    and, having no CAP_SYS_PTRACE itself, nor those of the worker and the zygote, which are
    not dumpable either. An exec (Node) makes the process dumpable again; the rest stays.
    """
    for cap in range(_LAST_CAP + 1):  # first: dropping one takes CAP_SETPCAP, gone after capset
        _libc_prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)  # refused without CAP_SETPCAP: then there was none to gain
    if uid is not None:
        strategyuids.become(uid)
    _libc_prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if _libc_capset(_CAP_HEADER, _CAP_NONE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    _prctl(_PR_SET_DUMPABLE, 0)


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except OSError:
        return 63  # dropping a capability the kernel does not know is refused, and harmless


_LAST_CAP = _last_cap()


def die_with_parent(expected_parent: int, sig: int = signal.SIGKILL, parent: Callable[[], int] = os.getppid) -> None:
    """Get ``sig`` when the parent dies; exit now if it already has. ``parent``: how to read the parent's pid."""
    _prctl(_PR_SET_PDEATHSIG, sig)
    if parent() != expected_parent:
        os._exit(1)


def kill_group(pgid: int) -> None:
    """SIGKILL a whole process group; a group that is already gone is fine."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def kill_trees(roots: list[int]) -> None:
    """SIGKILL ``roots`` and every descendant of theirs, whatever session or group it moved to.

    Stopped first, a scan at a time until a scan finds no new one (a stopped process
    cannot fork), then killed: killed from the top, a descendant would be re-parented
    away before it is found.
    """
    stopped: set[int] = set()
    todo = set(roots)
    while todo:
        for pid in todo:
            _signal(pid, signal.SIGSTOP)
        stopped |= todo
        todo = set(procfs.descendants_of(sorted(stopped))) - stopped
    for pid in stopped:
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def strays(known: set[int]) -> list[int]:
    """This process's children that it neither started nor knows: orphans re-parented to it, a subreaper.

    A process this one starts itself stays in its session; a strategy's process never is in
    it (each child starts its own), so a child from another session that is not ``known``
    (the strategy children) came from a strategy.
    """
    me, session = os.getpid(), os.getsid(0)
    out = []
    for pid in procfs.children(me):
        if pid in known:
            continue
        try:
            if procfs.session(pid) != session and not procfs.exited(pid):
                out.append(pid)
        except OSError:
            continue  # gone meanwhile
    return out


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
        """Every child, its group and every descendant (a helper in a session of its own too)."""
        pids = list(self.tracked)
        kill_trees(pids)
        for pid in pids:
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
