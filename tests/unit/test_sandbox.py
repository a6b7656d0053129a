"""The sandbox's rules, its seccomp filter in a real forked process, and the worker's rotation of a child's log."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

from quantlab.worker import landlock, logrotate, pidns, procs, sandbox, seccomp, strategyuids
from tests.conftest import in_child, lacking

_WRITES = landlock.WRITE_FILE | landlock.TRUNCATE


def _holds_or_inside(path: str, other: str) -> bool:
    a, b = os.path.realpath(path), os.path.realpath(other)
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def test_no_rule_reaches_the_home_or_the_accounts_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, accounts = tmp_path / "home", tmp_path / "etc" / "env.jsonl"
    folder = tmp_path / "strategies" / "grid"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the worker's folder, as `python -m` puts it on sys.path: never granted
    monkeypatch.syspath_prepend(str(work))
    rules = sandbox.rules(str(folder / "grid.py"), [], [str(home), str(accounts)])
    assert rules[str(folder)] == landlock.READ_FILE | landlock.READ_DIR | landlock.EXECUTE
    assert [p for p in rules if _holds_or_inside(p, str(home)) or _holds_or_inside(p, str(accounts))] == []
    assert [p for p, rights in rules.items() if rights & _WRITES] == ["/dev/null"]
    assert str(work) not in rules


@pytest.mark.parametrize("where", ["home", "accounts"])
def test_a_folder_that_holds_the_home_or_the_accounts_file_cannot_be_granted(tmp_path: Path, where: str) -> None:
    home, accounts = tmp_path / "home", tmp_path / "etc" / "env.jsonl"
    folder = home.parent if where == "home" else accounts.parent
    with pytest.raises(sandbox.Overlap) as refused:
        sandbox.rules(str(folder / "s.py"), [], [str(home), str(accounts)])
    assert refused.value.path == str(folder)


def test_an_accounts_file_inside_the_interpreter_leaves_no_file_rules_to_grant(tmp_path: Path) -> None:
    with pytest.raises(sandbox.Overlap) as refused:
        sandbox.rules(str(tmp_path / "s" / "s.py"), [], [os.path.join(sys.prefix, "etc", "env.jsonl")])
    assert refused.value.path == sys.prefix


def test_a_node_child_reads_nodes_install_and_its_runtime(tmp_path: Path) -> None:
    node = tmp_path / "opt" / "node" / "bin" / "node"
    node.parent.mkdir(parents=True)
    node.touch()
    runtime = tmp_path / "share" / "js"
    argv = [str(node), "/pkg/runner.mjs", "child", "ipc:///tmp/x/channel", str(runtime)]
    rules = sandbox.rules(str(tmp_path / "s" / "s.js"), argv, [str(tmp_path / "home")])
    assert {str(tmp_path / "opt" / "node"), str(runtime), "/pkg/runner.mjs"} <= set(rules)


NO_PIDNS = ("no PID namespace for strategies (no user namespaces here, or the service refuses them): "
            "a strategy sees every process of the machine in /proc")
HOST_PROC = ("strategies get a PID namespace but not a /proc of their own: a strategy sees the pids and "
             "command lines of the machine's processes, though it can signal none of them")


@pytest.mark.parametrize(("abi", "level", "layers", "says"), [
    (7, pidns.Level.OWN_PROC, ["landlock-7", "seccomp", "pidns"], []),
    (5, pidns.Level.OWN_PROC, ["landlock-5", "seccomp", "pidns"],
     ["Landlock ABI 5 cannot scope signals: seccomp alone keeps them within a strategy's group"]),
    (0, pidns.Level.OWN_PROC, ["seccomp", "pidns"],
     ["no Landlock in this kernel: a strategy can read and write whatever the worker's user can"]),
    (7, pidns.Level.HOST_PROC, ["landlock-7", "seccomp", "pidns-hostproc"], [HOST_PROC]),
    (7, pidns.Level.NONE, ["landlock-7", "seccomp"], [NO_PIDNS]),
])
def test_the_worker_names_the_layers_in_force_and_what_a_missing_one_leaves_open(
        monkeypatch: pytest.MonkeyPatch, abi: int, level: pidns.Level, layers: list[str], says: list[str]) -> None:
    monkeypatch.setattr(sandbox, "ABI", abi)
    monkeypatch.setattr(seccomp, "supported", lambda: True)
    monkeypatch.setattr(pidns, "probe", lambda uids: level)
    assert (sandbox.layers(None), sandbox.missing(None)) == (layers, says)


def test_a_worker_with_strategy_uids_names_their_range_among_its_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pidns, "probe", lambda uids: pidns.Level.OWN_PROC)
    assert sandbox.layers(strategyuids.parse("61000-61999"))[-2:] == ["pidns", "uids-61000-61999"]


def test_this_machine_gives_a_strategy_child_a_pid_namespace_and_a_proc_of_its_own() -> None:
    """Found by making one: as this process is, and as an ordinary user (uid 1001, no capability) is."""
    def as_ordinary_user() -> str:
        strategyuids.become(1001)
        return pidns.probe.__wrapped__(None).value

    found = {"as we are": pidns.probe.__wrapped__(None).value,
             "as uid 1001": in_child(as_ordinary_user) if os.geteuid() == 0 else "pidns"}
    if found != {"as we are": "pidns", "as uid 1001": "pidns"}:
        lacking(f"PID namespaces with a /proc of their own for strategy children (found {found})")


def test_under_a_service_that_covers_part_of_proc_a_child_gets_a_pid_namespace_with_the_hosts_proc() -> None:
    """As in the worker's systemd unit: ProtectKernelTunables= binds /proc/sys read-only over itself, and
    the kernel then refuses a user namespace a /proc of its own (it would show what the cover hides)."""
    if os.geteuid() != 0:
        lacking("root, to cover /proc/sys as systemd's ProtectKernelTunables= does")

    def under_the_unit() -> str:
        libc = ctypes.CDLL(None, use_errno=True)
        ms_rdonly, ms_remount, ms_bind, ms_rec, ms_private = 1, 0x20, 0x1000, 0x4000, 1 << 18
        steps = [libc.unshare(0x20000), libc.mount(b"none", b"/", None, ms_rec | ms_private, None),
                 libc.mount(b"/proc/sys", b"/proc/sys", None, ms_bind | ms_rec, None),
                 libc.mount(b"none", b"/proc/sys", None, ms_bind | ms_remount | ms_rdonly | ms_rec, None)]
        assert steps == [0] * 4, os.strerror(ctypes.get_errno())
        strategyuids.become(1001)  # the unit's user: no capability
        return pidns.probe.__wrapped__(None).value

    assert in_child(under_the_unit) == "pidns-hostproc"


def _outcome(action: Callable[[], object]) -> str:
    try:
        action()
        return "ok"
    except OSError as e:
        return e.strerror or str(e)


@pytest.fixture
def neighbour() -> Iterator[int]:
    """A process beside the test's children that only waits: the target of their attacks."""
    if not seccomp.supported():
        lacking("a seccomp filter for this architecture")
    pid = os.fork()
    if pid == 0:
        signal.pause()
        os._exit(0)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already if a filter let a kill through
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_the_seccomp_filter_keeps_signals_within_the_group_and_refuses_ptrace(neighbour: int) -> None:
    """The filter a kernel without Landlock's signal scoping relies on, in a real process."""
    def attacks() -> str:
        procs.lock_down()
        seccomp.install(os.getpid(), signals=True)
        libc = ctypes.CDLL(None, use_errno=True)
        outcomes = {
            "own group": _outcome(lambda: os.killpg(os.getpid(), 0)),
            "itself": _outcome(lambda: os.kill(os.getpid(), 0)),
            "its group by 0": _outcome(lambda: os.kill(0, 0)),
            "a neighbour": _outcome(lambda: os.kill(neighbour, signal.SIGKILL)),
            "a neighbour's group": _outcome(lambda: os.killpg(neighbour, signal.SIGKILL)),
            "every process": _outcome(lambda: os.kill(-1, 0)),
            "ptrace": "ok" if libc.ptrace(0x4206, neighbour, 0, 0) == 0 else os.strerror(ctypes.get_errno()),
        }
        return repr(outcomes)

    said = in_child(attacks)
    refused = "Operation not permitted"
    assert said == repr({"own group": "ok", "itself": "ok", "its group by 0": "ok", "a neighbour": refused,
                         "a neighbour's group": refused, "every process": refused, "ptrace": refused})
    assert procs.procfs.exited(neighbour) is False


