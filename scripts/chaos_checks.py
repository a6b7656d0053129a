"""What the chaos soak's strategies record, and the invariants checked over those records.

Every strategy child appends JSON lines to ``records/ID.jsonl`` in the soak's
home (one ``os.write`` per line, O_APPEND, so lines from two processes never
mix). Times ``m``/``m0`` are ``time.monotonic()``, one clock for every
process on the host; ``t`` and ``xt`` are wall time (the exchange's ``time``
is in milliseconds)::

    {"k": "init",  pid, ppid, m, t, n, helper, sgen}   end of st_init; n = the counter it restored,
                                                       sgen = the generation its restored state was written by
    {"k": "send",  pid, ppid, m, t, n, id}             in st_heartbeat, before place_order(orderLinkId=id)
    {"k": "beat",  pid, ppid, m, t, n, id, m0, ok, code, xt, poisoned}
                                                       end of st_heartbeat: m0 = when it began,
                                                       ok = the order was accepted, code = the retCode
    {"k": "exit",  pid, ppid, m, t, n, reason}         st_exit
    {"k": "flood", pid, ppid, m, t, sent, refused, raw} a heartbeat's slice of a flood (chaos_isolation.py)
    {"k": "escape", pid, ppid, m, t, helpers}          the pids of the helpers it started to escape its cleanup

Every record also carries ``gen``, the strategy's generation (its ``gen``
param): the soak bumps it each time it removes the Work and creates it anew
under the same id. A new generation starts from empty state, so its counter
starts over; its order ids carry the generation, so they never meet the
removed one's at the exchange.

Nothing here runs processes: the functions take the parsed records and
return violations, so they can be tested with hand-written records.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

#: Bybit's (and the paper exchange's) retCode for a reused orderLinkId.
DUPLICATE_LINK_ID = 110072


@dataclass(frozen=True)
class Violation:
    kind: str
    strategy: str | None
    detail: str


@dataclass
class Beat:
    pid: int
    ppid: int
    n: int
    link: str
    m0: float  #: monotonic time st_heartbeat began
    m: float  #: monotonic time it returned
    ok: bool  #: place_order was accepted (retCode 0)
    code: int | None  #: the retCode of a refused order, else None
    xt: float | None  #: the exchange's time of an accepted order, wall seconds
    poisoned: bool  #: this heartbeat left an unserialisable key in ctx.state


@dataclass
class Send:
    pid: int
    n: int
    link: str
    m: float


@dataclass
class Runner:
    """One incarnation of a strategy: a child process, from its st_init on."""

    strategy: str
    pid: int
    ppid: int  #: the worker that adopted it
    restored: int  #: the counter st_init found in ctx.state
    started: float  #: monotonic time of st_init
    started_wall: float
    helper: int | None = None
    beats: list[Beat] = field(default_factory=list)
    sends: list[Send] = field(default_factory=list)
    exit_reason: str | None = None
    exit_m: float | None = None
    gen: int = 0  #: the Work's generation (a remove and a new assign of the same id: the next one)
    state_gen: int | None = None  #: the generation that wrote the state st_init restored; None: fresh state
    escaped: list[int] = field(default_factory=list)  #: helpers it started to escape its cleanup

    @property
    def last_send(self) -> int | None:
        return max((s.n for s in self.sends), default=None)


class StrategyLog:
    """Every runner of one strategy, oldest first, read incrementally from its records file."""

    def __init__(self, strategy: str, path: Path) -> None:
        self.strategy = strategy
        self.path = path
        self.runners: list[Runner] = []
        self.current: dict[int, Runner] = {}  #: pid -> its latest incarnation
        self._offset = 0
        self._partial = b""

    def poll(self) -> list[tuple[Runner, Beat]]:
        """Read what was appended since the last call; returns the new beats."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an unfinished last line waits for the rest
        beats: list[tuple[Runner, Beat]] = []
        for line in lines:
            if line.strip():
                beat = self.add(json.loads(line))
                if beat is not None:
                    beats.append(beat)
        return beats

    def add(self, rec: dict[str, Any]) -> tuple[Runner, Beat] | None:
        kind, pid = rec["k"], rec["pid"]
        if kind == "init":
            runner = Runner(
                self.strategy, pid, rec["ppid"], rec["n"], rec["m"], rec["t"], rec.get("helper"),
                gen=rec.get("gen", 0), state_gen=rec.get("sgen"),
            )  # fmt: skip
            self.runners.append(runner)
            self.runners.sort(key=lambda r: r.started)  # two children's lines may land out of order
            self.current[pid] = runner
            return None
        runner = self.current.get(pid) or self._unannounced(rec)
        if kind == "send":
            runner.sends.append(Send(pid, rec["n"], rec["id"], rec["m"]))
        elif kind == "beat":
            xt = rec.get("xt")
            beat = Beat(
                pid=pid, ppid=rec["ppid"], n=rec["n"], link=rec["id"], m0=rec["m0"], m=rec["m"],
                ok=bool(rec["ok"]), code=rec.get("code"), xt=None if xt is None else xt / 1000.0,
                poisoned=bool(rec.get("poisoned")),
            )  # fmt: skip
            runner.beats.append(beat)
            return runner, beat
        elif kind == "exit":
            runner.exit_reason, runner.exit_m = rec["reason"], rec["m"]
        elif kind == "escape":
            runner.escaped.extend(pid for pid in rec["helpers"] if pid)
        return None

    def _unannounced(self, rec: dict[str, Any]) -> Runner:
        # A record without st_init's line before it should not happen; keep it, ordered by its time.
        runner = Runner(self.strategy, rec["pid"], rec["ppid"], -1, rec["m"], rec["t"], gen=rec.get("gen", 0))
        self.runners.append(runner)
        self.runners.sort(key=lambda r: r.started)
        self.current[rec["pid"]] = runner
        return runner

    def latest(self) -> tuple[Runner, Beat] | None:
        """The runner that beat last, with that beat."""
        found = [(r, r.beats[-1]) for r in self.runners if r.beats]
        return max(found, key=lambda rb: rb[1].m, default=None)


