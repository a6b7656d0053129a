"""A seccomp filter for a strategy child: no ptrace, no process_vm_*, no namespace or mount of its own making,
and (optionally) signals to its own group only.

The filter is a classic BPF program over ``struct seccomp_data`` (nr at offset 0,
arch at 4, the arguments from 16, eight bytes each, little-endian), installed
with prctl(PR_SET_SECCOMP). It is built in the child after the fork, so its own
pid can be a constant: seccomp sees a signal's target pid, not the target's
group, and the child leads its own group (pid == pgid). Every thread and process
it starts inherits the filter, with the same constant. A system call of another
architecture (the 32-bit entry points of x86_64) kills the process: its numbers
differ, so the checks below would not hold for it.

Namespaces: a strategy runs in a PID namespace its worker made
(quantlab/worker/pidns.py); a user namespace of its own making would give it
every capability there, and the kernel's whole surface for them. clone3
passes its flags in memory the filter cannot read: it is refused as unknown
(ENOSYS), which makes the C library fall back to clone, whose flags it can.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform

_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_RET_KILL_PROCESS = 0x80000000
_LD_ABS_W = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K
_X32_BIT = 0x40000000  # x86_64's x32 ABI: the same arch, numbers with this bit

#: The same number on every architecture (added after the tables were unified).
_NEW_MOUNT_API = {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
                  "fspick": 433, "clone3": 435, "mount_setattr": 442}
#: Per machine: its audit arch, and the numbers of the calls the filter looks at.
_ARCHES = {
    "x86_64": (0xC000003E, {"ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kill": 62,
                            "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297,
                            "pidfd_send_signal": 424, "unshare": 272, "setns": 308, "mount": 165, "umount2": 166,
                            "pivot_root": 155, "clone": 56, **_NEW_MOUNT_API}),
    "aarch64": (0xC00000B7, {"ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kill": 129,
                             "tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240,
                             "pidfd_send_signal": 424, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39,
                             "pivot_root": 41, "clone": 220, **_NEW_MOUNT_API}),
}
#: Refused outright: reading or writing another process's memory, or attaching to it; making or
#: joining a namespace, or mounting.
_DENIED = ("ptrace", "process_vm_readv", "process_vm_writev", "unshare", "setns", "mount", "umount2", "pivot_root",
           "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr")
#: clone's flags that make a namespace (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET).
_CLONE_NAMESPACES = 0x7E020000
#: Signals whose first argument is the target (a pid, or a thread group): allowed for 0, -pgid and pid.
_SIGNALS_BY_PID = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl  # looked up once, in the zygote


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_Insn))]


def supported() -> bool:
    """This machine's architecture has a filter here."""
    return platform.machine() in _ARCHES


def program(own_pid: int, signals: bool, machine: str = "") -> list[tuple[int, int, int, int]]:
    """The filter's instructions (code, jt, jf, k); ``signals``: also keep signals within the group of ``own_pid``."""
    arch, nr = _ARCHES[machine or platform.machine()]
    deny = _RET_ERRNO | errno.EPERM
    checked = _DENIED + ("clone", "clone3") + (_SIGNALS_BY_PID + ("pidfd_send_signal",) if signals else ())
    # A pidfd says nothing the filter can read: refused like the memory calls.
    verdicts = [_verdict(name, own_pid, deny) for name in checked]
    out = [(_LD_ABS_W, 0, 0, 4), (_JEQ, 1, 0, arch), (_RET, 0, 0, _RET_KILL_PROCESS),
           (_LD_ABS_W, 0, 0, 0), (_JGE, 0, 1, _X32_BIT), (_RET, 0, 0, _RET_KILL_PROCESS)]
    # One comparison per checked call, then ALLOW, then each call's verdict block in the same order.
    past = 1  # instructions from ALLOW's slot to the next block: ALLOW itself, then the blocks before
    for i, name in enumerate(checked):
        out.append((_JEQ, len(checked) - i - 1 + past, 0, nr[name]))
        past += len(verdicts[i])
    out.append((_RET, 0, 0, _RET_ALLOW))
    for block in verdicts:
        out += block
    return out


def _verdict(name: str, own_pid: int, deny: int) -> list[tuple[int, int, int, int]]:
    """The instructions that judge a call of ``name``, once the filter knows it is that call."""
    if name in _SIGNALS_BY_PID:
        return _own_target(own_pid, deny)
    if name == "clone":  # allowed unless its flags (the first argument's low 32 bits) make a namespace
        return [(_LD_ABS_W, 0, 0, 16), (_JSET, 0, 1, _CLONE_NAMESPACES), (_RET, 0, 0, deny), (_RET, 0, 0, _RET_ALLOW)]
    if name == "clone3":
        return [(_RET, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    return [(_RET, 0, 0, deny)]


def _own_target(own_pid: int, deny: int) -> list[tuple[int, int, int, int]]:
    """Allow when the first argument's low 32 bits (the int the kernel reads) are 0, pid or -pid."""
    return [(_LD_ABS_W, 0, 0, 16),
            (_JEQ, 3, 0, 0),
            (_JEQ, 2, 0, own_pid),
            (_JEQ, 1, 0, (-own_pid) & 0xFFFFFFFF),
            (_RET, 0, 0, deny),
            (_RET, 0, 0, _RET_ALLOW)]


def install(own_pid: int, signals: bool) -> None:
    """Install the filter on this thread (and all it starts); needs ``no_new_privs``. OSError when refused."""
    prog = _compiled(own_pid, True)[0] if signals else _pid_free()[0]
    if _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp: {os.strerror(err)}")


def prepare(signals: bool) -> None:
    """In the zygote, before any fork: the filter every child shares, when it names no pid (see ``_pid_free``)."""
    if not signals and supported():
        _pid_free()


def _compiled(own_pid: int, signals: bool) -> tuple[_Prog, ctypes.Array[_Insn]]:
    """The program as the kernel takes it, with the array it points into (which must outlive it)."""
    insns = program(own_pid, signals)
    array = (_Insn * len(insns))(*(_Insn(*insn) for insn in insns))
    return _Prog(len(insns), array), array


@functools.cache
def _pid_free() -> tuple[_Prog, ctypes.Array[_Insn]]:
    """Without the signal checks the filter names no pid: the same for every child, so compiled once,
    in the zygote, rather than written into each child's pages shared with it."""
    return _compiled(0, False)
