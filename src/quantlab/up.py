"""`qlab up`: a director and one local worker in the foreground, for one host.

It runs the real `qlab director start` and `qlab worker start` as child
processes (each in its own process group, so a terminal's Ctrl-C reaches only
`up`, which then stops them in order: the worker first, so every strategy gets
st_exit, then the director), assigns the given strategy files, and prints
events as they happen plus a one-line summary every few seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from quantlab import control
from quantlab.config import Paths
from quantlab.errors import Conflict, QuantlabError
from quantlab.store.open import open_store
from quantlab.store.store import Store
from quantlab.files import private_dir
from quantlab.signals import StopRequest
from quantlab.child.loader import check_file
from quantlab.views import event_line
from quantlab.worker import procs

LOCAL_WORKER = "local"
#: Seconds between summary lines.
SUMMARY_EVERY = 5.0
#: Seconds `up` waits for the worker, then the director, to stop before killing them.
STOP_GRACE = 15.0


def _spawn(paths: Paths, name: str, *args: str) -> subprocess.Popen[bytes]:
    """Start `qlab NAME ...`; its stderr (log lines, an `Error:`) goes to logs/up-NAME.err."""
    store = ["--store", paths.store_url] if paths.store_url else []
    host = ["--host", paths.host] if paths.host else []
    command = [sys.executable, "-m", "quantlab.cli", "--home", str(paths.home), *store, *host, name, *args]
    private_dir(paths.logs)
    with open(_stderr_path(paths, name), "wb") as err:
        # Each in its own process group, and stopped cleanly (SIGTERM) if `up` itself dies.
        return subprocess.Popen(
            command, process_group=0, stdin=subprocess.DEVNULL, stderr=err, preexec_fn=_term_with_parent
        )


def _stderr_path(paths: Paths, name: str) -> Path:
    return paths.logs / f"up-{name}.err"


def _last_error(paths: Paths, name: str) -> str:
    lines = _stderr_path(paths, name).read_text(errors="replace").strip().splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    return (errors or lines or [f"Error: {name} exited"])[-1]


def _term_with_parent() -> None:
    procs.die_with_parent(os.getppid(), signal.SIGTERM)


def _assign_or_start(store: Store, file: str, interval: float | None) -> str:
    """Assign a file; if a strategy of that id exists already (an earlier `up`), run it again."""
    path = check_file(file)
    try:
        return control.assign(store, control.AssignRequest(file=str(path), interval=interval)).id
    except Conflict:
        work_id = path.stem
        existing = store.get_work(work_id)
        if existing.spec.file != str(path):
            raise QuantlabError(f"a strategy {work_id!r} from another file ({existing.spec.file}) exists; remove it first") from None
        control.start(store, work_id)
        return work_id


def _summary(store: Store) -> str:
    parts = [
        f"{w.id}: {w.result.status} hb={w.result.heartbeats} restarts={w.result.restarts} errors={w.result.error_count}"
        for w in store.list_works()
    ]
    return "status | " + (" | ".join(parts) or "no strategies")


def _print_events(store: Store, offset: int) -> int:
    """Print the events written since ``offset``; the new offset."""
    events, offset = store.read_events(offset)
    for event in events:
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


def run_up(paths: Paths, *, files: list[str], region: str = "JP", interval: float | None = None) -> int:
    stop = StopRequest().install()
    store = open_store(paths)
    for file in files:
        check_file(file)  # every file is checked before anything starts
    _, offset = store.read_events()
    director = _spawn(paths, "director", "start")
    worker = _spawn(paths, "worker", "start", "--region", region, "--id", LOCAL_WORKER)
    children = {"director": director, "worker": worker}
    for file in files:
        print(f"assigned {_assign_or_start(store, file, interval)}", flush=True)
    code = 0
    next_summary = time.time() + SUMMARY_EVERY
    while not stop.requested:
        offset = _print_events(store, offset)
        if time.time() >= next_summary:
            print(_summary(store), flush=True)
            next_summary = time.time() + SUMMARY_EVERY
        gone = [name for name, proc in children.items() if proc.poll() is not None]
        if gone:
            print(_last_error(paths, gone[0]), file=sys.stderr)
            code = 1
            break
        time.sleep(0.1)
    print("stopping: worker first (every strategy gets st_exit), then the director", flush=True)
    worker_code, director_code = _stop(worker), _stop(director)
    _print_events(store, offset)
    store.close()
    return code or (1 if worker_code or director_code else 0)
