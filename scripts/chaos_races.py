"""The chaos soak's operator races: commands an operator fires at a strategy while it runs.

- ``remove-assign``: `qlab strategy remove X`, then at once `qlab strategy
  assign FILE --id X` (pinned to another worker, or not) while X's st_exit may
  still run. The new Work is the strategy's next generation (``gen`` param):
  it starts from empty state, so its counter starts over and its order ids
  carry the generation; the removed Work's runners must all end within the
  bound, and none may begin a heartbeat once the new one has a runner.
- ``stop-start-restart``: `stop`, `start` and `restart` from two threads at
  once, in random order and gaps, then one final `stop` or `start` once both
  are back. That final intent must take effect within the bound: a stop, the
  Work's status `stopped` with none of its children left (nothing may beat
  until the soak starts it again); a start, a heartbeat.
- ``apply``: `qlab apply` of the soak's whole fleet with one strategy
  changed: its interval (a restart), its worker pin or its accounts (it is
  placed anew), or left out with ``--prune`` and added again (a remove and a
  new generation). Its plan must change exactly that strategy.

Every strategy's assign options live in a `Spec`, so a manifest lists the
fleet as it stands. While an apply's commands run no other operator command
does (its manifest speaks for every strategy: it would start one that a
stop-start holds stopped), and it waits for every other one to end.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from chaos_seen import Seen, plan_mismatch, took_effect
from chaos_cluster import CLI_TIMEOUT, has_marker, read_proc
from chaos_faults import Fault, Injector, Ran, Watch

#: The accounts a strategy is moved to and back: the second is one it never trades on, but a new
#: account list may not fit its worker, so the director places it anew.
MORE_ACCOUNTS = ("paper", "paper2")
MAX_ERRORS = 100_000  #: the faults make errors on purpose: a strategy must never fail for them
RACE_GAP = 0.3  #: seconds: the most a stop-start-restart thread waits before each of its commands
PIN_SHARE = 0.5  #: the share of remove-assigns and placement applies that pin a strategy elsewhere
SLOWER = 1.5  #: an interval apply switches a strategy between the soak's interval and this many times it


@dataclass(frozen=True)
class Spec:
    """What the soak asked of one strategy: its `qlab strategy assign` options, and the same as a manifest table."""

    file: Path
    interval: float
    heartbeat_timeout: float
    backoff: float
    helper: bool
    stop_timeout: float | None = None  #: None: this qlab's assign takes no --stop-timeout
    gen: int = 0  #: the Work's generation: one more each time the soak removes it and makes it anew
    worker: str | None = None  #: the worker it is pinned to
    accounts: tuple[str, ...] = ()  #: (): the file's ACCOUNTS
    account: str = "paper"  #: the account it trades on (chaos_strategy.py's ``account`` param)

    @property
    def params(self) -> dict[str, Any]:
        if self.account == "paper":
            return {"helper": self.helper, "gen": self.gen}
        return {"helper": self.helper, "gen": self.gen, "account": self.account}

    @property
    def own_accounts(self) -> tuple[str, ...]:
        """Its accounts as assigned: the file's ACCOUNTS for paper, else the account it trades on."""
        return () if self.account == "paper" else (self.account,)

    def more_accounts(self) -> tuple[str, ...]:
        """Its accounts after an apply that changes them: one more, or back to its own."""
        return self.own_accounts if self.accounts != self.own_accounts else (self.account, MORE_ACCOUNTS[1])

    def assign_args(self, sid: str) -> tuple[str, ...]:
        args = [
            "strategy", "assign", str(self.file), "--id", sid, "--interval", str(self.interval),
            "--heartbeat-timeout", str(self.heartbeat_timeout), "--backoff", str(self.backoff),
            "--max-errors", str(MAX_ERRORS), "--params", json.dumps(self.params),
        ]  # fmt: skip
        if self.stop_timeout is not None:
            args += ["--stop-timeout", str(self.stop_timeout)]
        if self.worker is not None:
            args += ["--worker", self.worker]
        for account in self.accounts:
            args += ["--account", account]
        return tuple(args)

    def table(self) -> dict[str, Any]:
        """Its manifest table: the StrategySpec its assign wrote (the setup checks this with a dry run)."""
        table: dict[str, Any] = {
            "file": str(self.file), "params": self.params, "interval": self.interval,
            "heartbeat_timeout": self.heartbeat_timeout, "backoff": self.backoff, "max_errors": MAX_ERRORS,
        }  # fmt: skip
        if self.stop_timeout is not None:
            table["stop_timeout"] = self.stop_timeout
        if self.worker is not None:
            table["worker"] = self.worker
        if self.accounts:
            table["accounts"] = list(self.accounts)
        return table


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def manifest(specs: dict[str, Spec]) -> str:
    """A fleet manifest (`qlab apply`) of these strategies, one table each."""
    lines = []
    for sid, spec in specs.items():
        lines.append(f"[strategies.{sid}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in spec.table().items()]
        lines.append("")
    return "\n".join(lines)


# ---- the races in flight ----


@dataclass
class Removal:
    """A removed Work's runners: each must have ended within the bound of the removal's return."""

    command: str
    since: float  #: monotonic: the removal returned
    pids: frozenset[int]
    over: bool = False


@dataclass(kw_only=True)
class RaceOp:
    """One race on one strategy, stepped by the soak's loop until it is over."""

    strategy: str
    fault: Fault
    commanding: bool = True  #: a command of it is still under way
    removal: Removal | None = None

    def over(self) -> bool:
        """Its commands are back, a removal's runners gone, and the strategy beat again (or was reported
        late): until then no other fault may take the strategy over and end its watch unmeasured."""
        waiting = any(w.open() and not w.overdue for w in self.fault.watches)
        return not self.commanding and (self.removal is None or self.removal.over) and not waiting


@dataclass(kw_only=True)
class Recreate(RaceOp):
    """A remove-assign, or an apply: the strategy ends up as ``new``."""

    new: Spec
    old: frozenset[int]  #: its runners before: the one that comes back must be another


@dataclass(kw_only=True)
class StopRace(RaceOp):
    """racing (two threads) -> final -> settling (a final stop) -> holding -> starting; a final start ends at final."""

    final: str  #: "stop" or "start": the operator's last word
    hold: float  #: seconds to keep it stopped once the final stop took effect
    phase: str = "racing"
    threads_left: int = 2
    stopped: float = 0.0  #: monotonic: the final stop returned
    seen: list[Seen] = field(default_factory=list)
    effect: float | None = None  #: monotonic: the final stop took effect
    start_at: float = 0.0


class Races:
    """The three operator races: their handlers for the injector, and their steps in the soak's loop."""

    def __init__(self, injector: Injector, specs: dict[str, Spec], home: Path, interval: float, whereabouts: Callable[[str], str]) -> None:
        self.inj = injector
        self.specs = specs
        self.manifests = home / "manifests"
        self.interval = interval
        self.whereabouts = whereabouts
        self.ops: dict[str, RaceOp] = {}
        self._applies = itertools.count(1)

    @property
    def handlers(self) -> dict[str, Callable[[float], Fault | None]]:
        return {"remove-assign": self.remove_assign, "stop-start-restart": self.stop_start_restart, "apply": self.apply}

    def step(self, now: float) -> None:
        for op in list(self.ops.values()):
            if isinstance(op, StopRace):
                self._step_stop(op, now)
            if op.removal is not None and not op.removal.over:
                self._check_removal(op, op.removal, now)
            if op.over():
                self._release(op)

    def _claim(self, op: RaceOp) -> None:
        """The race has the strategy to itself from now on; watches of earlier faults it interrupts end."""
        self.ops[op.strategy] = op
        self.inj.claims[op.strategy] = op.fault.kind
        self.inj.recovery.supersede(op.strategy)

    def _release(self, op: RaceOp) -> None:
        del self.ops[op.strategy]
        del self.inj.claims[op.strategy]

    # ---- remove, then assign ----

    def remove_assign(self, now: float) -> Fault | None:
        if (sid := self.inj.pick_for_command(now, prefer=frozenset(self.inj.pins))) is None:
            return None
        spec = self.specs[sid]
        new = dataclasses.replace(spec, gen=spec.gen + 1, worker=self._pin_choice(sid, spec))
        where = f", pinned to {new.worker}" if new.worker else (f", no longer pinned to {spec.worker}" if spec.worker else "")
        fault = self.inj.fault("remove-assign", now, f"{sid} as generation {new.gen}{where}", [])
        op = Recreate(strategy=sid, fault=fault, new=new, old=self._pids(sid))
        self._claim(op)

        def done(ran: list[Ran]) -> None:
            remove, assign = ran
            if self.inj.checked(fault, sid, remove):
                op.removal = Removal(remove.words(), remove.returned, op.old)
            if self.inj.checked(fault, sid, assign):
                self._recreated(op, assign)
            elif remove.ok:  # gone and not back: the soak needs it back to go on
                self._until_ok(fault, sid, new.assign_args(sid), functools.partial(self._recreated, op))
            else:
                op.commanding = False  # neither landed: the Work is as it was

        self.inj.commands([(0.0, ("strategy", "remove", sid)), (0.0, new.assign_args(sid))], done)
        return fault

    def _recreated(self, op: Recreate, ran: Ran | None) -> None:
        """The strategy is ``op.new`` now (``ran``: the command that made it so; None: none did)."""
        op.commanding = False
        if self.inj.exclusive == op.strategy:
            self.inj.exclusive = None  # the fleet is as its manifest said: other commands may go on
        if ran is None:
            return
        self.specs[op.strategy] = op.new
        if op.new.worker is not None:
            self.inj.pins[op.strategy] = op.new.worker
        else:
            self.inj.pins.pop(op.strategy, None)
        op.fault.watches.append(Watch(op.strategy, ran.returned, op.old, ran.returned))

    def _check_removal(self, op: RaceOp, removal: Removal, now: float) -> None:
        """Every runner the removed Work had must be gone within the bound of the removal's return."""
        alive = frozenset(pid for pid in removal.pids if self.inj.procs.same_process(pid))
        if took_effect([Seen(now, now, None, alive)], removal.since, None) is not None:
            removal.over = True
        elif now > removal.since + self.inj.timings.bound:
            removal.over = True
            self.inj.report("stop-lost", op.strategy, (
                f"`{removal.command}` in {op.fault.kind} at +{op.fault.at - self.inj.recovery.t0:.2f}s: pid(s) "
                f"{sorted(alive)} of the removed Work still running {self.inj.timings.bound:.1f}s after it returned"
                f"{self.whereabouts(op.strategy)}"
            ))  # fmt: skip

    # ---- stop, start, restart from two threads ----

    def stop_start_restart(self, now: float) -> Fault | None:
        if (sid := self.inj.pick_for_command(now)) is None:
            return None
        rng = self.inj.rng
        threads = [
            [(rng.uniform(0.0, RACE_GAP), rng.choice(("stop", "start", "restart"))) for _ in range(rng.randint(1, 3))]
            for _ in range(2)
        ]
        final = rng.choice(("stop", "start"))
        race = " | ".join(",".join(word for _, word in thread) for thread in threads)
        fault = self.inj.fault("stop-start-restart", now, f"{sid} ({race}; then {final})", [])
        op = StopRace(strategy=sid, fault=fault, final=final, hold=rng.uniform(0.3, 1.0))
        self._claim(op)
        for thread in threads:
            self.inj.commands([(gap, ("strategy", word, sid)) for gap, word in thread], functools.partial(self._raced, op))
        return fault

    def _raced(self, op: StopRace, ran: list[Ran]) -> None:
        for command in ran:
            self.inj.checked(op.fault, op.strategy, command)
        op.threads_left -= 1
        if op.threads_left == 0:  # both threads back: the operator's last word
            op.phase = "final"
            self.inj.background(functools.partial(self._finally, op), "strategy", op.final, op.strategy)

    def _finally(self, op: StopRace, ran: Ran) -> None:
        if op.final == "start":
            if self.inj.checked(op.fault, op.strategy, ran):
                self._started(op, None, ran)
            else:
                self._start(op)
        elif self.inj.checked(op.fault, op.strategy, ran):
            op.phase, op.stopped = "settling", ran.returned
        else:
            op.phase, op.start_at = "holding", time.monotonic()  # it may or may not have stopped: run it again

    def _step_stop(self, op: StopRace, now: float) -> None:
        if op.phase == "settling":
            self._settle(op, now)
        if op.phase == "holding" and now >= op.start_at:
            self._start(op)

    def _settle(self, op: StopRace, now: float) -> None:
        """The final stop took effect once a status begun after it says stopped and none of the Work's children is left."""
        self.inj.status.hurry()
        look = self.inj.status.look()
        if look is not None and look[0] >= op.stopped and (not op.seen or look[1] > op.seen[-1].returned):
            began, returned, data = look
            entry = next((e for e in data.get("strategies", []) if e["id"] == op.strategy), None)
            op.seen.append(Seen(began, returned, entry["status"] if entry else "absent", self._alive(op.strategy, entry)))
        if (effect := took_effect(op.seen, op.stopped, "stopped")) is not None:
            op.effect, op.phase, op.start_at = effect, "holding", now + op.hold
            self.inj.say(f"  {op.fault.kind} {op.strategy}: the final stop settled {effect - op.stopped:.2f}s after it returned")
        elif self._stop_late(op, now):
            last = op.seen[-1] if op.seen else None
            said = f"status {last.status}, pids alive {sorted(last.alive)}" if last else "no status since"
            self.inj.report("stop-lost", op.strategy, (
                f"the final `qlab strategy stop` of {op.fault.kind} at +{op.fault.at - self.inj.recovery.t0:.2f}s did not "
                f"settle within {self.inj.timings.bound:.1f}s of its return: {said}{self.whereabouts(op.strategy)}"
            ))  # fmt: skip
            op.phase, op.start_at = "holding", now

    def _stop_late(self, op: StopRace, now: float) -> bool:
        """Known late: a status begun after the bound still showed it unsettled (a status command can
        take seconds on a busy machine, so the time it returned alone would blame the cluster for
        it), or no status came back at all for as long as a command may take."""
        bound = op.stopped + self.inj.timings.bound
        return bool(op.seen) and op.seen[-1].began > bound or now > bound + CLI_TIMEOUT

    def _alive(self, sid: str, entry: dict[str, Any] | None) -> frozenset[int]:
        """The strategy's children alive now: every runner it recorded, and the pid its status names (a child
        that has not reached st_init yet has written no record)."""
        alive = {r.pid for r in self.inj.logs[sid].runners if self.inj.procs.same_process(r.pid)}
        pid = entry.get("pid") if entry else None
        if isinstance(pid, int) and (proc := read_proc(pid)) is not None and proc.state != "Z" and has_marker(pid, self.inj.cluster.marker):
            alive.add(pid)
        return frozenset(alive)

    def _start(self, op: StopRace) -> None:
        op.phase = "starting"
        self._until_ok(op.fault, op.strategy, ("strategy", "start", op.strategy), functools.partial(self._started, op, time.monotonic()))

    def _started(self, op: StopRace, asked: float | None, ran: Ran | None) -> None:
        """Running again as the operator's last word wants (``asked``: when the soak's own start was sent)."""
        if op.effect is not None and asked is not None:
            self.inj.stopped_windows[op.strategy].append((op.effect, asked))
        if ran is not None:
            op.fault.watches.append(Watch(op.strategy, ran.returned, frozenset(), ran.returned))
        op.phase, op.commanding = "done", False

    # ---- qlab apply ----

    def apply(self, now: float) -> Fault | None:
        if self.inj.ops or any(op.commanding for op in self.ops.values()) or self.inj.exclusive is not None:
            return None  # its manifest speaks for every strategy: none may be in another command's hands
        if (sid := self.inj.pick_for_command(now, prefer=frozenset(self.inj.pins))) is None:
            return None
        spec = self.specs[sid]
        new, change = self._changed(sid, spec)
        prune = change == "pruned and added again"
        fault = self.inj.fault("apply", now, f"{sid} {change}", [])
        op = Recreate(strategy=sid, fault=fault, new=new, old=self._pids(sid))
        self._claim(op)
        self.inj.exclusive = sid
        n = next(self._applies)
        full = self._write(f"apply-{n}.toml", {**self.specs, sid: new})
        steps: list[tuple[float, Sequence[str]]] = [(0.0, ("apply", str(full)))]
        wanted = [{("update", sid)}]
        if prune:
            pruned = self._write(f"apply-{n}-pruned.toml", {k: v for k, v in self.specs.items() if k != sid})
            gap = self.inj.rng.choice((0.0, self.inj.rng.uniform(0.2, 1.0)))
            steps = [(0.0, ("apply", "--prune", str(pruned))), (gap, ("apply", str(full)))]
            wanted = [{("remove", sid)}, {("add", sid)}]

        def done(ran: list[Ran]) -> None:
            for command, expected in zip(ran, wanted):
                if not self.inj.checked(fault, sid, command):
                    break  # what comes after it planned from a store it did not expect
                if command.result is not None and (wrong := plan_mismatch(command.result.stdout, expected)):
                    self.inj.report("apply-plan", sid, f"`{command.words()}` in apply {fault.target}: {wrong}")
            if prune and ran[0].ok:
                op.removal = Removal(ran[0].words(), ran[0].returned, op.old)
            if all(command.ok for command in ran):
                self._recreated(op, ran[-1])
            else:  # the full manifest brings the store to the intended fleet, whatever landed
                self._until_ok(fault, sid, ("apply", str(full)), functools.partial(self._recreated, op))

        self.inj.commands(steps, done)
        return fault

    def _changed(self, sid: str, spec: Spec) -> tuple[Spec, str]:
        """The strategy's spec with one thing changed, and what, in words (a pinned one: its pin taken away)."""
        rng = self.inj.rng
        kind = rng.choice(("interval", "placement", "accounts", "prune"))
        if spec.worker is not None:
            return dataclasses.replace(spec, worker=None), f"no longer pinned to {spec.worker}"
        if kind == "interval":
            other = self.interval if spec.interval != self.interval else round(self.interval * SLOWER, 6)
            return dataclasses.replace(spec, interval=other), f"interval {spec.interval:g} -> {other:g}"
        if kind == "placement" and (pin := self._pin_choice(sid, spec, share=1.0)) is not None:
            return dataclasses.replace(spec, worker=pin), f"pinned to {pin}"
        if kind == "prune":
            return dataclasses.replace(spec, gen=spec.gen + 1), "pruned and added again"
        accounts = spec.more_accounts()
        return dataclasses.replace(spec, accounts=accounts), f"accounts -> {','.join(accounts) or 'its own'}"

    def _write(self, name: str, specs: dict[str, Spec]) -> Path:
        self.manifests.mkdir(exist_ok=True)
        path = self.manifests / name
        path.write_text(manifest(specs))
        return path

    def check_manifest(self) -> str | None:
        """Why an apply of the fleet as the soak knows it would change anything; None when it would not.

        Every apply fault counts on this: a manifest that differs from what the assigns wrote in
        any field would restart the whole fleet at the first apply.
        """
        path = self._write("fleet.toml", self.specs)
        ran = self.inj.cluster.run("apply", "--dry-run", str(path))
        if ran is None or ran.returncode != 0:
            return f"`qlab apply --dry-run {path}` failed: {'timed out' if ran is None else ran.stderr.strip()[:300]}"
        return plan_mismatch(ran.stdout, set())

    # ---- helpers ----

    def _pids(self, sid: str) -> frozenset[int]:
        return frozenset(r.pid for r in self.inj.logs[sid].runners)

    def _pin_choice(self, sid: str, spec: Spec, share: float = PIN_SHARE) -> str | None:
        """A live worker other than the one running the strategy, for ``share`` of the calls; None: no pin.

        One pin at a time at most, and the next remove-assign or apply picks the pinned strategy
        first and unpins it: worker faults spare a pin's worker (see Injector._pick_worker), so
        pins must stay few and short.
        """
        if spec.worker is not None or any(s != sid for s in self.inj.pins) or self.inj.rng.random() >= share:
            return None
        runner = self.inj.running(sid)
        workers = [
            m.name for m in self.inj.cluster.procs.values()
            if m.is_worker and m.alive() and not m.stopped and (runner is None or m.pid != runner.ppid)
        ]  # fmt: skip
        return self.inj.rng.choice(sorted(workers)) if workers else None

    def _until_ok(self, fault: Fault, sid: str, args: Sequence[str], then: Callable[[Ran | None], None], tries: int = 2) -> None:
        """Run a command that puts the strategy back as intended, once more if it fails (each failure
        is reported); ``then`` gets the one that succeeded, or None."""

        def done(ran: Ran) -> None:
            if self.inj.checked(fault, sid, ran):
                then(ran)
            elif tries > 1:
                self._until_ok(fault, sid, args, then, tries - 1)
            else:
                then(None)

        self.inj.background(done, *args)