def test_the_filter_compiled_before_the_fork_refuses_ptrace_in_every_child(neighbour: int) -> None:
    """Where Landlock scopes signals the filter names no pid: the zygote compiles it once, each child installs it."""
    seccomp.prepare(signals=False)

    def attacks() -> str:
        procs.lock_down()
        seccomp.install(os.getpid(), signals=False)
        libc = ctypes.CDLL(None, use_errno=True)
        return "ok" if libc.ptrace(0x4206, neighbour, 0, 0) == 0 else os.strerror(ctypes.get_errno())

    assert [in_child(attacks) for _ in range(2)] == ["Operation not permitted"] * 2


def test_the_filter_refuses_a_namespace_or_a_mount_of_the_childs_making_and_lets_it_fork_and_thread() -> None:
    """A user namespace would give a strategy every capability in it: neither unshare, nor clone with a
    namespace's flag, nor mount; fork, threads and subprocesses still work (clone3 falls back to clone)."""
    if not seccomp.supported():
        lacking("a seccomp filter for this architecture")

    def attempts() -> str:
        procs.lock_down()
        seccomp.install(os.getpid(), signals=False)
        libc = ctypes.CDLL(None, use_errno=True)

        def call(result: int) -> str:
            return "ok" if result == 0 else os.strerror(ctypes.get_errno())

        def clone_new_user() -> str:  # clone(CLONE_NEWUSER | SIGCHLD) as a raw system call: a fork if allowed
            pid = libc.syscall(56 if platform.machine() == "x86_64" else 220, 0x10000000 | signal.SIGCHLD, 0, 0, 0, 0)
            if pid == 0:
                os._exit(0)
            return call(-1) if pid < 0 else f"made {os.waitpid(pid, 0) and 'a namespace'}"

        def thread() -> str:
            box: list[str] = []
            worker = threading.Thread(target=lambda: box.append("ran"))
            worker.start()
            worker.join()
            return box[0]

        return repr({"unshare a user namespace": call(libc.unshare(0x10000000)),
                     "clone into a new one": clone_new_user(),
                     "mount": call(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
                     "fork": "ok" if os.waitpid(_forked(), 0)[1] == 0 else "failed",
                     "a thread": thread(),
                     "a subprocess": subprocess.run(["true"]).returncode and "failed" or "ok"})

    refused = "Operation not permitted"
    assert in_child(attempts) == repr({"unshare a user namespace": refused, "clone into a new one": refused,
                                        "mount": refused, "fork": "ok", "a thread": "ran", "a subprocess": "ok"})


def _forked() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return pid


def test_a_child_in_its_sandbox_reads_its_folder_and_nothing_of_the_home(tmp_path: Path) -> None:
    if not sandbox.ABI:
        lacking("Landlock")
    home, folder = tmp_path / "home", tmp_path / "mine"
    (home / "store").mkdir(parents=True)
    (home / "store" / "record").write_text("private")
    folder.mkdir()
    (folder / "s.py").write_text("mine")

    def attempts() -> str:
        procs.lock_down()
        note = sandbox.enter(str(folder / "s.py"), [], [str(home)])
        return repr({"note": note,
                     "own file": _outcome(lambda: (folder / "s.py").read_text()),
                     "own folder, writing": _outcome(lambda: (folder / "new").write_text("x")),
                     "the home": _outcome(lambda: (home / "store" / "record").read_text()),
                     "the home, writing": _outcome(lambda: (home / "new").write_text("x")),
                     "/dev/null": _outcome(lambda: Path("/dev/null").write_text("x"))})

    denied = "Permission denied"
    assert in_child(attempts) == repr({"note": "", "own file": "ok", "own folder, writing": denied,
                                        "the home": denied, "the home, writing": denied, "/dev/null": "ok"})


def test_a_log_past_its_size_is_copied_then_truncated_and_the_writer_goes_on_at_its_start(tmp_path: Path) -> None:
    log = tmp_path / "s.log"
    writer = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # as the zygote opens it for the child
    try:
        os.write(writer, b"a" * 10)
        assert not logrotate.rotate(log, 100, 2)
        for n in range(3):
            os.write(writer, str(n).encode() * 100)
            assert logrotate.rotate(log, 100, 2)
        os.write(writer, b"next")
    finally:
        os.close(writer)
    assert log.read_bytes() == b"next"
    assert (tmp_path / "s.log.1").read_bytes() == b"2" * 100
    assert (tmp_path / "s.log.2").read_bytes() == b"1" * 100
    assert not (tmp_path / "s.log.3").exists()
