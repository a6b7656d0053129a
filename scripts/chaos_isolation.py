"""The chaos soak's isolation faults: what one strategy, or its worker's zygote, must not do to the others.

- ``flood``: a strategy calls ctx.send in a tight loop for a few seconds and
  puts the same frames straight onto its channel (chaos_strategy.py). The
  strategies beside it on its worker must keep their processes (the worker
  kept its lease) and beat at least once a bound throughout; the flooder
  beats again once it ends; the worker drops what is over its budget and says
  so in an ``over_budget`` event, and the events a strategy writes stay within
  its budget (``flood_budget``).
- ``zygote-stop``: the zygote of a worker (``qlab zygote WORKER``, a child of
  that worker) is paused for ZYGOTE_PAUSE seconds while one of the worker's
  strategies is restarted: the others beat on; the restarted one is back
  within the bound past the worker's spawn deadline; the zygote is replaced.
- ``zygote-kill``: the zygote is killed, then one of its worker's
  strategies restarted: the others keep their processes, the new start
  works, and a new zygote runs.
- ``escape``: a strategy starts a helper in a new session and one by a
  double fork; then the soak kills the strategy's child or restarts it: every
  helper must be gone within the bound (``escaped-helper``).

While one of these is under way on a worker its strategies are claimed (no
other fault picks them), no worker is killed or paused (its neighbours'
timing would be that fault's), and no second one picks that worker. While a
zygote is paused no other fault is injected at all (``hold``).
The leak check at the end is ``LeakCheck``.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from chaos_checks import StrategyLog, Violation
from chaos_cluster import Managed, Proc, all_procs, has_marker, host_pids, read_proc, send
from chaos_faults import Fault, Injector, Ran, Watch
from quantlab.protocol import LIMITS
from quantlab.store.records import Event, EventKind
from quantlab.worker.spawner import DEADLINE

ISOLATION_KINDS = ("flood", "zygote-stop", "zygote-kill", "escape")
FLOOD_SECONDS = (2.0, 5.0)  #: how long a flood lasts, s: past the worker's FAULT_AFTER (3 s) about half the time
ZYGOTE_PAUSE = 10.0  #: seconds a zygote stays paused: twice the worker's spawn deadline
ZYGOTE_TITLE = "qlab zygote"
WORKER_FAULTS = ("worker-kill", "worker-stop")


def zygote_of(worker_pid: int, procs: Iterable[Proc]) -> Proc | None:
    """The worker's zygote: its child titled ``qlab zygote ...``."""
    return next((p for p in procs if p.ppid == worker_pid and p.cmdline.startswith(ZYGOTE_TITLE) and p.state != "Z"), None)


def alive(pid: int, start: int) -> bool:
    proc = read_proc(pid)
    return proc is not None and proc.start == start and proc.state != "Z"


# ---- the checks (pure: records and events in, violations out) ----


def disturbed(log: StrategyLog, pid: int, since: float, until: float, bound: float) -> list[Violation]:
    """A neighbour of a fault that lost its process (restarted, or moved: its worker lost the lease) or went
    longer than ``bound`` without a beat between ``since`` and ``until`` (monotonic)."""
    found = []
    newer = [r for r in log.runners if r.pid != pid and since < r.started <= until]
    if newer:
        found.append(Violation("neighbour-disturbed", log.strategy, (
            f"pid {pid} was replaced by pid {newer[0].pid} {newer[0].started - since:.2f}s into the fault"
        )))  # fmt: skip
    times = [since, *sorted(b.m for r in log.runners if r.pid == pid for b in r.beats if since < b.m <= until), until]
    gap, at = max((b - a, a) for a, b in zip(times, times[1:]))
    if gap > bound:
        found.append(Violation("neighbour-disturbed", log.strategy, (
            f"pid {pid} went {gap:.2f}s without a beat from {at - since:.2f}s into the fault (bound {bound:.1f}s)"
        )))  # fmt: skip
    return found


def flood_budget(events: list[Event], floods: dict[str, list[float]], seconds: float) -> list[Violation]:
    """Each flood (strategy -> wall times it began) met by an over_budget event; each strategy's
    ctx.send events within its budget over the run's ``seconds``."""
    found = []
    for sid, starts in floods.items():
        dropped = [e.ts for e in events if e.kind == EventKind.OVER_BUDGET and e.strategy == sid]
        for began in starts:
            if not any(ts >= began for ts in dropped):
                found.append(Violation("flood-budget", sid, f"no over_budget event after its flood at {began:.2f}: nothing was dropped"))
    bound = LIMITS.send.burst + LIMITS.send.rate * seconds
    sent: dict[str, int] = {}
    for e in events:
        if e.kind == EventKind.STRATEGY_MESSAGE and e.strategy is not None:
            sent[e.strategy] = sent.get(e.strategy, 0) + 1
    for sid, n in sorted(sent.items()):
        if n > bound:
            found.append(Violation("flood-budget", sid, f"{n} ctx.send events in {seconds:.0f}s, over its budget's {bound:.0f}"))
    return found


