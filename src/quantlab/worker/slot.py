"""One supervised strategy on a worker: its machine, its outbox and what the store shows of it.

Where the strategy is in its lifecycle (stopping for the operator, fenced off
by a lapsed lease, reconciling before its fork, its Init waiting for the
store) is its machine's (quantlab/worker/machine.py). What is kept here beside
it is bookkeeping of the worker's writes and messages, each field with the modules
that write it.
"""

from __future__ import annotations

import collections
import datetime
from pathlib import Path
from typing import Mapping

import msgspec

from quantlab.exchange.reconcile import Reconciled
from quantlab.store.records import Assignment, StrategyStatus, Work
from quantlab.protocol import ToChild
from quantlab.worker import machine as m
from quantlab.worker import procfs
from quantlab.worker.intake import Intake


class Slot:
    """What the worker knows about one strategy it runs; a worker hook sees it in ``wctx.strategies``."""

    def __init__(self, work: Work, log_path: Path, machine: m.Machine) -> None:
        assert work.assignment is not None
        self.id = work.id
        self.work = work
        self.assignment: Assignment = work.assignment
        self.log_path = log_path
        self.machine = machine
        self.due = m.deadline(machine)  #: the machine's next deadline (monotonic), kept by StrategyManager.feed
        #: What the store shows of it: written by the manager from the machine's actions, and by publishing.py.
        self.result = msgspec.structs.replace(work.result, pid=None, reason="")
        #: Messages the child could not take yet (not connected, or its pipe full): sent on the next pass (outbox.py).
        self.outbox: collections.deque[ToChild] = collections.deque()
        self.unsaved: bytes | None = None  #: state JSON the store refused (disk full...): written again (statecommit.py)
        self.store_failing = False  #: a store write failed and was reported; reset by the next success (report.py)
        #: The reconciliation before its start (starts.py), handed to the Init of the child it let start (inbox.py).
        self.reconciled: Reconciled | None = None
        self.memory_checked = 0.0  #: when the memory limit was last checked (monotonic; the manager's pass)
        self.log_checked = 0.0  #: when its log's size was last looked at (monotonic; the manager's pass)
        #: Its budget of messages to the worker, the same across restarts (a token bucket starts full
        #: whatever the time it was made at).
        self.intake = Intake(0.0)
        #: ``result`` changed since it was last written: counts and usage wait for publishing.py's writes
        #: (publishing.py alone sets and clears it).
        self.dirty = True

    # ---- what a worker hook reads (docs/worker-hooks.md) ----

    @property
    def status(self) -> StrategyStatus:
        return self.result.status

    @property
    def last_heartbeat(self) -> float | None:
        return self.result.last_heartbeat

    @property
    def error_count(self) -> int:
        return self.result.error_count

    @property
    def pid(self) -> int | None:
        child = m.alive(self.machine)
        return child.pid if child else None

    @property
    def alive(self) -> bool:
        return m.alive(self.machine) is not None

    @property
    def running(self) -> bool:
        """st_init returned and no stop is under way: the child takes ticks and messages."""
        return isinstance(self.machine.state, m.Running)

    @property
    def key(self) -> bytes:
        """Its incarnation's name inside the worker (its exit, its API answers); never on the wire."""
        return f"{self.id}#{self.machine.incarnation}".encode()

    @property
    def moved_away(self) -> bool:
        """The Work is no longer this worker's at this epoch: its writes and orders are fenced off."""
        return m.moved_away(self.machine)

    @property
    def fenced_off(self) -> bool:
        """None of its exchange calls may leave: it moved away, or ran while this worker's lease ran out."""
        return m.fenced_off(self.machine)

    def marker(self, wall: float, text: str) -> None:
        """A line from the worker in the strategy's own log: spawn, exit, kill, restart."""
        stamp = datetime.datetime.fromtimestamp(wall).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
        try:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(f"{stamp} WORKER {text}\n")
        except OSError:
            pass  # a full disk must not stop supervision; the worker's own log says what failed


def statuses_now(slots: Mapping[str, Slot]) -> list[str]:
    """Each strategy's status as its child is now; safe off the loop's thread (the metrics' scrape).

    The status written last may say ``running`` of a child the fence guard has just killed while
    the loop was stuck in a store call: until the loop reaps it, it shows as ``stopping``.
    """
    out: list[str] = []
    for slot in list(slots.values()):
        status, pid = slot.result.status, slot.pid
        out.append("stopping" if status == "running" and (pid is None or not _child_alive(pid)) else status)
    return out


def _child_alive(pid: int) -> bool:
    try:
        return not procfs.exited(pid)
    except OSError:  # reaped already
        return False
