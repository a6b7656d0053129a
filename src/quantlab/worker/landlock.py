"""Landlock through its three system calls: what a process may open from now on, and whom it may signal.

A ruleset names the access rights it handles; a process that restricts itself
to it keeps, of those, only what a rule grants beneath a path, for itself and
every process it starts or execs from then on, and can never lift it. Access
to files already open (the log on fd 1 and 2) stays as it was. The kernel's ABI
version says which rights it knows: a right it does not know is not asked for,
so a newer ABI restricts more and an older one still restricts what it can.
From ABI 6 the ruleset also scopes signals and abstract unix sockets to the
process's own domain (itself and what it starts).
"""

from __future__ import annotations

import ctypes
import os
import stat

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # the same on x86_64 and aarch64
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
TRUNCATE = 1 << 14  # ABI 3
#: Every file-system right of each ABI: ABI 1 knows 13, ABI 2 adds REFER, 3 TRUNCATE, 5 IOCTL_DEV.
_FS_RIGHTS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
#: The rights a rule may grant on a regular file (the others concern directories).
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | (1 << 15)
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
_SCOPE_SIGNAL = 1 << 1
#: The ABI from which signals (and abstract unix sockets) can be scoped to the domain.
SCOPES_SIGNALS = 6

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall  # looked up once, in the zygote: each child shares it


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (too old, or disabled at boot)."""
    version = _syscall(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    return max(version, 0)


def _handled_fs(version: int) -> int:
    return _FS_RIGHTS[max(v for v in _FS_RIGHTS if v <= version)]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock {what}: {os.strerror(err)}")
    return result


def restrict_self(rules: dict[str, int] | None, version: int) -> None:
    """Restrict this process to ``rules`` (path -> rights beneath it), for the rights ABI ``version`` knows.

    ``rules`` None: the file system stays as it is, only the scopes apply (ABI 6 on). A path
    that does not exist is left out: it grants nothing, and there is nothing to reach.
    Needs ``no_new_privs`` (or CAP_SYS_ADMIN); OSError when the kernel refuses.
    """
    handled = 0 if rules is None else _handled_fs(version)
    attr = _RulesetAttr(handled_access_fs=handled)
    size = 8  # ABI 1-3 read handled_access_fs alone; 4 adds the network's word, 6 the scopes
    if version >= SCOPES_SIGNALS:
        attr.scoped = _SCOPE_SIGNAL | _SCOPE_ABSTRACT_UNIX_SOCKET
        size = ctypes.sizeof(_RulesetAttr)
    elif version >= 4:
        size = 16
    ruleset = _check(_syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0), "create_ruleset")
    try:
        for path, rights in (rules or {}).items():
            _add_rule(ruleset, path, rights & handled)
        _check(_syscall(_SYS_RESTRICT_SELF, ruleset, 0), "restrict_self")
    finally:
        os.close(ruleset)


def _add_rule(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= FILE_RIGHTS  # the kernel refuses a directory's rights on a file
        rule = _PathBeneathAttr(allowed_access=rights, parent_fd=fd)
        _check(_syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0), f"add_rule {path}")
    finally:
        os.close(fd)