def leaked(seen: dict[tuple[int, int], str], procs: dict[int, Proc], mark: str) -> list[Violation]:
    """Processes of the run still running: one seen among its workers' and directors' descendants
    (the same pid and start time), or any whose command line carries the run's helper mark."""
    left = {pid: f"`{cmd[:90]}`" for (pid, start), cmd in seen.items()
            if (p := procs.get(pid)) is not None and p.start == start and p.state != "Z"}
    left.update({p.pid: f"`{p.cmdline[:90]}`" for p in procs.values() if mark in p.cmdline and p.state != "Z"})
    return [Violation("leaked-process", None, f"pid {pid} {what} still running once the fleet stopped") for pid, what in sorted(left.items())]


# ---- the faults ----


@dataclass
class IsoOp:
    """One isolation fault in flight, stepped by the soak's loop until it is judged."""

    fault: Fault
    worker: Managed | None
    claimed: list[str]
    neighbours: dict[str, int]  #: strategy -> the pid it must keep
    since: float
    until: float  #: the end of the window its neighbours are judged over
    zygote: Proc | None = None  #: the zygote paused or killed: it must be replaced
    target: str = ""
    helpers: list[tuple[int, int]] = field(default_factory=list)  #: escaped helpers (pid, start)
    acted: float | None = None  #: an escape: when the soak killed or restarted the strategy
    how: str = ""  #: an escape: "killed" or "restarted"
    escape_watch: Watch | None = None