# ---- the invariants ----


def double_runners(log: StrategyLog) -> list[Violation]:
    """An older runner began a heartbeat after a newer one ran st_init: two runners at once.

    The one heartbeat the older runner had already begun when the newer one
    started (a tick sent before its worker lost the lease) is tolerated: only
    heartbeats that *began* after the newer runner's st_init count. The rule
    spans generations: the runner of a removed Work that still begins a
    heartbeat once the Work made anew under its id has a runner is a second
    runner of that strategy, and so is a removed generation's runner that
    starts after a newer generation's did.
    """
    found = []
    for i, newer in enumerate(log.runners):
        for older in log.runners[:i]:
            late = [b for b in older.beats if b.m0 > newer.started]
            if late:
                first = late[0]
                found.append(Violation("double-runner", log.strategy, (
                    f"pid {older.pid}{_gen(older, newer)} (worker pid {older.ppid}) began {len(late)} heartbeat(s) "
                    f"after pid {newer.pid}{_gen(newer, older)} (worker pid {newer.ppid}) ran st_init: the first "
                    f"{first.m0 - newer.started:.3f}s after, counter {first.n} (the new runner restored {newer.restored})"
                )))  # fmt: skip
            if older.gen > newer.gen:
                found.append(Violation("double-runner", log.strategy, (
                    f"pid {newer.pid} of removed generation {newer.gen} (worker pid {newer.ppid}) ran st_init "
                    f"{newer.started - older.started:.3f}s after pid {older.pid} of generation {older.gen} had"
                )))  # fmt: skip
    return found


def _gen(runner: Runner, other: Runner) -> str:
    """The runner's generation, where two runners differ in it (a removed Work and the one made anew)."""
    return f" of generation {runner.gen}" if runner.gen != other.gen else ""


