"""The zygote: a small process that forks strategy children on request.

Forking the worker itself is unsafe (it has threads and a ZeroMQ context), and
a fresh interpreter per strategy costs ~300 ms. The zygote is started as a
fresh interpreter (so it inherits no threads whenever the worker starts it,
also to replace one that died), imports what children need once, then forks
each child in milliseconds, sharing those pages copy-on-write.

To keep the worker the real parent of every child (exit codes by waitpid, a
pidfd in its poller), the worker is a child subreaper and the zygote
double-forks: the intermediate exits at once, the grandchild is re-parented to
the worker, then arms its parent-death signal so it never outlives the worker.

A child's own helpers (processes it starts) are in its process group; the
worker kills that group whenever it reaps the child. When the worker itself
dies (SIGKILL) the children die with it, but their helpers would be
re-parented to init: so the zygote, which outlives the worker by a moment
(it has no parent-death signal; its socket's EOF tells it), kills the group of
every child the worker had not reaped yet, then exits.

Wire: a SOCK_SEQPACKET socketpair; requests are msgpack ForkRequest (answered
with one Forked) or Forget (no answer: the worker reaped that child and killed
its group, so the zygote must never kill that group id again).
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import time

import msgspec

from quantlab import proctitle
from quantlab.worker import procs


class ForkRequest(msgspec.Struct, tag="fork"):
    """What one strategy child needs from its fork: the worker's socket, its routing id, its log."""

    endpoint: str
    routing_id: bytes
    log_path: str
    #: A program the child execs once it is set up (a JavaScript strategy's Node runner);
    #: empty: it runs the Python runner.
    argv: list[str] = []
    #: The child's process title ("qlab strategy ID [WORKER]"); empty: the zygote's stays.
    title: str = ""


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

#: Seconds a new child may wait to be re-parented to the worker.
REPARENT_TIMEOUT = 5.0


class Zygote:
    """The worker's handle on its zygote process."""

    def __init__(self, env: dict[str, str] | None = None, worker_id: str = "") -> None:
        """``env``: the environment children inherit (the worker strips its secrets from it);
        ``worker_id``: the worker's, for the zygote's process title."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        self.env = env
        self.worker_id = worker_id
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "quantlab.worker.zygote", str(theirs.fileno()), str(os.getpid()), worker_id],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
        )
        theirs.close()

    def fork(self, request: ForkRequest) -> int:
        """Fork a strategy child; its pid (already a child of this process)."""
        self.sock.sendall(_encode(request))
        data = self.sock.recv(4096)
        if not data:
            raise OSError("zygote exited")
        reply = _decode_forked(data)
        if reply.error:
            raise OSError(f"zygote could not fork: {reply.error}")
        return reply.pid

    def forget(self, pid: int) -> None:
        """The worker reaped ``pid`` and killed its group: the zygote must not kill that group on its way out."""
        self.sock.sendall(_encode(Forget(pid=pid)))

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        self.sock.close()  # EOF ends the zygote's loop
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---- inside the zygote process ----


def _serve(sock: socket.socket, worker_pid: int) -> None:
    # Imported here, once: every child starts with them loaded.
    from quantlab.child import runner  # noqa: F401

    unreaped: set[int] = set()  # children the worker has not reaped: their groups may hold helpers
    while True:
        data = sock.recv(65536)
        if not data:  # the worker closed us, or died: leave nothing of its children behind
            for pgid in unreaped:
                procs.kill_group(pgid)
            return
        request = _decode_request(data)
        if isinstance(request, Forget):
            unreaped.discard(request.pid)
            continue
        try:
            reply = Forked(pid=_double_fork(request, sock, worker_pid))
            unreaped.add(reply.pid)
        except OSError as e:
            reply = Forked(error=str(e))
        sock.sendall(_encode(reply))


def _double_fork(request: ForkRequest, sock: socket.socket, worker_pid: int) -> int:
    read_fd, write_fd = os.pipe()
    # Every object so far into the permanent generation: the child's collections never walk
    # (and so never write to) the pages it shares with us and its siblings.
    gc.freeze()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
    try:
        middle = os.fork()
        if middle == 0:
            os.close(read_fd)
            grandchild = os.fork()
            if grandchild == 0:
                os.close(write_fd)
                _become_strategy(request, sock, worker_pid, old_mask)
            os.write(write_fd, str(grandchild).encode())
            os._exit(0)
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


def _become_strategy(request: ForkRequest, sock: socket.socket, worker_pid: int, mask: set[int | signal.Signals]) -> None:
    code = 1
    try:
        gc.enable()  # the zygote runs without collections (see main); the strategy's own objects need them
        sock.close()
        os.setsid()  # its own process group: the worker kills it with killpg
        if request.title:
            proctitle.set_title(request.title)
        _wait_for_reparent(worker_pid)
        procs.die_with_parent(worker_pid)
        _redirect_output(request.log_path)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if request.argv:  # the same child (group, parent, log, environment), running Node
            try:
                os.execv(request.argv[0], request.argv)
            except OSError as e:
                print(f"cannot start {request.argv[0]}: {e}", file=sys.stderr)
                raise
        from quantlab.child.runner import run_child

        code = run_child(request.endpoint, request.routing_id)
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # os._exit skips it, and print() output belongs in the log
        os._exit(code)


def _wait_for_reparent(worker_pid: int) -> None:
    deadline = time.monotonic() + REPARENT_TIMEOUT
    while os.getppid() != worker_pid:
        if time.monotonic() > deadline:
            os._exit(1)
        time.sleep(0.0001)


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
    # No parent-death signal here: when the worker dies, the EOF on our socket makes us kill
    # the groups of its children before we exit (see _serve).
    if os.getppid() != worker_pid:
        os._exit(1)
    # The terminal's Ctrl-C reaches the worker's whole group; the worker decides, not us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _serve(socket.socket(fileno=fd), worker_pid)


if __name__ == "__main__":
    main()
