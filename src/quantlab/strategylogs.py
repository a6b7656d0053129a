"""Where a strategy's own log is, as `qlab strategy logs` and `qlab logs` find it on this host.

A child writes its log on the host its worker runs on (Paths.strategy_log), so
a strategy that runs on another host has none here: that is said, with the host.
"""

from __future__ import annotations

from pathlib import Path

from quantlab.config import Paths
from quantlab.errors import BadInput, NotFound
from quantlab.store.records import Work
from quantlab.store.store import Store, check_id


def log_file(store: Store, paths: Paths, work_id: str) -> Path:
    """The strategy's own log on this host.

    NotFound when there is neither a log nor a strategy of that id; BadInput, naming the
    host, when there is no log here because the strategy runs on another host.
    """
    path = paths.strategy_log(check_id("strategy", work_id))
    if path.exists():
        return path
    work = store.find_work(work_id)
    if work is None:
        raise NotFound(f"no strategy {work_id!r}")
    if (where := runs_elsewhere(store, paths, work)) is not None:
        raise BadInput(f"{work_id} runs on {where}: its log is on that host; read it there with "
                       f"`qlab strategy logs {work_id}`")
    return path


def runs_elsewhere(store: Store, paths: Paths, work: Work) -> str | None:
    """Where the Work runs ("worker W on host H") when its worker is on another host; None: here, or nowhere."""
    if work.assignment is None:
        return None
    resource = store.find_resource(work.assignment.worker)
    if resource is None or resource.spec.host == paths.host_name:
        return None
    return f"worker {resource.id} on host {resource.spec.host}"


def local_logs(store: Store, paths: Paths, work_ids: list[str]) -> dict[str, Path]:
    """The logs `qlab logs` tails: of ``work_ids`` (each must have one here), or of every strategy here.

    Every strategy here: each whose log is on this host, or whose worker runs on it (its log
    comes with its first line).
    """
    if work_ids:
        return {work_id: log_file(store, paths, work_id) for work_id in dict.fromkeys(work_ids)}
    return {
        work.id: path
        for work in store.list_works()
        if (path := paths.strategy_log(work.id)).exists() or (
            work.assignment is not None and runs_elsewhere(store, paths, work) is None)
    }
