"""The zygote: a small process that forks strategy children on request.

Forking the worker itself is unsafe (it has threads and a ZeroMQ context), and
a fresh interpreter per strategy costs ~300 ms. The zygote is started as a
fresh interpreter (so it inherits no threads whenever the worker starts it,
also to replace one that died), imports what children need once, then forks
each child in milliseconds, sharing those pages copy-on-write.

To keep the worker the real parent of every child (exit codes by waitpid, a
pidfd in its poller), the worker is a child subreaper and the zygote
double-forks: the intermediate opens the child's log, makes the PID namespace
the child will be PID 1 of (quantlab/worker/pidns.py) and exits at once; the
grandchild is re-parented to the worker, mounts its own /proc, takes the uid
the worker chose for it, if any (quantlab/worker/strategyuids.py), locks
itself down (quantlab/worker/procs.py `lock_down`), arms its parent-death
signal (SIGSTOP) and enters its sandbox (quantlab/worker/sandbox.py) before
any strategy code runs.

The worker never waits for its zygote (quantlab/worker/spawner.py): it sends a
request and reads the answer when the socket is readable; a zygote that owes
an answer too long is killed and replaced. The worker, not the zygote, keeps
the list of every child (quantlab/worker/family.py), so whichever zygote runs
when the worker dies (SIGKILL) ends them all: on its socket's EOF it reads that
list, adds what it forked itself, stops each child and every descendant, then
kills them (a child's helpers may be in another session), and exits.

Wire: a SOCK_SEQPACKET socketpair; requests are msgpack ForkRequest (answered
with one Forked, in order) or Forget (no answer: the worker reaped that child
and ended its group, so the zygote must never act on that pid again).
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import msgspec

from quantlab import proctitle
from quantlab.worker import family, pidns, procfs, procs, sandbox


class ForkRequest(msgspec.Struct, tag="fork"):
    """What one strategy child needs from its fork: the worker's socket, its token, its log."""

    endpoint: str
    #: The incarnation's secret, said in its Hello (quantlab/protocol.py): a Python child keeps it in
    #: memory, a Node child reads it from its stdin, a pipe written and closed before the exec.
    token: bytes
    log_path: str
    #: A program the child execs once it is set up (a JavaScript strategy's Node runner);
    #: empty: it runs the Python runner.
    argv: list[str] = []
    #: The child's process title ("qlab strategy ID [WORKER]"); empty: the zygote's stays.
    title: str = ""
    #: The strategy's file: its folder is what of its own the child may read (quantlab/worker/sandbox.py).
    file: str = ""
    #: The strategy's id: the worker gives it the uid it had last (quantlab/worker/strategyuids.py).
    strategy: str = ""
    #: The uid (and gid) the child runs as, chosen by the worker; -1: the zygote's own.
    uid: int = -1


class Forget(msgspec.Struct, tag="forget"):
    pid: int


class Forked(msgspec.Struct):
    pid: int = 0
    error: str = ""


_encode = msgspec.msgpack.encode
_decode_request = msgspec.msgpack.Decoder(ForkRequest | Forget).decode
_decode_forked = msgspec.msgpack.Decoder(Forked).decode

#: Blocked around a fork; plain ints, made once: iterating the Signals enum at every fork
#: touches pages each child would then hold a copy of.
_ALL_SIGNALS = frozenset(int(sig) for sig in signal.valid_signals())

#: The zygote may make a child's namespaces without a user namespace (quantlab/worker/pidns.py).
_CAN_ADMIN = pidns.privileged()

#: Seconds a new child may wait to be re-parented to the worker.
REPARENT_TIMEOUT = 5.0


