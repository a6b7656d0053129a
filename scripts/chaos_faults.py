"""The chaos soak's faults: injecting them, and timing how long each strategy took to come back.

A fault "hits" the strategies it interrupts; each gets a `Watch` that ends at
the first heartbeat that *began* after the fault (``since``), from a pid the
fault did not already have running (``old_pids``) where that matters (a kill
needs a new child; a paused child may resume). The time from the fault to the
end of that heartbeat is the recovery; beyond the bound it is a violation.
Targets are chosen among strategies that are not still recovering from an
earlier fault, so each recovery time belongs to one fault; operator commands
(stop/start/restart) are the exception: they race whatever is going on.
Every `qlab` command a fault runs must succeed (each names a strategy that
exists): one that fails or times out is counted on its fault and reported.
The operator races (remove-assign, stop-start-restart, apply) are in
chaos_races.py; they register their handlers here and claim the strategies
they work on, so no other fault picks those meanwhile.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from queue import SimpleQueue
from typing import Callable, Mapping, Sequence

from chaos_checks import Beat, Runner, StrategyLog
from chaos_corrupt import damage
from chaos_cluster import CLI_TIMEOUT, Cluster, Managed, ProcessWatch, StatusPoller, leader_of, send

FAULT_KINDS = (
    "child-kill",  # SIGKILL a strategy child
    "child-stop",  # SIGSTOP a strategy child, SIGCONT after up to heartbeat timeout + 1.5 s
    "worker-kill",  # SIGKILL a worker, start it again (same id) after a moment
    "worker-stop",  # SIGSTOP a worker past its lease, then SIGCONT
    "director-kill",  # SIGKILL the leading director, start a new standby after a moment
    "director-stop",  # SIGSTOP the leading director past its lease, then SIGCONT
    "stop-start",  # `qlab strategy stop`, then `start` (at once, or once the stop took effect)
    "restart",  # `qlab strategy restart`
    "bad-state",  # the strategy puts a tuple key in ctx.state once: not JSON
    "remove-assign",  # `qlab strategy remove`, then at once `assign` of the same id (perhaps pinned elsewhere)
    "stop-start-restart",  # stop/start/restart from two threads at once, then a final stop or start
    "apply",  # `qlab apply` changing one strategy's interval, placement or accounts, or pruning and re-adding it
    "corrupt-record",  # garbage over a record nothing running reads, or a torn feed line (file store only)
    "halt",  # `qlab halt` (all, the account or one strategy), then `qlab resume`: nothing it covers lands meanwhile
)

Report = Callable[[str, "str | None", str], None]
Say = Callable[[str], None]
POOL_THREADS = 8  #: `qlab` commands under way at once; a race's two threads spend most of their time in its gaps


@dataclass(frozen=True)
class Ran:
    """One `qlab` command a fault ran."""

    args: tuple[str, ...]
    issued: float  #: monotonic
    returned: float  #: monotonic
    result: subprocess.CompletedProcess[str] | None  #: None: it timed out

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.returncode == 0

    def words(self) -> str:
        """The command as an operator typed it, its strategy file by name only."""
        return "qlab " + " ".join(a.rsplit("/", 1)[-1] for a in self.args)

    def failure(self) -> str:
        if self.result is None:
            return "timed out"
        return f"exit {self.result.returncode}: {(self.result.stderr or self.result.stdout).strip()[:200]}"


@dataclass
class Watch:
    """One strategy that must beat again after a fault."""

    strategy: str
    since: float | None  #: monotonic; None until a bad-state fault took effect
    old_pids: frozenset[int]
    armed_at: float  #: monotonic: the deadline counts from here until ``since`` is known
    recovered: float | None = None  #: seconds it took
    overdue: bool = False
    superseded: bool = False  #: an operator command took the strategy over before the bound passed
    needs_ok: bool = False  #: only a beat whose order the exchange accepted counts (after a halt is lifted)

    def open(self) -> bool:
        return self.recovered is None and not self.superseded

    def accepts(self, beat: Beat) -> bool:
        fresh = self.since is not None and beat.m0 > self.since and beat.pid not in self.old_pids
        return fresh and (beat.ok or not self.needs_ok)


@dataclass
class Fault:
    kind: str
    at: float  #: monotonic
    wall: float
    target: str
    watches: list[Watch] = field(default_factory=list)
    leader_gone: int | None = None  #: a director fault: this pid cannot count as the leader that came back
    leader_back: float | None = None  #: seconds until a leader published again
    leader_late: bool = False
    failed: list[str] = field(default_factory=list)  #: its `qlab` commands that failed or timed out

    @property
    def wants_leader(self) -> bool:
        return self.leader_gone is not None

    def recovery(self) -> float | None:
        """Seconds until everything it hit was back (the slowest strategy, or the leader); None while not."""
        samples = [w.recovered for w in self.watches if not w.superseded]
        if self.wants_leader:
            samples.append(self.leader_back)
        if not samples or None in samples:
            return None
        return max(s for s in samples if s is not None)


class Timeline:
    """Actions due at a monotonic time: SIGCONTs, restarts."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def later(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), action))

    def run_due(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            heapq.heappop(self._heap)[2]()

    def __len__(self) -> int:
        return len(self._heap)


class Recovery:
    """Every fault, and when what it hit was back."""

    def __init__(self, bound: float, report: Report, say: Say, t0: float, extra: Mapping[str, float] | None = None) -> None:
        """``extra``: seconds some strategies may take past ``bound`` (the live ones: chaos_exchange.py)."""
        self.bound = bound
        self.extra = dict(extra or {})
        self.report = report
        self.say = say
        self.t0 = t0
        self.faults: list[Fault] = []
        self.poison_pending: dict[str, Watch] = {}  #: bad-state faults whose heartbeat has not come yet

    def add(self, fault: Fault) -> None:
        self.faults.append(fault)

    def bound_of(self, sid: str) -> float:
        return self.bound + self.extra.get(sid, 0.0)

    def watches(self) -> list[tuple[Fault, Watch]]:
        return [(f, w) for f in self.faults for w in f.watches]

    def busy(self, sid: str) -> bool:
        return sid in self.poison_pending or any(w.strategy == sid and w.open() for _, w in self.watches())

    def unsettled(self) -> bool:
        return bool(self.poison_pending) or any(w.open() for _, w in self.watches()) or self.leader_missing()

    def leader_missing(self) -> bool:
        return any(f.wants_leader and f.leader_back is None for f in self.faults)

    def supersede(self, sid: str) -> None:
        """An operator command on the strategy ends the watches it interrupts (a late one was reported already)."""
        for _, watch in self.watches():
            if watch.strategy == sid and watch.open():
                watch.superseded = True

    def on_beat(self, sid: str, beat: Beat) -> None:
        if beat.poisoned and (watch := self.poison_pending.pop(sid, None)) is not None:
            watch.since = beat.m
        for fault, watch in self.watches():
            if watch.strategy == sid and watch.open() and watch.accepts(beat):
                watch.recovered = beat.m - watch.since  # type: ignore[operator]
                if (took := fault.recovery()) is not None:
                    self.say(f"  {fault.kind} {fault.target}: back in {took:.2f}s")

    def check_overdue(self, now: float, whereabouts: Callable[[str], str]) -> None:
        for fault, watch in self.watches():
            start = watch.since if watch.since is not None else watch.armed_at
            bound = self.bound_of(watch.strategy)
            if watch.open() and not watch.overdue and now > start + bound:
                watch.overdue = True
                what = "took no effect" if watch.since is None else "not heartbeating again"
                self.report("recovery", watch.strategy, (
                    f"after {fault.kind} {fault.target} at +{fault.at - self.t0:.2f}s: {what} within "
                    f"{bound:.1f}s{whereabouts(watch.strategy)}"
                ))  # fmt: skip

    def check_leader(self, now: float, status: StatusPoller, stopped: set[int]) -> None:
        """A director fault is over once a leader that is neither the killed one nor paused publishes."""
        latest = status.latest()
        for fault in self.faults:
            if not fault.wants_leader or fault.leader_back is not None:
                continue
            status.hurry()
            gone = stopped | ({fault.leader_gone} if fault.kind == "director-kill" and fault.leader_gone else set())
            leader = leader_of(latest[1], gone) if latest and latest[0] > fault.at else None
            if latest and leader is not None and leader.get("last_seen", 0) > fault.wall:
                fault.leader_back = latest[0] - fault.at
                self.say(f"  {fault.kind} {fault.target}: leader {leader['id']} back in {fault.leader_back:.2f}s")
            elif self._leader_late(fault, now, status) and not fault.leader_late:
                fault.leader_late = True
                self.report("recovery", None, (
                    f"after {fault.kind} {fault.target} at +{fault.at - self.t0:.2f}s: no leading director "
                    f"published within {self.bound:.1f}s"
                ))  # fmt: skip


    def _leader_late(self, fault: Fault, now: float, status: StatusPoller) -> bool:
        """Known late: a status begun after the bound still showed no leader (a command can take
        seconds on a busy machine, so its return time alone would blame the directors for it),
        or no status came back at all for as long as a command may take."""
        return status.latest_began() > fault.at + self.bound or now > fault.at + self.bound + CLI_TIMEOUT


@dataclass
class StopOp:
    """`stop` then `start` of one strategy: stopping -> waiting (for the stop to take effect) -> holding -> starting."""

    strategy: str
    fault: Fault
    race: bool  #: start right after the stop returns, without waiting for it to take effect
    hold: float  #: seconds to stay stopped (once the stop took effect, unless racing)
    runner: int | None  #: the pid running when the stop was asked for
    phase: str = "stopping"
    stop_done: float = 0.0
    effect: float | None = None  #: monotonic time the stop took effect
    start_at: float = 0.0


@dataclass(frozen=True)
class Timings:
    """The soak's timings, as the injector needs them."""

    bound: float  #: seconds to recover
    lease_ttl: float
    heartbeat_timeout: float
    fresh: float  #: a strategy whose last beat is older is not running


class Injector:
    """Injects one fault of a given kind into a running cluster, or declines when nothing fits."""

    def __init__(
        self, *, cluster: Cluster, logs: dict[str, StrategyLog], recovery: Recovery, procs: ProcessWatch,
        status: StatusPoller, timeline: Timeline, rng: random.Random, timings: Timings, report: Report, say: Say,
        start_worker: Callable[[str], None], start_director: Callable[[], None],
    ) -> None:  # fmt: skip
        self.cluster = cluster
        self.logs = logs
        self.recovery = recovery
        self.procs = procs
        self.status = status
        self.timeline = timeline
        self.rng = rng
        self.timings = timings
        self.report = report
        self.say = say
        self.start_worker = start_worker
        self.start_director = start_director
        self.ops: dict[str, StopOp] = {}
        self.claims: dict[str, str] = {}  #: strategy -> the operator race working on it (chaos_races.py)
        self.pins: dict[str, str] = {}  #: strategy -> the worker it is pinned to
        #: An operator race that needs the fleet to itself (an apply: its manifest speaks for every
        #: strategy, so it would start one another command holds stopped): no command fault meanwhile.
        self.exclusive: str | None = None
        self.commanded: dict[str, float] = {}  #: strategy -> when we last sent it a command
        self.stopped_windows: dict[str, list[tuple[float, float]]] = {sid: [] for sid in logs}
        self.inbox: SimpleQueue[Callable[[], None]] = SimpleQueue()
        self.pool = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="qlab-cli")
        self.handlers: dict[str, Callable[[float], Fault | None]] = {
            "child-kill": self.child_kill,
            "child-stop": self.child_stop,
            "worker-kill": self.worker_kill,
            "worker-stop": self.worker_stop,
            "director-kill": self.director_kill,
            "director-stop": self.director_stop,
            "stop-start": self.stop_start,
            "restart": self.restart,
            "bad-state": self.bad_state,
            "corrupt-record": self.corrupt_record,
        }

    def inject(self, kind: str, now: float) -> Fault | None:
        fault = self.handlers[kind](now)
        if fault is not None:
            self.recovery.add(fault)
            hit = ", ".join(w.strategy for w in fault.watches)
            self.say(f"[bold]{kind}[/bold] {fault.target}" + (f" -> {hit}" if hit else ""))
        return fault

    def step(self, now: float) -> None:
        """Results of `qlab` commands, then the next step of each stop/start."""
        while not self.inbox.empty():
            self.inbox.get()()
        for op in list(self.ops.values()):
            if op.phase == "waiting":
                self._wait_for_stop(op, now)
            if op.phase == "holding" and now >= op.start_at:
                self._start(op)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    # ---- what is running where ----

    def running(self, sid: str) -> Runner | None:
        """The runner beating right now, if it is alive and the process it was."""
        latest = self.logs[sid].latest()
        if latest is None or time.monotonic() - latest[1].m > self.timings.fresh:
            return None
        return latest[0] if self.procs.same_process(latest[0].pid) else None

    def commanded_lately(self, sid: str) -> bool:
        """A command of ours went to the strategy within the bound: its watch may not be armed yet
        (that waits for the command's return), so no fault may count it as undisturbed."""
        return time.monotonic() - self.commanded.get(sid, -1e9) <= self.timings.bound

    def taken(self, sid: str) -> bool:
        """An operator command or race is working on the strategy: no other fault may pick it."""
        return sid in self.ops or sid in self.claims

    def healthy(self) -> list[str]:
        return [sid for sid in self.logs if not self.taken(sid) and not self.recovery.busy(sid) and self.running(sid)]

    def hosted(self, worker: Managed) -> list[tuple[str, Runner]]:
        """The strategies beating on ``worker`` right now (a runner's parent is its worker)."""
        return [(sid, r) for sid in self.logs if (r := self.running(sid)) is not None and r.ppid == worker.pid]

    def fault(self, kind: str, now: float, target: str, hit: list[tuple[str, set[int]]]) -> Fault:
        fault = Fault(kind, now, time.time(), target)
        fault.watches = [Watch(sid, now, frozenset(pids), now) for sid, pids in hit]
        return fault

    # ---- strategy children ----

    def _pick_runner(self) -> tuple[str, Runner] | None:
        candidates = [(sid, r) for sid in self.healthy() if (r := self.running(sid)) is not None]
        return self.rng.choice(candidates) if candidates else None

    def child_kill(self, now: float) -> Fault | None:
        if (choice := self._pick_runner()) is None:
            return None
        sid, runner = choice
        send(runner.pid, signal.SIGKILL)
        return self.fault("child-kill", now, f"{sid} pid {runner.pid}", [(sid, {runner.pid})])

    def child_stop(self, now: float) -> Fault | None:
        if (choice := self._pick_runner()) is None:
            return None
        sid, runner = choice
        pause = self.rng.uniform(0.5, self.timings.heartbeat_timeout + 1.5)
        send(runner.pid, signal.SIGSTOP)
        self.timeline.later(now + pause, functools.partial(self._continue, runner.pid))
        # Any heartbeat that began after it counts: the same child resumed, or a new one after a hang kill.
        return self.fault("child-stop", now, f"{sid} pid {runner.pid} for {pause:.1f}s", [(sid, set())])

    def _continue(self, pid: int) -> None:
        if self.procs.same_process(pid):
            send(pid, signal.SIGCONT)

    def bad_state(self, now: float) -> Fault | None:
        if not (candidates := self.healthy()):
            return None
        sid = self.rng.choice(candidates)
        fault = self.fault("bad-state", now, sid, [])
        watch = Watch(sid, None, frozenset(), now)  # its clock starts with the poisoned heartbeat
        fault.watches.append(watch)
        self.recovery.poison_pending[sid] = watch
        (self.cluster.home / "poison" / sid).touch()
        return fault

    def corrupt_record(self, now: float) -> Fault | None:
        """Every running strategy must beat again after it: the damage is to nothing they run from."""
        if self.cluster.env.get("QLAB_STORE") or not (running := self.healthy()):
            return None  # PostgreSQL has no files to damage
        what = damage(self.cluster.home / "store", self.rng)
        return self.fault("corrupt-record", now, what, [(sid, set()) for sid in running])

    # ---- workers ----

    def _in_transit(self) -> bool:
        """A recovering strategy runs nowhere: a failover may be handing it, by way of the leader, to any
        worker (on PostgreSQL a restarted worker often comes back after its lease, so its strategies
        move). A worker or director fault then would be blamed on the first fault's recovery."""
        return any(self.recovery.busy(sid) and self.running(sid) is None for sid in self.logs)

    def _pick_worker(self) -> tuple[Managed, list[tuple[str, Runner]]] | None:
        """A live, running worker with strategies, none of them still recovering from something else;
        none at all while a strategy is in transit. Never a worker a strategy is pinned to: that
        strategy could run nowhere else until it is back, and a worker paused past its lease comes
        back too late for the recovery bound."""
        if self._in_transit():
            return None
        candidates = []
        for worker in self.cluster.procs.values():
            if not worker.is_worker or worker.stopped or not worker.alive() or worker.name in self.pins.values():
                continue
            hosted = [(sid, r) for sid, r in self.hosted(worker) if not self.taken(sid)]
            if hosted and not self._recovering_on(worker):
                candidates.append((worker, hosted))
        return self.rng.choice(candidates) if candidates else None

    def _recovering_on(self, worker: Managed) -> bool:
        """A strategy still recovering whose last runner is this worker's (a paused child has no fresh beat)."""
        for sid, log in self.logs.items():
            latest = log.latest()
            if latest is not None and latest[0].ppid == worker.pid and self.recovery.busy(sid):
                return True
        return False

    def worker_kill(self, now: float) -> Fault | None:
        if self._paused() or self.recovery.leader_missing() or (choice := self._pick_worker()) is None:
            # Never without a leader: a killed worker restarted after its lease needs one to place
            # its strategies again (a paused director is a leader missing for a lease).
            return None
        worker, hosted = choice
        worker.expected_exit = True
        worker.signal(signal.SIGKILL)
        delay = self.rng.uniform(0.3, 2.0)
        self.timeline.later(now + delay, functools.partial(self.start_worker, worker.name))
        target = f"{worker.name} pid {worker.pid}, restarted after {delay:.1f}s"
        return self.fault("worker-kill", now, target, [(sid, {r.pid}) for sid, r in hosted])

    def worker_stop(self, now: float) -> Fault | None:
        if self._paused() or self.recovery.leader_missing() or (choice := self._pick_worker()) is None:
            # One pause at a time, and never without a leader: a worker back before anyone expired it
            # may rightly keep its strategies, and its fault would have no defined outcome.
            return None
        worker, hosted = choice
        pause = self.rng.uniform(self.timings.lease_ttl + 0.5, self.timings.lease_ttl + 2.0)
        self._pause(worker, now, pause)
        # Past its lease its strategies must be started anew (elsewhere, or here once it is back): a new pid.
        return self.fault("worker-stop", now, f"{worker.name} pid {worker.pid} for {pause:.1f}s", [(sid, {r.pid}) for sid, r in hosted])

    def _pause(self, managed: Managed, now: float, pause: float) -> None:
        managed.stopped = True
        managed.signal(signal.SIGSTOP)

        def resume() -> None:
            managed.stopped = False
            managed.signal(signal.SIGCONT)

        self.timeline.later(now + pause, resume)

    def _paused(self) -> bool:
        return any(m.stopped for m in self.cluster.procs.values())

    # ---- directors ----

    def _leader(self, now: float) -> Managed | None:
        latest = self.status.latest()
        if latest is None or now - latest[0] > 2.0 or self.recovery.leader_missing():
            return None
        leader = leader_of(latest[1], set())
        return self.cluster.by_pid(leader["pid"]) if leader else None

    def director_kill(self, now: float) -> Fault | None:
        if self._paused() or self._in_transit() or (leader := self._leader(now)) is None:
            return None
        leader.expected_exit = True
        leader.signal(signal.SIGKILL)
        delay = self.rng.uniform(0.3, 2.0)
        self.timeline.later(now + delay, self.start_director)
        fault = self.fault("director-kill", now, f"{leader.name} pid {leader.pid}, a new standby after {delay:.1f}s", [])
        fault.leader_gone = leader.pid
        return fault

    def director_stop(self, now: float) -> Fault | None:
        if self._paused() or self._in_transit() or (leader := self._leader(now)) is None:
            return None
        pause = self.rng.uniform(self.timings.lease_ttl + 0.5, self.timings.lease_ttl + 2.0)
        self._pause(leader, now, pause)
        fault = self.fault("director-stop", now, f"{leader.name} pid {leader.pid} for {pause:.1f}s", [])
        fault.leader_gone = leader.pid
        return fault

    # ---- operator commands ----

    def pick_for_command(self, now: float, prefer: frozenset[str] = frozenset()) -> str | None:
        """A running strategy with no command of ours under way (one command's st_exit must not pass for another's);
        one of ``prefer`` when any fits."""
        if self.exclusive is not None:
            return None
        candidates = [
            sid for sid in self.logs
            if not self.taken(sid) and sid not in self.recovery.poison_pending
            and now - self.commanded.get(sid, -1e9) > self.timings.bound and self.running(sid)
        ]  # fmt: skip
        if not candidates:
            return None
        sid = self.rng.choice([c for c in candidates if c in prefer] or candidates)
        self.commanded[sid] = now
        return sid

    def restart(self, now: float) -> Fault | None:
        if (sid := self.pick_for_command(now)) is None:
            return None
        runner = self.running(sid)
        old = frozenset({runner.pid} if runner else ())
        fault = self.fault("restart", now, sid, [])
        self.recovery.supersede(sid)

        def done(ran: Ran) -> None:
            if self.checked(fault, sid, ran):
                fault.watches.append(Watch(sid, ran.returned, old, ran.returned))

        self.background(done, "strategy", "restart", sid)
        return fault

    def stop_start(self, now: float) -> Fault | None:
        if (sid := self.pick_for_command(now)) is None:
            return None
        runner = self.running(sid)
        race = self.rng.random() < 0.4
        hold = self.rng.uniform(0.0, 0.3) if race else self.rng.uniform(0.3, 1.2)
        fault = self.fault("stop-start", now, f"{sid} ({'start at once' if race else f'held {hold:.1f}s'})", [])
        self.recovery.supersede(sid)
        op = self.ops[sid] = StopOp(sid, fault, race, hold, runner.pid if runner else None)

        def done(ran: Ran) -> None:
            op.stop_done = time.monotonic()
            op.phase = "waiting" if self.checked(fault, sid, ran) and not race else "holding"
            op.start_at = op.stop_done + hold

        self.background(done, "strategy", "stop", sid)
        return fault

    def _wait_for_stop(self, op: StopOp, now: float) -> None:
        """The stop took effect once its runner ran st_exit, or `qlab status` says stopped."""
        self.status.hurry()
        exits = [r.exit_m for r in self.logs[op.strategy].runners if r.pid == op.runner and r.exit_reason == "manual" and r.exit_m]
        latest = self.status.latest()
        said = latest is not None and latest[0] > op.stop_done and any(
            e["id"] == op.strategy and e["status"] == "stopped" for e in latest[1].get("strategies", [])
        )
        if exits or said:
            op.effect = min(exits) if exits else latest[0]  # type: ignore[index]
            op.phase, op.start_at = "holding", now + op.hold
        elif now > op.stop_done + self.timings.bound:
            self.report("stop-lost", op.strategy, f"`qlab strategy stop` at +{op.fault.at - self.recovery.t0:.2f}s took no effect within {self.timings.bound:.1f}s")
            op.phase, op.start_at = "holding", now

    def _start(self, op: StopOp) -> None:
        op.phase = "starting"

        def done(ran: Ran) -> None:
            if op.effect is not None:
                self.stopped_windows[op.strategy].append((op.effect, ran.issued))
            if self.checked(op.fault, op.strategy, ran):
                op.fault.watches.append(Watch(op.strategy, ran.returned, frozenset(), ran.returned))
            del self.ops[op.strategy]

        self.background(done, "strategy", "start", op.strategy)

    # ---- running `qlab` commands ----

    def background(self, then: Callable[[Ran], None], *args: str) -> None:
        """Run one `qlab` command on a thread; ``then`` gets it in the loop."""
        self.commands([(0.0, args)], lambda ran: then(ran[0]))

    def commands(self, steps: Sequence[tuple[float, Sequence[str]]], then: Callable[[list[Ran]], None]) -> None:
        """Run `qlab` commands one after another on a thread, each ``gap`` seconds after the one before;
        ``then`` gets them all, in the loop (a paused lock holder may block a command: never the loop).

        An operator command's recovery counts from when the command returned: its own start-up (an
        interpreter and its imports, psycopg's alone up to seconds on a saturated machine) is the
        client's time, not the cluster's.
        """

        def work() -> None:
            ran = []
            for gap, args in steps:
                if gap > 0:
                    time.sleep(gap)  # the race's own spacing, on this thread: the loop never waits on it
                issued = time.monotonic()
                result = self.cluster.run(*args)
                ran.append(Ran(tuple(args), issued, time.monotonic(), result))
            self.inbox.put(lambda: then(ran))

        self.pool.submit(work)

    def checked(self, fault: Fault, sid: str, ran: Ran) -> bool:
        """Whether the command succeeded; one that failed or timed out is counted on its fault and reported.

        Each command a fault runs names a strategy that exists (or, an assign, one just removed) with
        valid options: none may fail, and a race that loses one leaves the strategy not as intended.
        """
        if ran.ok:
            return True
        fault.failed.append(f"{ran.words()}: {ran.failure()}")
        self.report("command-failed", sid, f"`{ran.words()}` in {fault.kind} at +{fault.at - self.recovery.t0:.2f}s: {ran.failure()}")
        return False
