"""The sandbox a strategy child enters after its fork, before any strategy code runs.

Layers, each where the kernel has it (`layers` says which; the worker logs what
is missing at its start and registers the rest, shown by `qlab status`):

- Landlock (quantlab/worker/landlock.py): the child may read (and execute)
  the system's libraries and a few files of /etc, the interpreter and its
  packages, Node's install for a JavaScript child, and its strategy's own
  folder; write nothing but /dev/null. Its log is fd 1 and 2, opened by the
  zygote before the ruleset. The home and the accounts file are never
  granted, nor any path that holds one or lies inside one: a child that
  needs such a path (mostly a strategy file put inside the home, whose
  folder holds it) gets no file-system layer at all, and its log says so. From ABI 6 it may signal, ptrace and
  reach abstract unix sockets of its own domain only: itself and what it
  starts, never a sibling, the worker or the director.
- seccomp (quantlab/worker/seccomp.py): no ptrace, no process_vm_readv/writev,
  no namespace or mount of its own making; with a Landlock too old to scope
  signals, no signal outside its own group.
- a PID namespace and a /proc of its own (quantlab/worker/pidns.py), made
  before this: it sees, and can name, no process but itself and its helpers.

Connecting to the worker's ipc:// socket (a named one, under /tmp) needs no
grant: Landlock, up to ABI 7, does not mediate connecting to a named unix socket.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from quantlab.worker import landlock, pidns, seccomp
from quantlab.worker.strategyuids import UidRange

_READ = landlock.READ_FILE | landlock.READ_DIR
_READ_EXEC = _READ | landlock.EXECUTE
#: What of the machine a child reads: libraries, the loader's cache, time zones, certificates, name
#: resolution. Not /etc as a whole: it may hold the accounts file, or other users' secrets.
SYSTEM = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "ssl", "ca-certificates",
       "ca-certificates.conf", "pki", "crypto-policies", "resolv.conf", "hosts", "host.conf", "nsswitch.conf",
       "gai.conf", "services", "protocols", "passwd", "group", "mime.types", "os-release", "locale.alias",
       "locale.conf")
#: /proc: its own entries, and others' public ones; another process's memory, environment and
#: descriptors need ptrace access, which Landlock refuses outside the child's domain.
READ_ONLY = ("/proc", "/sys/devices/system/cpu", "/sys/fs/cgroup", "/dev/urandom", "/dev/random", "/dev/zero")
WRITABLE = ("/dev/null",)

ABI = landlock.abi()  #: found once, in the zygote


def layers(uids: UidRange | None) -> list[str]:
    """The layers every strategy child of this worker runs under, e.g. ["landlock-7", "seccomp", "pidns",
    "uids-61000-61999"] (``uids``: its --strategy-uids)."""
    out = [f"landlock-{ABI}"] if ABI else []
    out += ["seccomp"] if seccomp.supported() else []
    out += [level.value] if (level := pidns.probe(uids)).value else []
    return out + ([f"uids-{uids}"] if uids else [])


def missing(uids: UidRange | None) -> list[str]:
    """One line per layer this kernel (or the service) refuses, saying what a strategy can then do."""
    lines = []
    level = pidns.probe(uids)
    if level is pidns.Level.NONE:
        lines.append("no PID namespace for strategies (no user namespaces here, or the service refuses them): "
                     "a strategy sees every process of the machine in /proc")
    elif level is pidns.Level.HOST_PROC:
        lines.append("strategies get a PID namespace but not a /proc of their own: a strategy sees the pids and "
                     "command lines of the machine's processes, though it can signal none of them")
    if not ABI:
        lines.append("no Landlock in this kernel: a strategy can read and write whatever the worker's user can")
    elif ABI < landlock.SCOPES_SIGNALS:
        lines.append(f"Landlock ABI {ABI} cannot scope signals: seccomp alone keeps them within a strategy's group")
    if not seccomp.supported():
        lines.append("no seccomp filter for this machine's architecture: a strategy may ptrace its siblings")
    return lines


class Overlap(Exception):
    """A path the child needs holds the home or the accounts file, or lies inside one: Landlock cannot grant it."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _safe(path: str, private: list[str]) -> bool:
    """``path`` neither holds nor lies inside a private one (compared resolved)."""
    real = os.path.realpath(path)
    return not any(_within(p, real) or _within(real, p) for p in private)