class Zygote:
    """The worker's handle on one zygote process: requests go out without waiting, answers are read when they come."""

    def __init__(self, env: dict[str, str] | None = None, worker_id: str = "", family_path: str = "",
                 private: list[str] | None = None, pid_namespace: bool = False) -> None:
        """``env``: the environment children inherit (the worker's allowlist of it); ``worker_id``: the
        worker's, for the zygote's process title; ``family_path``: the worker's list of its children
        (quantlab/worker/family.py), which the zygote ends when the worker dies; ``private``: the
        paths no child's sandbox may reach (the home, the accounts file); ``pid_namespace``: each
        child in a PID namespace of its own (quantlab/worker/pidns.py; the worker found it can be made)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)  # the worker's loop never waits on its zygote
        self.sock = ours
        self.env = env
        self.worker_id = worker_id
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "quantlab.worker.zygote", str(theirs.fileno()), str(os.getpid()), worker_id,
             family_path, "pidns" if pid_namespace else "-", *(private or [])],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
        )
        theirs.close()

    def send(self, request: ForkRequest | Forget) -> None:
        """Queue a request; OSError when the zygote is gone or owes too many answers already."""
        self.sock.send(_encode(request))

    def answers(self) -> list[Forked] | None:
        """The answers that came so far, in the order of the requests; None once the zygote is gone."""
        out: list[Forked] = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return out
            except OSError:
                return None
            if not data:
                return None
            out.append(_decode_forked(data))

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """End it now (it may be stopped, or stuck): its socket closes; it is reaped when SIGCHLD says so."""
        self.sock.close()
        self.proc.kill()

    def close(self) -> None:
        self.sock.close()  # EOF ends the zygote's loop
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()


# ---- inside the zygote process ----


def _serve(sock: socket.socket, worker_pid: int, family_path: str, namespaces: bool, private: list[str]) -> None:
    # Imported here, once: every child starts with them loaded, and the rules of its sandbox made.
    from quantlab.child import runner  # noqa: F401

    sandbox.prepare(private)

    unreaped: list[family.Member] = []  # children the worker has not reaped: they and theirs may be running
    while True:
        data = sock.recv(65536)
        if not data:  # the worker closed us, or died: leave nothing of its children behind
            _end_all(family_path, worker_pid, unreaped)
            return
        request = _decode_request(data)
        if isinstance(request, Forget):
            unreaped = [member for member in unreaped if member.pid != request.pid]
            continue
        # The child waits for EOF on ``answered`` before it does anything: its first message to the
        # worker can then never come before our answer, which tells the worker whose message it is.
        answered = os.pipe()
        try:
            pid = _double_fork(request, sock, worker_pid, answered, namespaces, private)
            reply = Forked(pid=pid)
            unreaped.extend(family.members([pid]))
        except OSError as e:
            reply = Forked(error=str(e))
        finally:
            os.close(answered[0])
        try:
            sock.sendall(_encode(reply))
        except OSError:  # the worker is gone
            _end_all(family_path, worker_pid, unreaped)
            return
        finally:
            os.close(answered[1])


def _end_all(family_path: str, worker_pid: int, unreaped: list[family.Member]) -> None:
    """End every child of the worker's, and theirs: those on its list (earlier zygotes forked some) and ours.

    Only the list our worker wrote: the worker's next start may have written its own already.
    """
    known = family.load(Path(family_path), worker_pid) if family_path else []
    family.end(known + unreaped)


def _double_fork(request: ForkRequest, sock: socket.socket, worker_pid: int, answered: tuple[int, int],
                 namespaces: bool, private: list[str]) -> int:
    read_fd, write_fd = os.pipe()
    # Every object so far into the permanent generation: the child's collections never walk
    # (and so never write to) the pages it shares with us and its siblings.
    gc.freeze()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
    try:
        middle = os.fork()
        if middle == 0:
            # Whatever fails here ends this process: raised on, it would go on serving as a second zygote.
            code = 1
            try:
                os.close(read_fd)
                uid = _isolate(request, namespaces)
                grandchild = os.fork()
                if grandchild == 0:
                    os.close(write_fd)
                    os.close(answered[1])
                    os.read(answered[0], 1)  # EOF once the worker has our pid (or the zygote is gone)
                    os.close(answered[0])
                    _become_strategy(request, sock, worker_pid, old_mask, private, uid)
                os.write(write_fd, str(grandchild).encode())
                code = 0
            finally:
                os._exit(code)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    os.close(write_fd)
    pid_text = _read_all(read_fd)
    os.waitpid(middle, 0)  # after this the grandchild is the worker's child
    if not pid_text:
        raise OSError("intermediate fork failed")
    return int(pid_text)


def _read_all(fd: int) -> bytes:
    """What the intermediate wrote, up to its exit; closes ``fd``.

    Plain reads, not a file object: every page the zygote writes after a fork is one the child
    forked before must then hold a copy of (read through a file object, one fork wrote 0.5 MB of
    them; read this way, 0.2 MB).
    """
    chunks = []
    while chunk := os.read(fd, 64):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _isolate(request: ForkRequest, namespaces: bool) -> int | None:
    """In the intermediate, before it forks the child: its log, and a PID namespace (quantlab/worker/pidns.py)
    the child will be PID 1 of. The uid the child's lock-down is still to take (None: none, or taken here)."""
    # Opened while it is still the worker's user: the logs folder is that user's alone.
    _redirect_output(request.log_path)
    uid = request.uid if request.uid >= 0 else None
    if not namespaces:
        return uid
    if uid is not None and pidns.become_first(uid, _CAN_ADMIN):
        uid = None
    try:
        sys.stderr.write(pidns.unshare_for_child(_CAN_ADMIN))
    except OSError as e:  # no child may run in half-made namespaces: this fork fails, and is tried again
        sys.stderr.write(f"quantlab: cannot make this strategy's user namespace: {e.strerror}\n")
        os._exit(1)
    return uid


