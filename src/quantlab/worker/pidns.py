"""A PID namespace and a /proc of its own for each strategy child: it sees no process but its own.

The zygote's intermediate process (quantlab/worker/zygote.py), single-threaded
and about to fork the strategy, unshares a PID namespace and a mount namespace
(`unshare_for_child`): the strategy it forks next is PID 1 of the new one. The
strategy then mounts a fresh /proc over the host's in its own mount namespace
(`mount_proc`) before it drops its capabilities, so /proc lists it and its own
helpers alone. What a PID namespace gives besides:

- it cannot name any other process to signal it: no pid outside exists for it;
- its helpers end with it: when PID 1 of a namespace exits, the kernel kills
  every other process in it, wherever it moved to (its own session, a double fork).

Creating both namespaces takes CAP_SYS_ADMIN: a worker run as root has it;
any other one first makes a user namespace that maps the child's uid to
itself and no other (an unprivileged user may), in which the child holds the
capabilities for the mount until its lock-down empties them. The child's uid
must then be taken before that, in the intermediate (`become_first`).

Where the kernel or the service refuses a layer (no unprivileged user
namespaces, systemd's RestrictNamespaces=, a /proc the service's own sandbox
partly hides, which the kernel keeps a user namespace from mounting afresh),
the child runs without it and its log says so; `probe` finds the level the
worker's children get, for `qlab status`.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import os

from quantlab.worker import procfs, procs, strategyuids

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_MS_REC, _MS_PRIVATE = 0x4000, 1 << 18
_CAP_SYS_ADMIN = 21

_libc = ctypes.CDLL(None, use_errno=True)
#: Looked up once, in the zygote: looked up in each child, ctypes' lookup costs it private memory.
_unshare = _libc.unshare
_mount = _libc.mount


class Level(enum.Enum):
    """What the children of this worker get."""

    OWN_PROC = "pidns"  #: a PID namespace and a /proc that shows it alone
    HOST_PROC = "pidns-hostproc"  #: a PID namespace, but the host's /proc (its pids, not its processes' secrets)
    NONE = ""


def privileged() -> bool:
    """This process may make the namespaces without a user namespace (CAP_SYS_ADMIN)."""
    return bool(procfs.effective_capabilities() >> _CAP_SYS_ADMIN & 1)


def become_first(uid: int, can_admin: bool) -> bool:
    """In the intermediate: take the child's ``uid`` now when the namespaces need a user namespace
    (made by the uid it maps); True when taken here, so the child's lock-down must not again."""
    if can_admin:
        return False  # root keeps CAP_SYS_ADMIN for the unshare; the child switches in its lock-down
    strategyuids.become(uid)
    return True


def unshare_for_child(can_admin: bool) -> str:
    """In the intermediate, single-threaded, before it forks the child: the child will be PID 1 of a
    namespace of its own. A line for the child's log when refused (it then runs in the host's), or "";
    OSError when made but not mapped (see ``_map_self``)."""
    flags = _CLONE_NEWPID | _CLONE_NEWNS | (0 if can_admin else _CLONE_NEWUSER)
    ids = os.geteuid(), os.getegid()  # read before: in the new user namespace, unmapped, they read as 65534
    if _unshare(flags) != 0:
        err = ctypes.get_errno()
        return f"quantlab: no PID namespace for this strategy: unshare: {os.strerror(err)}\n"
    if not can_admin:
        _map_self(*ids)
    return ""


def _map_self(uid: int, gid: int) -> None:
    """Map this process's ``uid`` and ``gid`` to themselves in the user namespace it just made, no other;
    OSError when refused: the namespaces are then half made, and no child may be forked into them."""
    # While a process is not dumpable (the zygote is not, and a uid switch resets it) its /proc files
    # are root's, and these writes are refused: ours again for their moment. Nothing can attach
    # meanwhile: strategies are in namespaces of their own, and their seccomp and Landlock refuse it.
    with procs.dumpable():
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)


def in_own() -> bool:
    """This process is PID 1 of a namespace of its own (the child of an unshare that took)."""
    return os.getpid() == 1


def mount_proc() -> str:
    """In the child, PID 1 of its namespace, with its capabilities still held: a /proc of its namespace
    over the host's, in its own mount namespace. A line for its log when refused, or ""."""
    # Private first: a mount here must never show in the host's namespace (the root is shared there).
    if _mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0 or \
            _mount(b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None) != 0:
        err = ctypes.get_errno()
        return f"quantlab: this strategy's /proc is the host's (its own is refused: {os.strerror(err)})\n"
    return ""


@functools.cache
def probe(uids: strategyuids.UidRange | None) -> Level:
    """What a child of this worker gets, found by making one: forks, so call it before any thread starts.

    ``uids``: the worker's --strategy-uids; the probe runs as the first, which may change what the kernel allows."""
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            code = _probe_child(uids.first if uids else None)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return {0: Level.OWN_PROC, 1: Level.HOST_PROC}.get(code, Level.NONE)


def _probe_child(uid: int | None) -> int:
    """0: a namespace with its own /proc, 1: with the host's, 2: none."""
    can_admin = privileged()
    if uid is not None and not can_admin:
        strategyuids.become(uid)
    if unshare_for_child(can_admin):
        return 2
    pid = os.fork()
    if pid == 0:
        os._exit(1 if mount_proc() else 0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
