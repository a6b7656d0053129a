"""Shared test helpers: a private home, real `qlab` processes, polling against a deadline."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, TypeVar

import pytest

from quantlab.config import Paths
from quantlab.store.open import open_store
from quantlab.store.records import Event, Work
from quantlab.store.fenced import FencedStore
from quantlab.worker import family

T = TypeVar("T")

QLAB = shutil.which("qlab") or "qlab"

#: A strategy that counts its heartbeats in ctx.state["n"] and does nothing else.
COUNTER = '''
def st_init(ctx):
    ctx.state.setdefault("n", 0)
def st_heartbeat(ctx, tick):
    ctx.state["n"] += 1
def st_exit(ctx, reason):
    pass
'''

#: Strategy-file helpers: ``once(name)`` is True the first time only (across restarts, a marker
#: file beside the strategy); ``note(ctx, text)`` appends a line to exit-ID.txt beside it.
ONCE = '''
import os, time
def once(name):
    path = os.path.join(os.path.dirname(__file__), name)
    if os.path.exists(path):
        return False
    open(path, "w").close()
    return True
def note(ctx, text):
    with open(os.path.join(os.path.dirname(__file__), f"exit-{ctx.id}.txt"), "a") as f:
        f.write(text + "\\n")
'''


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that starts real `qlab` processes is ``slow``: `pytest -m "not slow"` is the everyday tier."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.slow)


def js_missing() -> str:
    """Why JavaScript strategies cannot run here ("" when they can): no Node, or `qlab js install` not run."""
    from quantlab.child import jsruntime
    from quantlab.errors import JsRuntimeError

    try:
        jsruntime.check_node(jsruntime.node())
        jsruntime.runtime_dir()
    except JsRuntimeError as e:
        return str(e)
    return ""


def in_ci() -> bool:
    """CI sets CI=true and has everything the tests need: there, a missing tool is a failure, not a skip."""
    return os.environ.get("CI") == "true"


def in_child(check: Callable[[], str]) -> str:
    """Run ``check`` in a forked child that leads its own group (its limits, uid and filters its own);
    what it returned, or its error."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            os.write(write_fd, check().encode())
        except BaseException as e:
            os.write(write_fd, f"failed: {e!r}".encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as f:
        return f.read().decode()


def lacking(what: str) -> NoReturn:
    """The test cannot run: this machine lacks ``what``. Skips with that line; fails with it under CI=true."""
    if in_ci():
        pytest.fail(f"CI=true but this machine lacks {what}", pytrace=False)
    pytest.skip(f"this machine lacks {what}")


def lacking_part(what: str) -> None:
    """One check of a test cannot run for want of ``what``: a warning, and the rest goes on; fails under CI=true."""
    if in_ci():
        pytest.fail(f"CI=true but this machine lacks {what}", pytrace=False)
    warnings.warn(f"this machine lacks {what}: that check did not run", stacklevel=2)


def needs(missing: str) -> pytest.MarkDecorator:
    """A mark for a test that needs what ``missing`` says is absent ("" when present): it meets ``lacking``."""
    return pytest.mark.lacks(missing) if missing else pytest.mark.lacks()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lacks(what): the machine lacks what the test needs (tests/conftest.py needs)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("lacks"):
        if mark.args:
            lacking(mark.args[0])


#: A test that needs Node and the installed runtime.
needs_js = needs(f"a JavaScript runtime: {_js}" if (_js := js_missing()) else "")


def wait_for(check: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Lab:
    """One private quantlab home and every process a test starts in it."""

    def __init__(self, home: Path, store_url: str = "", owner: int | None = None) -> None:
        self.home = home
        self.store_url = store_url  #: "" for the file store; postgresql://... for PostgreSQL
        self.store = open_store(Paths(home, store_url=store_url))
        self.procs: list[subprocess.Popen[bytes]] = []
        #: The ordinary user every `qlab` runs as (``as_ordinary_user``), None: the test's own
        self.owner = owner
        self.prefix = as_ordinary_user(home.parent / "mount") if owner is not None else []

    def _hand_over(self) -> None:
        """What the test wrote into the home and the strategies' folder beside it is the ordinary user's
        before a `qlab` of theirs runs (whatever umask the test process runs under)."""
        if self.owner is None:
            return
        strategies = self.home.parent / "strategies"
        for path in (self.home, *self.home.rglob("*"), strategies, *strategies.rglob("*")):
            with contextlib.suppress(FileNotFoundError):  # a running qlab's temporary file, gone meanwhile
                if path.lstat().st_uid != self.owner:
                    os.lchown(path, self.owner, self.owner)

    def _qlab(self) -> list[str]:
        return [*self.prefix, QLAB, "--home", str(self.home), *(["--store", self.store_url] if self.store_url else [])]

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run one `qlab --home H ...` command to completion."""
        self._hand_over()
        result = subprocess.run(
            [*self._qlab(), *args], capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(f"qlab {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def start(
        self, *args: str, env: dict[str, str] | None = None, preexec_fn: Callable[[], None] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a long-running `qlab --home H ...` in its own session (``preexec_fn``: run in the child first)."""
        self._hand_over()
        log = open(self.home / f"proc-{len(self.procs)}.err", "wb")
        proc = subprocess.Popen(
            [*self._qlab(), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=None if env is None else {**os.environ, **env},
            preexec_fn=preexec_fn,
        )
        self.procs.append(proc)
        return proc

    def director(self, *args: str) -> subprocess.Popen[bytes]:
        return self.start("director", "start", "--heartbeat", "0.2", *args)

    def worker(
        self, worker_id: str = "w1", *args: str, region: str = "JP", env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> subprocess.Popen[bytes]:
        proc = self.start("worker", "start", "--region", region, "--id", worker_id, "--heartbeat", "0.2", *args,
                          env=env, preexec_fn=preexec_fn)
        wait_for(lambda: self._exited(proc) or self.store.find_resource(worker_id), what=f"worker {worker_id} to register")
        return proc

    def _exited(self, proc: subprocess.Popen[bytes]) -> bool:
        """A process that should keep running exited: fail with what it said."""
        if proc.poll() is None:
            return False
        said = (self.home / f"proc-{self.procs.index(proc)}.err").read_text()
        raise AssertionError(f"{' '.join(map(str, proc.args))} exited with {proc.returncode}: {said}")

    def strategy(self, name: str, source: str, suffix: str = ".py") -> Path:
        path = self.home / f"{name}{suffix}"
        path.write_text(source)
        return path

    def assign(self, file: Path, *args: str) -> None:
        self.run("strategy", "assign", str(file), *args)

    def work(self, work_id: str) -> Work:
        return self.store.get_work(work_id)

    def state(self, work_id: str) -> dict[str, Any]:
        """The strategy's saved ctx.state ({} when there is none)."""
        return FencedStore(self.store).load_state(work_id)

    def wait_status(self, work_id: str, status: str, timeout: float = 10.0) -> Work:
        return wait_for(
            lambda: (w := self.store.find_work(work_id)) is not None and w.result.status == status and w,
            timeout,
            f"{work_id} to be {status} (now {self._status(work_id)})",
        )

    def wait_heartbeats(self, work_id: str, count: int, timeout: float = 10.0) -> Work:
        return wait_for(
            lambda: (w := self.store.find_work(work_id)) is not None and w.result.heartbeats >= count and w,
            timeout,
            f"{work_id} to reach {count} heartbeats (now {self._status(work_id)})",
        )

    def events(self, kind: str | None = None, strategy: str | None = None) -> list[Event]:
        events, _ = self.store.read_events()
        return [e for e in events if (kind is None or e.kind == kind) and (strategy is None or e.strategy == strategy)]

    def wait_event(self, kind: str, strategy: str | None = None, count: int = 1, timeout: float = 10.0) -> list[Event]:
        return wait_for(
            lambda: len(found := self.events(kind, strategy)) >= count and found,
            timeout,
            f"{count} {kind} event(s) for {strategy}",
        )

    def status(self) -> dict[str, Any]:
        return json.loads(self.run("status", "--json").stdout)

    def log(self, work_id: str) -> str:
        path = self.home / "logs" / "strategies" / f"{work_id}.log"
        return path.read_text() if path.exists() else ""

    def _status(self, work_id: str) -> str:
        work = self.store.find_work(work_id)
        return "missing" if work is None else f"{work.result.status}, {work.result.heartbeats} hb, {work.result.reason}"

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        self._end_orphans()
        self.store.close()

    def _end_orphans(self) -> None:
        """Strategy children a test's killed worker left behind: they lead sessions of their own, so
        the groups above miss them, and they stop (not die) with their worker until its zygote or its
        next start ends them, which a test that killed both never brings about."""
        for listing in (self.home / "run").glob("worker-*.children"):
            family.end(family.load(listing))


#: The ordinary user ``as_ordinary_user`` runs a command as: no name, no groups, no capabilities.
ORDINARY_UID = 1001


def as_ordinary_user(scratch: Path) -> list[str]:
    """A command prefix: run as ORDINARY_UID with no capability at all, as a desk's service user would.

    This machine's Python is installed under root's private home (/root is 0700), which an
    ordinary user cannot enter; rather than grant a capability that would read every file, the
    command runs in a mount namespace of its own where /root is an empty world-readable tmpfs that
    shows only the Python installation, at its own path. ``scratch``: an empty folder to mount
    through (any path; nothing is written to it).
    """
    python = Path(QLAB).resolve().parents[3]  # /root/.pyenv/versions/3.11.7/bin/qlab -> /root/.pyenv
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        lacking("root, unshare and setpriv, to run qlab as an ordinary user")
    setpriv = ["setpriv", f"--reuid={ORDINARY_UID}", f"--regid={ORDINARY_UID}", "--clear-groups", "--inh-caps=-all",
               "--bounding-set=-all", "--"]
    if not python.is_relative_to("/root"):
        return setpriv
    dance = (f"mount --bind {python} {scratch} && mount -t tmpfs -o mode=0755 tmpfs /root && mkdir -p {python} "
             f"&& mount --move {scratch} {python} && exec {' '.join(setpriv)} \"$@\"")
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", dance, "sh"]


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_state(pid: int) -> str | None:
    """``pid``'s state letter from /proc (R, S, T for stopped, Z for zombie...), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]  # the command name may hold spaces and ")"
    except (FileNotFoundError, ProcessLookupError):  # gone before, or while, it was read
        return None


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    return proc_state(pid) not in (None, "Z")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    lab = Lab(home)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def ordinary_lab() -> Iterator[Lab]:
    """A Lab whose every `qlab` runs as an ordinary user with no capability (``as_ordinary_user``), in a
    home of theirs. It lies under /tmp, since pytest's own temporary folders are root's alone; its
    ``lab.home.parent / "strategies"`` is a folder for the test's strategy files, outside the home."""
    scratch = Path(tempfile.mkdtemp(prefix="qlab-ordinary-", dir="/tmp"))
    scratch.chmod(0o755)
    for name in ("home", "mount", "strategies"):
        (scratch / name).mkdir()
    lab = Lab(scratch / "home", owner=ORDINARY_UID)
    try:
        yield lab
    finally:
        lab.close()
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A scratch PostgreSQL database for this test; skips without a server, fails under CI=true."""
    from tests.pgutil import scratch_database

    with scratch_database() as url:
        yield url


@pytest.fixture
def pg_lab(tmp_path: Path, pg_url: str) -> Iterator[Lab]:
    """A Lab whose every `qlab` runs with --store on a scratch PostgreSQL database."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    lab = Lab(home, pg_url)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(autouse=True)
def _no_inherited_home(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    # A developer's own QLAB_HOME must never leak into a test.
    monkeypatch.delenv("QLAB_HOME", raising=False)
    monkeypatch.delenv("QLAB_STORE", raising=False)
    # Nor the help `qlab --help` keeps (quantlab/helpcache.py) into the user's own cache.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