def counter_rollbacks(log: StrategyLog) -> list[Violation]:
    """A runner restored a counter older than its predecessors' last delivered heartbeat.

    A heartbeat with counter n began only after the worker had the answer to
    n - 1 (a tick goes out only once the last one was answered), so state
    n - 1 was delivered. Only the heartbeat still running when a runner died
    may be lost: st_init must restore at least (highest counter begun) - 1.
    Only runners of the same generation count: a Work made anew starts from
    empty state.
    """
    found = []
    for i, newer in enumerate(log.runners):
        begun = [(s.n, r.pid) for r in log.runners[:i] if r.gen == newer.gen for s in r.sends if s.m < newer.started]
        if not begun or newer.restored < 0:
            continue
        top, pid = max(begun)
        if newer.restored < top - 1:
            found.append(Violation("counter-rollback", log.strategy, (
                f"pid {newer.pid} (worker pid {newer.ppid}) restored counter {newer.restored}, "
                f"but pid {pid} had already begun heartbeat {top} (so {top - 1} was delivered)"
            )))  # fmt: skip
    return found


#: How a runner ends when it hands over cleanly: an operator's stop or restart, its worker's drain.
#: Its st_exit ran and its last state was written under its still valid epoch. Not a move
#: (moved_away): the new epoch is raised first, so the heartbeat under way may lose its write.
CLEAN_EXITS = frozenset({"manual", "worker_exit"})


def lost_writes(log: StrategyLog) -> list[Violation]:
    """After a clean handover the next runner restored a counter other than the one its predecessor left.

    A runner that ran st_exit (for a stop, a restart or a drain) before
    its successor's st_init had every heartbeat's state written: the
    successor must restore exactly its last counter. Only a runner killed
    inside a heartbeat may lose that one write (``counter_rollbacks``).
    """
    found = []
    for i, newer in enumerate(log.runners):
        before = [r for r in log.runners[:i] if r.gen == newer.gen]
        if not before or newer.restored < 0:
            continue
        last = before[-1]
        clean = last.exit_reason in CLEAN_EXITS and last.exit_m is not None and last.exit_m <= newer.started
        if not clean or any(b.poisoned for b in last.beats):
            continue
        left = max([last.restored, *(b.n for b in last.beats)])
        if newer.restored != left:
            found.append(Violation("lost-write", log.strategy, (
                f"pid {newer.pid} (worker pid {newer.ppid}) restored counter {newer.restored}, but pid {last.pid} "
                f"(worker pid {last.ppid}) left {left} when it exited cleanly ({last.exit_reason})"
            )))  # fmt: skip
    return found


def duplicate_orders(log: StrategyLog) -> list[Violation]:
    """An orderLinkId accepted twice, or sent again when it was not a lost heartbeat's replay.

    A runner that died inside a heartbeat took that heartbeat's counter with
    it; its successor reuses the id and the exchange refuses it (110072):
    the idempotency working. Any other 110072 means the id was sent twice
    from state that should have moved on.
    """
    found = []
    accepted = collections.Counter(b.link for r in log.runners for b in r.beats if b.ok)
    for link, count in sorted(accepted.items()):
        if count > 1:
            pids = [r.pid for r in log.runners for b in r.beats if b.ok and b.link == link]
            found.append(Violation("duplicate-order", log.strategy, f"orderLinkId {link} accepted {count} times (pids {pids})"))
    for runner in log.runners:
        for beat in runner.beats:
            if beat.code == DUPLICATE_LINK_ID and not _is_replay(log, runner, beat) and not _raced_newer(log, runner, beat):
                found.append(Violation("duplicate-order", log.strategy, (
                    f"pid {runner.pid} got 110072 for its fresh orderLinkId {beat.link}: "
                    f"sent before by {_senders(log, runner, beat.link) or 'nobody it could see'}"
                )))  # fmt: skip
    return found


def _is_replay(log: StrategyLog, runner: Runner, beat: Beat) -> bool:
    return any(
        s.link == beat.link and s.m < beat.m0 and s.n == other.last_send
        for other in log.runners
        if other is not runner
        for s in other.sends
    )