def rules(file: str, argv: list[str], private: list[str]) -> dict[str, int]:
    """What the child of strategy ``file`` may reach: path -> Landlock rights.

    ``argv``: what the child execs (Node's runner, [] for Python); ``private``: the home and
    the accounts file, which no rule may reach. Overlap when a path the child cannot do
    without (its folder, the system's, the interpreter's, Node's) would reach one; a path it
    may do without (another entry of the import path, a file of /etc) is left out.
    """
    folder = [str(Path(file).parent)] if file and file.startswith("/") else []
    if folder and not _safe(folder[0], [os.path.realpath(p) for p in private]):
        raise Overlap(folder[0])
    return {**shared_rules(tuple(argv), tuple(private)), **{path: _READ_EXEC for path in folder}}


@functools.lru_cache(maxsize=8)
def shared_rules(argv: tuple[str, ...], private: tuple[str, ...]) -> dict[str, int]:
    """The rules every child of the same ``argv`` shares (all but its strategy's folder).

    Cached, and made once in the zygote before it forks (``prepare``): worked out in each child,
    its objects would be written into pages the child shares with the zygote (about 0.15 MB of
    private copies a child, measured). Callers copy it, never change it.
    """
    real_private = [os.path.realpath(p) for p in private]
    # The interpreter and quantlab's package; Node's install and every absolute path on Node's
    # command line (the runner, the runtime's node_modules).
    needed = [*SYSTEM, sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(__file__).parents[1]),
              *([str(Path(os.path.realpath(argv[0])).parents[1]), *argv[1:]] if argv else [])]
    # Not the working folder `python -m` put on the import path: the worker's, it may hold anything.
    optional = [*(p for p in sys.path if p not in ("", os.getcwd())), *(f"/etc/{name}" for name in ETC)]
    granted: dict[str, int] = {}
    for path in needed:
        if path.startswith("/"):
            if not _safe(path, real_private):
                raise Overlap(path)
            granted[path] = _READ_EXEC
    granted.update({path: _READ_EXEC for path in optional if path.startswith("/") and _safe(path, real_private)})
    granted.update({path: _READ for path in READ_ONLY})
    granted.update({path: _READ | landlock.WRITE_FILE | landlock.TRUNCATE for path in WRITABLE})
    return granted


def prepare(private: list[str]) -> None:
    """In the zygote, before any fork: the rules a Python child shares and the seccomp filter, made once."""
    seccomp.prepare(signals=ABI < landlock.SCOPES_SIGNALS)
    try:
        shared_rules((), tuple(private))
    except Overlap:
        pass  # each child finds it again, and says so in its log


def enter(file: str, argv: list[str], private: list[str]) -> str:
    """Put this process (a locked-down child, ``no_new_privs`` set) in its sandbox; a line for its log, or ""."""
    note = ""
    granted: dict[str, int] | None
    try:
        granted = rules(file, argv, private)
    except Overlap as e:
        granted = None  # the scopes below still apply
        note = (f"quantlab: no file-system sandbox for this strategy: {e.path} holds the quantlab home or the "
                "accounts file, or lies inside one; give the strategy a folder of its own\n")
    if ABI and (granted is not None or ABI >= landlock.SCOPES_SIGNALS):
        landlock.restrict_self(granted, ABI)
    if seccomp.supported():
        seccomp.install(os.getpid(), signals=ABI < landlock.SCOPES_SIGNALS)
    return note if ABI else ""