class Isolation:
    """The isolation faults, for the injector (``handlers``)."""

    def __init__(self, inj: Injector) -> None:
        self.inj = inj
        self.bound = inj.timings.bound
        self.ops: list[IsoOp] = []
        self.floods: dict[str, list[float]] = {}  #: strategy -> wall times of its floods
        self.handlers: dict[str, Callable[[float], Fault | None]] = {
            "flood": self.flood, "zygote-stop": functools.partial(self.zygote, pause=True),
            "zygote-kill": functools.partial(self.zygote, pause=False), "escape": self.escape,
        }  # fmt: skip
        for kind in WORKER_FAULTS:  # a worker fault meanwhile would be judged as this fault's damage
            inj.handlers[kind] = functools.partial(self._unless_busy, inj.handlers[kind])
        self.paused: IsoOp | None = None  #: the zygote-stop whose zygote may still be paused

    def hold(self, handlers: dict[str, Callable[[float], Fault | None]]) -> None:
        """Every other fault waits while a zygote is paused: a start on its worker waits for the spawn
        deadline, so any fault that starts a strategy there (a kill, a command, a move) would be late."""
        for kind, handler in handlers.items():
            handlers[kind] = functools.partial(self._unless_paused, handler)

    def _unless_paused(self, handler: Callable[[float], Fault | None], now: float) -> Fault | None:
        return None if self.paused is not None else handler(now)

    @property
    def busy(self) -> bool:
        return bool(self.ops)

    def _unless_busy(self, handler: Callable[[float], Fault | None], now: float) -> Fault | None:
        return None if any(op.worker is not None for op in self.ops) else handler(now)

    def _worker(self) -> tuple[Managed, list[tuple[str, int]]] | None:
        """A worker with two strategies or more, none of them taken, no isolation fault on it; a strategy
        commanded a moment ago is nobody's neighbour (its restart would pass for a disturbance)."""
        choice = self.inj._pick_worker()
        if choice is None or any(op.worker is choice[0] for op in self.ops):
            return None
        hosted = [(sid, r.pid) for sid, r in choice[1] if not self.inj.commanded_lately(sid)]
        return (choice[0], hosted) if len(hosted) >= 2 else None

    def _request(self, folder: str, sid: str, text: str) -> None:
        """A request file for chaos_strategy.py: ``folder/ID`` in the home."""
        (self.inj.cluster.home / folder).mkdir(exist_ok=True)
        (self.inj.cluster.home / folder / sid).write_text(text)

    def _open(self, fault: Fault, worker: Managed, hosted: list[tuple[str, int]], target: str, now: float, until: float) -> IsoOp:
        neighbours = {sid: pid for sid, pid in hosted if sid != target}
        fault.watches += [Watch(sid, now, frozenset(), now) for sid in neighbours]
        op = IsoOp(fault, worker, [sid for sid, _ in hosted], neighbours, now, until, target=target)
        for sid in op.claimed:
            self.inj.claims[sid] = fault.kind
        self.ops.append(op)
        return op

    def flood(self, now: float) -> Fault | None:
        if (choice := self._worker()) is None:
            return None
        worker, hosted = choice
        sid, _ = self.inj.rng.choice(hosted)
        seconds = self.inj.rng.uniform(*FLOOD_SECONDS)
        self._request("flood", sid, f"{seconds:.3f}")
        fault = self.inj.fault("flood", now, f"{sid} on {worker.name} for {seconds:.1f}s", [])
        # Back once it ends: the same child, or a new one if the worker charged it as faulty.
        fault.watches.append(Watch(sid, now + seconds, frozenset(), now))
        self.floods.setdefault(sid, []).append(fault.wall)
        self._open(fault, worker, hosted, sid, now, now + seconds)
        return fault

    def zygote(self, now: float, *, pause: bool) -> Fault | None:
        # A pause waits for every command, race and recovery under way to end: any of them may start a
        # strategy on that worker (a failover may hand one to it), and wait for the spawn deadline.
        busy = self.inj.ops or self.inj.claims or self.inj.exclusive is not None or self.inj.recovery.unsettled()
        if pause and (busy or self.inj._paused()):
            return None
        if (choice := self._worker()) is None or (zygote := zygote_of(choice[0].pid, all_procs().values())) is None:
            return None
        worker, hosted = choice
        sid, pid = self.inj.rng.choice(hosted)
        kind = "zygote-stop" if pause else "zygote-kill"
        send(zygote.pid, signal.SIGSTOP if pause else signal.SIGKILL)
        fault = self.inj.fault(kind, now, f"{worker.name}'s zygote pid {zygote.pid}, then restart {sid}", [])
        op = self._open(fault, worker, hosted, sid, now, now + (ZYGOTE_PAUSE if pause else 0.0))
        op.zygote = zygote
        if pause:
            self.paused = op
            self.inj.exclusive = kind  # the faults that wait meanwhile wait as long as for an apply
            self.inj.timeline.later(now + ZYGOTE_PAUSE, functools.partial(self._continue, op))
        self.inj.commanded[sid] = now
        # A paused zygote holds the start until the worker's spawn deadline replaces it: the bound counts from there.
        grace = DEADLINE if pause else 0.0

        def done(ran: Ran) -> None:
            if self.inj.checked(fault, sid, ran):
                fault.watches.append(Watch(sid, ran.returned + grace, frozenset({pid}), ran.returned))
            op.until = max(op.until, ran.returned + grace)

        self.inj.background(done, "strategy", "restart", sid)
        return fault

    def _continue(self, op: IsoOp) -> None:
        assert op.zygote is not None
        if alive(op.zygote.pid, op.zygote.start):
            send(op.zygote.pid, signal.SIGCONT)
        self.paused = None
        if self.inj.exclusive == op.fault.kind:
            self.inj.exclusive = None

    def escape(self, now: float) -> Fault | None:
        if (choice := self.inj._pick_runner()) is None:
            return None
        sid, runner = choice
        self._request("escape", sid, "")
        fault = self.inj.fault("escape", now, f"{sid} pid {runner.pid}", [])
        watch = Watch(sid, None, frozenset({runner.pid}), now)  # armed once its helpers are out
        fault.watches.append(watch)
        self.inj.claims[sid] = "escape"
        self.ops.append(IsoOp(fault, None, [sid], {}, now, now, target=sid, escape_watch=watch))
        return fault

    # ---- stepping and judging ----

    def step(self, now: float) -> None:
        for op in list(self.ops):
            if op.escape_watch is not None:
                self._step_escape(op, now)
            elif now > op.until + self.bound:
                self._judge(op)

    def _judge(self, op: IsoOp) -> None:
        for sid, pid in op.neighbours.items():
            for v in disturbed(self.inj.logs[sid], pid, op.since, op.until, self.inj.recovery.bound_of(sid)):
                self.inj.report(v.kind, v.strategy, f"in {op.fault.kind} {op.fault.target}: {v.detail}")
        if op.zygote is not None and op.worker is not None and op.worker.alive():
            now_zygote = zygote_of(op.worker.pid, all_procs().values())
            if alive(op.zygote.pid, op.zygote.start) or now_zygote is None:
                self.inj.report("zygote-not-replaced", op.target, (
                    f"in {op.fault.kind} {op.fault.target}: the zygote pid {op.zygote.pid} "
                    f"{'still runs' if now_zygote is None or now_zygote.pid == op.zygote.pid else 'left beside a new one'}"
                ))  # fmt: skip
        self._close(op)

    def _close(self, op: IsoOp) -> None:
        for sid in op.claimed:
            if self.inj.claims.get(sid) == op.fault.kind:
                del self.inj.claims[sid]
        self.ops.remove(op)

    def _step_escape(self, op: IsoOp, now: float) -> None:
        watch = op.escape_watch
        assert watch is not None
        if op.acted is None:
            runner = next((r for r in self.inj.logs[op.target].runners if r.escaped and r.pid in watch.old_pids), None)
            if runner is not None:
                self._act(op, runner.pid, runner.escaped, now)
            elif now > op.since + self.bound:
                self._close(op)  # its watch reports that it took no effect
            return
        left = [(pid, start) for pid, start in op.helpers if alive(pid, start)]
        if left and now > op.acted + self.bound:
            self.inj.report("escaped-helper", op.target, (
                f"in escape {op.fault.target}: helper(s) {', '.join(str(p) for p, _ in left)} alive "
                f"{now - op.acted:.1f}s after its child was {op.how}"
            ))  # fmt: skip
        if not left or now > op.acted + self.bound:
            self._close(op)

    def _act(self, op: IsoOp, pid: int, helpers: list[int], now: float) -> None:
        """The helpers are out: remember them, then end the child (SIGKILL, or `qlab strategy restart`)."""
        op.helpers = [(h, p.start) for h in host_pids(pid, helpers) if (p := read_proc(h)) is not None and p.state != "Z"]
        watch = op.escape_watch
        assert watch is not None
        op.acted = now
        op.how = "killed" if self.inj.rng.random() < 0.5 else "restarted"
        op.fault.target += f", {op.how}"
        if op.how == "killed":
            send(pid, signal.SIGKILL)
            watch.since = now
            return
        self.inj.commanded[op.target] = now

        def done(ran: Ran) -> None:
            op.acted = ran.returned
            watch.since = ran.returned
            self.inj.checked(op.fault, op.target, ran)

        self.inj.background(done, "strategy", "restart", op.target)


