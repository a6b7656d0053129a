"""`qlab up`: a director and one local worker in the foreground, for one host.

It runs the real `qlab worker start` and `qlab director start` as child
processes (each in its own process group, so a terminal's Ctrl-C reaches only
`up`, which then stops them: the director, then the worker, which gives every
strategy st_exit), assigns the given strategy files once the worker has
registered, and prints events as they happen plus a one-line summary every few
seconds. What `up` checks and decides before it starts anything is in
quantlab.up_plan.

The account secrets its environment may hold (the variables the accounts file
names, and the worker's proxy) go to the worker alone: `up` removes them from
its own environment, /proc/PID/environ's copy included (quantlab.secretenv),
before it starts the director, and it is not dumpable, so a strategy (even one
running as root) can neither read its memory nor attach to it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from quantlab import secretenv
from quantlab.config import Paths
from quantlab.director.placement import NO_LIVE_WORKER
from quantlab.errors import BadInput
from quantlab.exchange.accounts import PROXY_ENV, load_accounts
from quantlab.store.open import open_store
from quantlab.store.open import shown as shown_store
from quantlab.store.records import EventKind
from quantlab.store.store import Store
from quantlab.files import private_dir
from quantlab.signals import StopRequest
from quantlab.child.loader import check_file
from quantlab.up_plan import LOCAL_WORKER, UpLock, carry_out, describe, plan
from quantlab.views import event_line
from quantlab.worker import procs

#: Seconds between summary lines.
SUMMARY_EVERY = 5.0
#: Seconds `up` waits for the worker, then the director, to stop before killing them.
STOP_GRACE = 15.0
#: Seconds the local worker may take to register (load its accounts, start its zygote) before `up` gives up.
REGISTER_TIMEOUT = 60.0


def _spawn(paths: Paths, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `qlab NAME ...` with ``env`` (None: ours); its stderr (log lines, an `Error:`) goes to logs/up-NAME.err."""
    store = ["--store", paths.store_url] if paths.store_url else []
    host = ["--host", paths.host] if paths.host else []
    command = [sys.executable, "-m", "quantlab.cli", "--home", str(paths.home), *store, *host, name, *args]
    private_dir(paths.logs)
    with open(_stderr_path(paths, name), "wb") as err:
        # Each in its own process group, and stopped cleanly (SIGTERM) if `up` itself dies.
        return subprocess.Popen(
            command, process_group=0, stdin=subprocess.DEVNULL, stderr=err, preexec_fn=_term_with_parent, env=env
        )


def _secret_names(paths: Paths, accounts_file: str | None) -> set[str]:
    """The environment variables that hold the local worker's secrets: its accounts' and its proxy's.

    The accounts file is read as the worker reads it, so a bad one is the same one-line error, before
    anything starts.
    """
    path = Path(accounts_file).expanduser() if accounts_file else paths.accounts_file()
    return {PROXY_ENV, *(account.api_secret_env for account in load_accounts(path) if account.api_secret_env)}


def _stderr_path(paths: Paths, name: str) -> Path:
    return paths.logs / f"up-{name}.err"


def _last_error(paths: Paths, name: str) -> str:
    lines = _stderr_path(paths, name).read_text(errors="replace").strip().splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    return (errors or lines or [f"Error: {name} exited"])[-1]


def _term_with_parent() -> None:
    procs.die_with_parent(os.getppid(), signal.SIGTERM)


def _summary(store: Store) -> str:
    parts = [
        f"{w.id}: {w.result.status} hb={w.result.heartbeats} restarts={w.result.restarts} errors={w.result.error_count}"
        for w in store.list_works()
    ]
    return "status | " + (" | ".join(parts) or "no strategies")


def _print_events(store: Store, offset: int) -> int:
    """Print the events written since ``offset``; the new offset.

    "pending: no live worker" is left out: while `up` runs, its own worker is live or
    starting (the director may place before it has registered), and `up` ends with it.
    """
    events, offset = store.read_events(offset)
    for event in events:
        if not (event.kind == EventKind.PENDING and event.detail == NO_LIVE_WORKER):
            print(event_line(event, as_json=False), flush=True)
    return offset


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def _header(paths: Paths) -> list[str]:
    return [f"home: {paths.home} (store: {shown_store(paths)})",
            f"logs: {paths.logs} (director.log, worker-{LOCAL_WORKER}.log, strategies/ID.log)",
            "Ctrl-C stops everything"]


