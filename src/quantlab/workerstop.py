"""`qlab worker stop`: SIGTERM to a worker on this host, or its stale registration removed.

A worker's record names its host and pid; the pid is signalled only on that
host, and only while it still runs quantlab.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable

import psutil

from quantlab.errors import BadInput, NotFound
from quantlab.store.records import Event, EventKind, Resource
from quantlab.store.store import Store, check_id, record_events

Clock = Callable[[], float]


def _is_quantlab(pid: int) -> bool:
    """Whether ``pid`` still runs quantlab: a dead worker's pid may belong to anything by now."""
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # the kill below reports the permission problem
    return "qlab" in cmdline or "quantlab" in cmdline


def stop_worker(store: Store, worker_id: str, *, host: str, clock: Clock = time.time) -> str:
    """SIGTERM a worker on ``host``, this one (it drains its strategies); returns what was done."""
    resource = store.find_resource(check_id("worker", worker_id))
    if resource is None:
        raise NotFound(f"no worker {worker_id!r}")
    pid = resource.spec.pid
    if resource.spec.host != host:
        raise BadInput(f"worker {worker_id} runs on host {resource.spec.host}: stop it there")
    try:
        if not _is_quantlab(pid):
            raise ProcessLookupError(pid)
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return remove_stale_worker(store, resource, clock=clock)
    except PermissionError as e:
        raise BadInput(f"cannot signal worker {worker_id} (pid {pid}): permission denied") from e
    record_events(store, [Event(ts=clock(), kind=EventKind.WORKER_STOP_REQUESTED, worker=worker_id)])
    return f"worker {worker_id} (pid {pid}) is stopping"


def remove_stale_worker(store: Store, stale: Resource, *, clock: Clock = time.time) -> str:
    """Remove ``stale``, the registration of a worker that is not running, only while it is still that one.

    A worker restarting under the same id registers anew (another instance and pid) between our
    look and the removal: that registration belongs to a live worker, and removing it would
    take its lease away.
    """
    def unchanged(current: Resource) -> bool:
        return (current.spec.instance, current.spec.pid) == (stale.spec.instance, stale.spec.pid)

    was = f"worker {stale.id} (pid {stale.spec.pid}) was not running"
    if store.remove_resource(stale.id, only_if=unchanged):
        record_events(store, [Event(ts=clock(), kind=EventKind.WORKER_REMOVED, worker=stale.id,
                                    detail="stale record")])
        return f"{was}: removed its stale record"
    if store.find_resource(stale.id) is None:
        return f"{was}: its record was gone already"
    return f"{was}, but it restarted meanwhile: nothing removed"