# ---- leaks ----


class LeakCheck:
    """Every process of the run: its workers' and directors' descendants, seen on each scan, and its helpers
    by their mark; none may be left once the fleet stopped (``leaked``)."""

    def __init__(self, managed: Callable[[], list[Managed]], marker: bytes, mark: str) -> None:
        self.managed = managed
        self.marker = marker  #: the run's environment marker: what carries it is the process watch's to report
        self.mark = mark  #: the helpers' argv mark (chaos_strategy.HELPER_MARK and the home)
        self.seen: dict[tuple[int, int], str] = {}

    def observe(self) -> None:
        procs = all_procs()
        roots = {m.pid for m in self.managed() if m.alive()}
        children: dict[int, list[Proc]] = {}
        for p in procs.values():
            children.setdefault(p.ppid, []).append(p)
        todo = list(roots)
        while todo:
            for child in children.get(todo.pop(), []):
                if child.state != "Z" and (child.pid, child.start) not in self.seen:
                    self.seen[(child.pid, child.start)] = child.cmdline
                todo.append(child.pid)

    def final(self, wait: float) -> list[Violation]:
        """What is left after up to ``wait`` seconds; each is killed, so nothing outlives the report."""
        deadline = time.monotonic() + wait
        while True:
            procs = {pid: p for pid, p in all_procs().items() if not has_marker(pid, self.marker)}
            found = leaked(self.seen, procs, self.mark)
            if not found or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for v in found:
            send(int(v.detail.split()[1]), signal.SIGKILL)
        return found


    def sweep(self, timeout: float = 5.0) -> None:
        """Kill whatever of the run is left, however the run ended: strategy children and helpers carry no
        environment marker for ``Cluster.sweep`` to find, and outlive a killed worker (their own groups)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.observe()
            procs = all_procs()
            left = {int(v.detail.split()[1]) for v in leaked(self.seen, procs, self.mark)}
            left |= {p.pid for p in procs.values() if p.ppid == os.getpid() and p.session != os.getsid(0) and p.state != "Z"}
            if not left:
                return
            for pid in left:
                send(pid, signal.SIGKILL)
            time.sleep(0.1)


def read_events(home: Path, store_url: str) -> list[Event]:
    """Every event in the run's store."""
    from quantlab.config import Paths
    from quantlab.store.open import open_store

    events, _ = open_store(Paths(home, store_url=store_url)).read_events()
    return list(events)