def _become_strategy(request: ForkRequest, sock: socket.socket, worker_pid: int, mask: set[int | signal.Signals],
                     private: list[str], uid: int | None) -> None:
    code = 1
    try:
        gc.enable()  # the zygote runs without collections (see main); the strategy's own objects need them
        sock.close()
        os.setsid()  # its own process group: the worker kills it with killpg
        # Our parent as the host numbers it: in a PID namespace getppid() says 0, and /proc is soon our own.
        status = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
        if pidns.in_own():
            sys.stderr.write(pidns.mount_proc())  # with the capabilities the lock-down is about to drop
        # Before any of the strategy's code: its own uid, if still to take (the switch needs the
        # zygote's capabilities), then no capability, not dumpable, no_new_privs.
        procs.lock_down(uid)
        if request.title:
            proctitle.set_title(request.title)
        _wait_for_reparent(worker_pid, status)
        # Stopped, not killed, when the worker dies: its helpers stay its descendants, and the zygote
        # (or the worker's next start) finds and ends them all from the worker's list. After the uid
        # switch, which clears a parent-death signal.
        procs.die_with_parent(worker_pid, signal.SIGSTOP, parent=lambda: procfs.parent(status))
        os.close(status)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        # Last, with the log open on fd 1 and 2: from here on the child reaches only what its sandbox grants.
        sys.stderr.write(sandbox.enter(request.file, request.argv, private))
        if request.argv:  # the same child (group, parent, log, environment), running Node
            _token_on_stdin(request.token)
            try:
                os.execv(request.argv[0], request.argv)
            except OSError as e:
                print(f"cannot start {request.argv[0]}: {e}", file=sys.stderr)
                raise
        from quantlab.child.runner import run_child

        code = run_child(request.endpoint, request.token)
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # os._exit skips it, and print() output belongs in the log
        os._exit(code)


def _wait_for_reparent(worker_pid: int, status: int) -> None:
    deadline = time.monotonic() + REPARENT_TIMEOUT
    while procfs.parent(status) != worker_pid:
        if time.monotonic() > deadline:
            os._exit(1)
        time.sleep(0.0001)


def _token_on_stdin(token: bytes) -> None:
    """The token as the only thing on stdin: a pipe written and closed here, read by the exec'd runner."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, token)  # far below a pipe's buffer: never blocks
    os.close(write_fd)
    os.dup2(read_fd, 0)
    os.close(read_fd)


def _redirect_output(log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]


def main() -> None:
    # No collections in the zygote: they would free objects between the shared ones and leave
    # holes a child's allocations then fill, copying those pages (the recipe of gc.freeze's docs).
    gc.disable()
    fd, worker_pid = int(sys.argv[1]), int(sys.argv[2])
    # Before any fork: setproctitle's module, and the copy of the environment its first call
    # makes, are then pages the children share; a child's own title writes only its argv page.
    proctitle.set_title(f"qlab zygote {sys.argv[3]}".rstrip() if len(sys.argv) > 3 else "qlab zygote")
    # No parent-death signal here: when the worker dies, the EOF on our socket makes us end
    # its children and theirs before we exit (see _serve).
    if os.getppid() != worker_pid:
        os._exit(1)
    procs.become_undumpable()  # a child must not read or alter what the next child is forked from
    # The terminal's Ctrl-C reaches the worker's whole group; the worker decides, not us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    family_path, namespaces = (sys.argv[4], sys.argv[5] == "pidns") if len(sys.argv) > 5 else ("", False)
    _serve(socket.socket(fileno=fd), worker_pid, family_path, namespaces, sys.argv[6:])


if __name__ == "__main__":
    main()
