"""Holding a worker id: one live process per id, and a lease record that says who holds it.

Two things make an id exclusive, each doing what it is good at:

- an id lock file (``filelock``), taken without waiting, held for the life of
  the process and released by the kernel when it dies. A second process with
  the same id on this host is refused at once, naming the holder; nobody ever
  waits on the lock, and a paused holder still holds it (it is alive).
- the Resource record, the lease, written by compare-and-swap with a token
  made once per process (``instance``). Holding the lock proves that a
  predecessor on this host is dead, so a restarted worker takes its record
  over at once; a holder on another host is waited out (its lease must stop
  moving for a lease plus the margin). So is a record that does not decode,
  whose holder nobody can tell (with our own lease length): then our
  registration replaces it.
"""

from __future__ import annotations

import datetime
import os
import secrets
import time
from pathlib import Path
from typing import Callable

import filelock

from quantlab.errors import ConfigError, CorruptRecord
from quantlab.store.leases import LeaseWatch
from quantlab.store.records import Resource
from quantlab.store.store import Store, check_id
from quantlab.files import private_dir
from quantlab.worker import procfs

#: Seconds between looks at a foreign holder's lease while waiting it out.
WAIT_POLL = 0.2


def new_instance(host: str) -> str:
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


def process_started() -> float:
    return procfs.started(os.getpid())


class WorkerIdLock:
    """The lock file of one worker id on this host."""

    def __init__(self, store_root: Path, worker_id: str) -> None:
        folder = store_root / "locks"
        private_dir(folder)
        self.lock = filelock.FileLock(folder / f"worker-{check_id('worker', worker_id)}.lock")
        self.worker_id = worker_id

    def take(self, store: Store) -> None:
        """Hold the id or raise ConfigError naming who holds it."""
        try:
            self.lock.acquire(timeout=0)
        except filelock.Timeout:
            raise ConfigError(f"worker {self.worker_id} is already running: {_holder(store, self.worker_id)}") from None

    def release(self) -> None:
        self.lock.release(force=True)


def _holder(store: Store, worker_id: str) -> str:
    try:
        resource = store.find_resource(worker_id)
    except CorruptRecord:
        return "another process holds its lock; its registration does not decode"
    if resource is None:
        return "another process holds its lock and has not registered yet"
    started = datetime.datetime.fromtimestamp(resource.spec.started).strftime("%Y-%m-%d %H:%M:%S")
    return f"pid {resource.spec.pid} on {resource.spec.host}, started {started}"


def claim_record(
    store: Store,
    resource: Resource,
    *,
    say: Callable[[str], None],
    mono: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Write our registration, taking the id over from a dead holder; what happened, in words.

    Call only while holding the id's lock.
    """
    watch = LeaseWatch()
    waiting = False

    def held(token: object, ttl: float, holder: str) -> bool:
        """Whether a lease standing at ``token`` may still be held (then wait): it moved within ttl plus the margin."""
        nonlocal waiting
        now = mono()
        watch.observe(resource.id, token, now)
        if watch.expired(resource.id, ttl, now):
            return False
        if not waiting:
            say(f"worker {resource.id} is held by {holder}: waiting for its lease to run out")
            waiting = True
        sleep(WAIT_POLL)
        return True

    while True:
        try:
            current, undecodable = store.find_resource(resource.id), 0
        except CorruptRecord as e:
            current, undecodable = None, e.version
        if undecodable:
            holder = f"a record that does not decode (version {undecodable})"
            if held(("undecodable", undecodable), resource.spec.lease_ttl, holder):
                continue
            detail = f"took over a registration that did not decode (version {undecodable})"
        elif current is None:
            detail = "registered"
        elif current.spec.host == resource.spec.host:
            detail = f"took over from pid {current.spec.pid}, which is gone"  # we hold the lock: it is dead
        else:
            if held((current.spec.instance, current.state.renewals), current.spec.lease_ttl,
                    f"pid {current.spec.pid} on {current.spec.host}"):
                continue
            detail = f"took over from {current.spec.host} (pid {current.spec.pid}) after its lease ran out"
        seen = current

        def take(now_current: Resource | None) -> Resource | None:
            if now_current != seen:
                return None  # it moved while we judged it: judge again
            return resource

        if store.update_resource(resource.id, take, over_corrupt=undecodable) == resource:
            return detail