def _registered(paths: Paths, store: Store, worker: subprocess.Popen[bytes], stop: StopRequest) -> bool:
    """Wait until the local worker has registered; False when it exits first (its Error printed) or on Ctrl-C."""
    deadline = time.monotonic() + REGISTER_TIMEOUT
    while worker.poll() is None and time.monotonic() < deadline and not stop.requested:
        registered = store.find_resource(LOCAL_WORKER)
        if registered is not None and registered.spec.pid == worker.pid:  # not an earlier run's leftover
            return True
        time.sleep(0.05)
    if not stop.requested:
        print(_last_error(paths, "worker") if worker.poll() is not None
              else f"Error: the local worker did not register within {REGISTER_TIMEOUT:.0f} s: "
                   f"see {paths.worker_log(LOCAL_WORKER)}",
              file=sys.stderr)
    return False


def _supervise(paths: Paths, store: Store, children: dict[str, subprocess.Popen[bytes]], stop: StopRequest,
               offset: int) -> tuple[int, int]:
    """Print events and a summary until Ctrl-C (0) or a child exits (1); that, and the event offset reached."""
    next_summary = time.time() + SUMMARY_EVERY
    while not stop.requested:
        offset = _print_events(store, offset)
        if time.time() >= next_summary:
            print(_summary(store), flush=True)
            next_summary = time.time() + SUMMARY_EVERY
        gone = [name for name, proc in children.items() if proc.poll() is not None]
        if gone:
            print(_last_error(paths, gone[0]), file=sys.stderr)
            return 1, offset
        time.sleep(0.1)
    return 0, offset


def run_up(paths: Paths, *, files: list[str], region: str = "JP", interval: float | None = None,
           only: bool = False, accounts_file: str | None = None) -> int:
    if only and not files:
        raise BadInput("--only runs just the FILEs given: name at least one")
    procs.become_undumpable()  # first: our environment may hold secrets until they are scrubbed
    stop = StopRequest().install()
    store = open_store(paths)
    try:
        lock = UpLock(paths)
        lock.take(store)  # before anything changes: a second `up` on this home stops here
        try:
            return _run(paths, store, stop, files, region=region, interval=interval, only=only,
                        accounts_file=accounts_file)
        finally:
            lock.release()
    finally:
        store.close()


def _run(paths: Paths, store: Store, stop: StopRequest, files: list[str], *, region: str, interval: float | None,
         only: bool, accounts_file: str | None) -> int:
    worker_env = dict(os.environ)
    secretenv.scrub(_secret_names(paths, accounts_file))  # ours and the director's: the worker's alone
    chosen = plan(store, [check_file(file) for file in files])  # every file is checked before anything starts
    for line in [*_header(paths), *describe(chosen, only)]:
        print(line, flush=True)
    _, offset = store.read_events()
    accounts = ["--accounts", accounts_file] if accounts_file else []
    worker = _spawn(paths, "worker", "start", "--id", LOCAL_WORKER, "--region", region, *accounts, env=worker_env)
    director = _spawn(paths, "director", "start")
    if not _registered(paths, store, worker, stop):  # a worker that cannot start changes nothing
        _stop(director)
        _stop(worker)
        return 0 if stop.requested else 1
    for work_id in carry_out(store, chosen, only=only, interval=interval):
        print(f"assigned {work_id}", flush=True)
    code, offset = _supervise(paths, store, {"director": director, "worker": worker}, stop, offset)
    # The director first: stopped after the worker, it would see the strategies the worker
    # gave back and mark them pending for want of a worker, which is only `up` ending.
    print("stopping: the director, then the worker (every strategy gets st_exit)", flush=True)
    director_code, worker_code = _stop(director), _stop(worker)
    _print_events(store, offset)
    return code or (1 if worker_code or director_code else 0)
