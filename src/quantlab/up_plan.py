"""What `qlab up` decides before it starts anything: that it is alone on its home, and what it runs.

One `up` per home: a second one would share the first one's local worker id and
store, so it is refused, naming the first one's pid, before it assigns a file or
starts a process. The lock is a file lock the kernel releases when its holder
dies (as a worker's id lock is: quantlab/worker/registration.py), and a worker
started by hand with `up`'s worker id is found by that worker's own lock.

The strategies a home already holds are an earlier `up`'s (or `strategy
assign`'s) and run again with the files given now; ``only`` stops them instead,
so that exactly the given files run. They stay in the store, stopped: an `up`
naming their file, or `qlab strategy start ID`, runs them again.
"""

from __future__ import annotations

import os
from pathlib import Path

import filelock
import msgspec

from quantlab import control
from quantlab.config import Paths
from quantlab.errors import ConfigError, Conflict, QuantlabError
from quantlab.files import private_dir
from quantlab.store.records import Work
from quantlab.store.store import Store, check_id
from quantlab.worker.registration import WorkerIdLock

LOCAL_WORKER = "local"


class UpLock:
    """The home's `up` lock, and beside it the pid of the `up` that holds it."""

    def __init__(self, paths: Paths) -> None:
        self.store_root = paths.store
        folder = paths.store / "locks"
        private_dir(folder)
        self.lock = filelock.FileLock(folder / "up.lock")
        self.pid_file = folder / "up.pid"

    def take(self, store: Store) -> None:
        """Hold the home, or raise ConfigError naming the `up` (or the worker) that holds it."""
        try:
            self.lock.acquire(timeout=0)
        except filelock.Timeout:
            raise ConfigError(f"qlab up is already running on this home: pid {self._holder()} "
                              f"(Ctrl-C it, or give this one another --home)") from None
        worker = WorkerIdLock(self.store_root, LOCAL_WORKER)
        try:
            worker.take(store)  # a `qlab worker start --id local` on this home
        except ConfigError:
            self.lock.release(force=True)
            raise
        worker.release()
        self.pid_file.write_text(f"{os.getpid()}\n")

    def release(self) -> None:
        self.pid_file.unlink(missing_ok=True)
        self.lock.release(force=True)

    def _holder(self) -> str:
        try:
            return self.pid_file.read_text().strip() or "unknown"
        except OSError:
            return "unknown"  # it holds the lock and has not written its pid yet


class Plan(msgspec.Struct, frozen=True):
    files: list[Path]  #: checked, absolute
    earlier: list[Work]  #: the home's strategies meant to run (not failed) that are not ``files``'s


def plan(store: Store, files: list[Path]) -> Plan:
    """What to run; QuantlabError, before anything changed, when a file's id is not valid or another file's."""
    for path in files:
        existing = store.find_work(check_id("strategy", path.stem))
        if existing is not None and existing.spec.file != str(path):
            raise QuantlabError(f"a strategy {path.stem!r} from another file ({existing.spec.file}) exists; "
                                f"remove it first (qlab strategy remove {path.stem})")
    given = {path.stem for path in files}
    # A failed one is not resumed: it waits for `qlab strategy start ID`.
    earlier = [w for w in store.list_works()
               if w.desired == "running" and w.result.status != "failed" and w.id not in given]
    return Plan(files=files, earlier=earlier)


def describe(plan: Plan, only: bool) -> list[str]:
    """What `up` tells about the home's earlier strategies, a line each."""
    if not plan.earlier:
        return []
    doing = "stopping (--only)" if only else "resuming"
    return [f"{doing} {len(plan.earlier)} earlier strateg{'y' if len(plan.earlier) == 1 else 'ies'} of this home:",
            *(f"  {w.id}  {w.spec.file}" for w in plan.earlier)]


def carry_out(store: Store, plan: Plan, *, only: bool, interval: float | None) -> list[str]:
    """Stop the earlier strategies when ``only``, then assign (or start again) each file; their ids."""
    if only:
        for work in plan.earlier:
            control.stop(store, work.id)
    return [_assign_or_start(store, path, interval) for path in plan.files]


def _assign_or_start(store: Store, path: Path, interval: float | None) -> str:
    """Assign a file; if a strategy of that id exists already (an earlier `up`), run it again."""
    try:
        return control.assign(store, control.AssignRequest(file=str(path), interval=interval)).id
    except Conflict:  # plan() saw that it is this file's
        control.start(store, path.stem)
        return path.stem