def _raced_newer(log: StrategyLog, runner: Runner, beat: Beat) -> Runner | None:
    """A newer runner that had sent this id before the older runner's call reached the exchange."""
    return next(
        (other for other in log.runners if other.started > runner.started for s in other.sends if s.link == beat.link and s.m < beat.m),
        None,
    )


def _senders(log: StrategyLog, runner: Runner, link: str) -> str:
    return ", ".join(
        f"pid {r.pid} (its last heartbeat: {r.last_send})" for r in log.runners for s in r.sends if s.link == link and r is not runner
    )


def stale_orders(log: StrategyLog) -> list[Violation]:
    """An order from a runner reached the exchange after a newer runner of the strategy began: fencing failed.

    The newer runner's st_init means the assignment had moved on (a new
    epoch); from then on the older runner's worker holds no valid lease for
    the strategy and its calls must be refused. Compared on wall time: the
    exchange stamps the moment it ran the call.
    """
    found = []
    for i, newer in enumerate(log.runners):
        for older in log.runners[:i]:
            late = [b for b in older.beats if b.ok and b.xt is not None and b.xt > newer.started_wall]
            if late and late[0].xt is not None:
                found.append(Violation("stale-order", log.strategy, (
                    f"{len(late)} order(s) of pid {older.pid} (worker pid {older.ppid}) accepted after pid "
                    f"{newer.pid} (worker pid {newer.ppid}) ran st_init: {late[0].link} "
                    f"{late[0].xt - newer.started_wall:.3f}s after"
                )))  # fmt: skip
    for runner in log.runners:
        for beat in runner.beats:
            # Refused only because the newer runner had used the id first: the call still reached the exchange.
            if beat.code == DUPLICATE_LINK_ID and (raced := _raced_newer(log, runner, beat)) is not None:
                found.append(Violation("stale-order", log.strategy, (
                    f"the order {beat.link} of pid {runner.pid} (worker pid {runner.ppid}) reached the exchange after "
                    f"pid {raced.pid} (worker pid {raced.ppid}, st_init {beat.m - raced.started:.3f}s before its answer) "
                    f"had sent the same id: not fenced off, only refused as a duplicate (110072)"
                )))  # fmt: skip
    return found


def beats_while_stopped(log: StrategyLog, windows: Iterable[tuple[float, float]]) -> list[Violation]:
    """A heartbeat began while the strategy was stopped (between its stop taking effect and `start`)."""
    found = []
    for since, until in windows:
        during = [(r.pid, b) for r in log.runners for b in r.beats if since < b.m0 < until]
        if during:
            pid, beat = during[0]
            found.append(Violation("ran-while-stopped", log.strategy, (
                f"{len(during)} heartbeat(s) in the {until - since:.2f}s it was stopped: pid {pid} "
                f"counter {beat.n} began {beat.m0 - since:.3f}s after the stop took effect"
            )))  # fmt: skip
    return found


def stale_states(log: StrategyLog) -> list[Violation]:
    """A runner restored state another generation wrote: a removed Work's state outlived it.

    A remove deletes the Work's state; a late write from its runner (an older
    epoch of a Work that no longer exists) must not land in the state of the
    Work made anew under the same id.
    """
    return [
        Violation("stale-state", log.strategy, (
            f"pid {r.pid} (worker pid {r.ppid}) of generation {r.gen} restored state written by generation "
            f"{r.state_gen} (counter {r.restored})"
        ))  # fmt: skip
        for r in log.runners
        if r.state_gen is not None and r.state_gen != r.gen
    ]


def check_log(log: StrategyLog, stopped_windows: Iterable[tuple[float, float]] = ()) -> list[Violation]:
    """Every record-based invariant for one strategy."""
    return [
        *double_runners(log),
        *counter_rollbacks(log),
        *lost_writes(log),
        *duplicate_orders(log),
        *stale_orders(log),
        *beats_while_stopped(log, stopped_windows),
        *stale_states(log),
    ]
