"""One supervised strategy on a worker: its typed supervision state."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Literal

import msgspec

from quantlab.pool.records import Assignment, ErrorInfo, ExitReason, StrategyResult, StrategyStatus, Work
from quantlab.worker.rules import ErrorWindow, TickSchedule

Phase = Literal["starting", "running", "stopping", "backoff", "done"]

_STATUS: dict[Phase, StrategyStatus] = {
    "starting": "starting",
    "running": "running",
    "stopping": "stopping",
    "backoff": "error",
    "done": "stopped",
}


class Slot:
    """What the worker knows about one strategy it runs (the seed's wctx.strategies entry)."""

    def __init__(self, work: Work, log_path: Path) -> None:
        assert work.assignment is not None
        self.id = work.id
        self.work = work
        self.assignment: Assignment = work.assignment
        self.log_path = log_path
        self.result = msgspec.structs.replace(work.result, pid=None, reason="")
        self.phase: Phase = "backoff"
        self.incarnation = 0
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.started_at = 0.0
        self.ready_at: float | None = None
        self.restart_at = 0.0
        self.stop_deadline = 0.0
        self.stop_reason: ExitReason | None = None
        self.error_reported: ErrorInfo | None = None  #: an Error message from the child before it exited
        self.exited: ExitReason | None = None  #: the child said Exited: a clean stop
        self.killed_for: str | None = None  #: why the worker killed it (hung, stop timeout)
        self.restart_requested = False  #: `qlab strategy restart`: start again once stopped
        self.consecutive_failures = 0
        self.errors = ErrorWindow(work.spec.error_window)
        self.ticks = TickSchedule(work.spec.interval, 0.0)
        self.dirty = True

    # ---- the seed's view ----

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
    def routing_id(self) -> bytes:
        return f"{self.id}#{self.incarnation}".encode()

    @property
    def alive(self) -> bool:
        return self.pid is not None

    @property
    def moved_away(self) -> bool:
        """The Work is no longer this worker's at this epoch: its writes and orders are fenced off."""
        return self.stop_reason is not None and self.stop_reason.type in ("reassigned", "lease_lost")

    def set_phase(self, phase: Phase, reason: str = "") -> None:
        self.phase = phase
        self.result.status = _STATUS[phase]
        self.result.reason = reason
        self.dirty = True

    def hung_for(self, now: float) -> float:
        """Seconds since the last sign of a completed heartbeat (or since spawn)."""
        last = max(self.started_at, self.result.last_heartbeat or 0.0)
        return now - last

    def marker(self, now: float, text: str) -> None:
        """A line from the worker in the strategy's own log: spawn, exit, kill, restart."""
        stamp = datetime.datetime.fromtimestamp(now).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(f"{stamp} WORKER {text}\n")
