"""One strategy's supervision as a pure state machine.

``step(machine, event, now) -> (machine, actions)``: no I/O, no clock of its
own. ``now`` is the worker's monotonic clock (a wall-clock step must not
silence ticks or hang detection). The StrategyManager turns what happens to a
child (its messages, its exit, time passing, the store's wishes) into events,
and performs the actions this returns (fork, send, kill, record).

States, each carrying its own data:

    Waiting(until, why)   no child; start one at ``until`` (first start, or backoff after an error)
    Spawning(..)          a Spawn is under way: accounts reconciled, a turn to fork, the fork
    Starting(child)       forked; Init is sent on Hello; waiting for Ready (st_init)
    Running(child)        ticks every ``interval``, one in flight at most
    Stopping(child, ..)   a Stop is wanted; waiting for the child to exit, killed at ``deadline``
    Done(outcome, reason) nothing more to do here; the manager settles the Work and forgets it

A wanted stop is a fact kept on the Machine (``stop``) until the child is
gone: it is sent as soon as the child can take it (on Hello when it has not
connected yet), sent again on Ready, and Ready never turns Stopping back into
Running.

A child waiting on the answer to one of its exchange calls is not hung: the
worker owes it that answer (a lost order reply is looked for until no copy of
the order can land, which may take longer than the hang timeout), so hang
detection counts only the child's own time since its last heartbeat, up to
``CALL_PATIENCE`` seconds of waiting on one answer.

Beside the state, what holds across a strategy's incarnations: its errors,
the stop it wants, whether that stop is the operator's (a start while it runs
cancels it), and whether it ran while this worker's lease ran out (then none
of its exchange calls may leave any more, whatever lease comes next).

Over 400 lines: every state's transitions stand beside the others, so a child's supervision reads in one place.
"""

from __future__ import annotations

import msgspec

from quantlab.store.records import EventKind, ExitReason, StrategySpec, StrategyStatus
from quantlab.worker.machine_events import (  # re-exported: callers write m.Due, m.Spawn...
    Action,
    Beat,
    Beaten,
    CallAnswered,
    CallAsked,
    Charge,
    Confirmed,
    Counted,
    Due,
    Event,
    Fatal,
    Fault,
    Gone,
    HelloCame,
    InitSent,
    InitWaits,
    Kill,
    LeaseLapsed,
    Mark,
    Note,
    Outcome,
    Publish,
    ReadyCame,
    ReconcileEnded,
    ReconcileStarted,
    Reported,
    RestartWanted,
    SendInit,
    SendStop,
    SendTick,
    Settle,
    Spawn,
    Spawned,
    SpawnFailed,
    StartWanted,
    StopWanted,
    TickRefused,
)
from quantlab.worker.rules import STABLE_AFTER, backoff_delay, next_tick, second_tick

#: Stop reasons under which the Work is no longer this incarnation's: no state writes, no orders, no st_init.
MOVED_AWAY = ("reassigned", "lease_lost", "removed", "moved_away")
#: Seconds a child may wait on the answer to its exchange calls before it counts as hung all the same: far
#: past what the API pool takes to answer any call (a turn, the request's attempts, a lost order's search).
CALL_PATIENCE = 120.0


class Supervision(msgspec.Struct, frozen=True, kw_only=True):
    """The StrategySpec's supervision settings the machine needs (seconds and counts).

    Not risk limits (quantlab/exchange/risk.py): those guard a strategy's orders, these its process.
    """

    interval: float = 1.0
    heartbeat_timeout: float = 60.0
    stop_timeout: float = 10.0
    backoff: float = 1.0
    backoff_max: float = 60.0
    max_errors: int = 5
    error_window: float = 600.0
    #: Where in each interval the ticks after a child's first fall (rules.tick_phase); None: its start.
    phase: float | None = None

    @classmethod
    def of(cls, spec: StrategySpec, phase: float | None = None) -> "Supervision":
        return cls(
            phase=phase,
            interval=spec.interval,
            heartbeat_timeout=spec.heartbeat_timeout,
            stop_timeout=spec.stop_timeout,
            backoff=spec.backoff,
            backoff_max=spec.backoff_max,
            max_errors=spec.max_errors,
            error_window=spec.error_window,
        )


class Child(msgspec.Struct, frozen=True, kw_only=True):
    """One incarnation's process, as far as the machine knows it."""

    pid: int
    since: float  #: spawned at (monotonic)
    last_beat: float  #: the last completed heartbeat, else ``since``: hang detection counts from here
    calls: int = 0  #: its exchange calls the worker has not answered yet
    waiting_since: float | None = None  #: since when it waits on an answer (while ``calls``)
    waited: float = 0.0  #: seconds since ``last_beat`` it spent waiting on answers, not counted as hung
    ready_at: float | None = None  #: st_init returned
    greeted: bool = False  #: Hello came: the child is connected, and its Init was sent or waits (``init_waits``)
    init_waits: bool = False  #: its Init could not be built yet (the store failed): the manager's pass tries again
    beats: int = 0
    seq: int = 0  #: the last tick sent
    in_flight: bool = False  #: that tick is not answered yet
    next_tick: float = 0.0
    error: Charge | None = None  #: the child reported an Error before exiting
    exited: ExitReason | None = None  #: the child confirmed st_exit (Exited)
    killed: Charge | None = None  #: why the worker killed it


# ---- states ----


class Waiting(msgspec.Struct, frozen=True, tag="waiting"):
    until: float
    why: str = ""  #: after an error: what happened and when it restarts


class Spawning(msgspec.Struct, frozen=True, tag="spawning"):
    reconciling: bool = False  #: its accounts are being reconciled; the fork waits for the result
    reconcile_failed: bool = False  #: that failed: the manager's pass tries again, the child not forked yet


class Starting(msgspec.Struct, frozen=True, tag="starting"):
    child: Child


class Running(msgspec.Struct, frozen=True, tag="running"):
    child: Child


class Stopping(msgspec.Struct, frozen=True, tag="stopping"):
    child: Child
    deadline: float  #: killed if still there then


class Done(msgspec.Struct, frozen=True, tag="done"):
    outcome: Outcome
    reason: str


State = Waiting | Spawning | Starting | Running | Stopping | Done
Live = Starting | Running | Stopping


class Machine(msgspec.Struct, frozen=True, kw_only=True):
    supervision: Supervision
    state: State
    incarnation: int = 0
    errors: tuple[float, ...] = ()  #: times of the errors within the window (monotonic)
    consecutive: int = 0  #: errors since the last stable run: the backoff exponent
    overruns: int = 0
    stop: ExitReason | None = None  #: the wanted stop, kept until the child is gone
    by_strategy: bool = False  #: that stop came from ctx.stop()
    then_start: bool = False  #: start again once stopped (`qlab strategy restart`, or a start during the stop)
    fatal: str | None = None  #: the strategy cannot run (its state is unreadable): fail once the child is gone
    by_operator: bool = False  #: the stop came from the operator's desired=stopped: a StartWanted cancels it
    fenced: bool = False  #: it ran while this worker's lease ran out: no exchange call of its may leave


Step = tuple[Machine, list[Action]]


def new_machine(supervision: Supervision, now: float) -> Machine:
    return Machine(supervision=supervision, state=Waiting(until=now))


# ---- what people see, and when something happens next ----


def status(machine: Machine) -> tuple[StrategyStatus, str]:
    """The status and reason the store shows for this state."""
    state = machine.state
    if isinstance(state, Waiting):
        return ("error", state.why) if state.why else ("starting", "")
    if isinstance(state, (Spawning, Starting)):
        return "starting", ""
    if isinstance(state, Running):
        return "running", ""
    if isinstance(state, Stopping):
        return "stopping", machine.stop.message if machine.stop else ""
    return ("failed" if state.outcome == "failed" else "stopped"), state.reason


def deadline(machine: Machine) -> float | None:
    """The next moment a Due event can change something; None when only other events can."""
    state = machine.state
    if isinstance(state, Waiting):
        return state.until
    if isinstance(state, (Starting, Running)):
        child = state.child
        times = [] if child.killed else [_hung_at(child, machine.supervision.heartbeat_timeout)]
        if isinstance(state, Running):
            times.append(child.next_tick)
        return min(times) if times else None
    if isinstance(state, Stopping):
        return None if state.child.killed else state.deadline
    return None


def alive(machine: Machine) -> Child | None:
    state = machine.state
    return state.child if isinstance(state, (Starting, Running, Stopping)) else None


def moved_away(machine: Machine) -> bool:
    """The Work is no longer this worker's at this epoch: its writes and orders are fenced off."""
    return machine.stop is not None and machine.stop.type in MOVED_AWAY


def fenced_off(machine: Machine) -> bool:
    """No exchange call of its may leave: the Work moved away, or it ran while the lease ran out."""
    return machine.fenced or moved_away(machine)


def operator_stop(machine: Machine) -> bool:
    """The stop under way is the operator's: the manager asks for a start when desired turns running."""
    return machine.by_operator


def init_waits(machine: Machine) -> bool:
    """The child waits for an Init the store could not give yet."""
    child = alive(machine)
    return child is not None and child.init_waits


def reconciling(machine: Machine) -> bool:
    return isinstance(machine.state, Spawning) and machine.state.reconciling


def reconcile_failed(machine: Machine) -> bool:
    return isinstance(machine.state, Spawning) and machine.state.reconcile_failed


# ---- the transition function ----


def step(machine: Machine, event: Event, now: float) -> Step:
    state = machine.state
    if isinstance(state, Done):
        return machine, []
    if isinstance(event, StopWanted):
        machine = _replace(machine, by_operator=True) if event.by_operator else machine
        return _stop_wanted(machine, event.reason, now)
    if isinstance(event, StartWanted):
        return _start_wanted(machine)
    if isinstance(event, LeaseLapsed):
        return _replace(machine, fenced=True), []
    if isinstance(event, RestartWanted):
        return _restart_wanted(machine, now)
    if isinstance(event, Fatal):
        return _fatal(machine, event.message, now)
    if isinstance(state, Waiting):
        return _waiting(machine, state, event, now)
    if isinstance(state, Spawning):
        return _spawning(machine, event, now)
    return _live(machine, state, event, now)


def _waiting(machine: Machine, state: Waiting, event: Event, now: float) -> Step:
    if isinstance(event, Due) and now >= state.until:
        incarnation = machine.incarnation + 1
        return _replace(machine, state=Spawning(), incarnation=incarnation), [Spawn(incarnation)]
    return machine, []


def _spawning(machine: Machine, event: Event, now: float) -> Step:
    if isinstance(event, ReconcileStarted):
        return _replace(machine, state=Spawning(reconciling=True)), []
    if isinstance(event, ReconcileEnded):
        return _replace(machine, state=Spawning(reconcile_failed=not event.ok)), []
    if isinstance(event, Spawned):
        child = Child(pid=event.pid, since=now, last_beat=now)
        return _replace(machine, state=Starting(child)), [Publish()]
    if isinstance(event, SpawnFailed):
        return _count_error(machine, Charge(EventKind.ERROR, f"spawn failed: {event.error}"), now, event.rand)
    return machine, []


def _live(machine: Machine, state: Live, event: Event, now: float) -> Step:
    child = state.child
    if isinstance(event, Gone):
        return _gone(machine, child, event, now)
    if isinstance(event, Due):
        return _due(machine, state, now)
    if isinstance(event, HelloCame):
        return _hello(machine, state)
    if isinstance(event, ReadyCame):
        if isinstance(state, Starting):
            running = Running(msgspec.structs.replace(child, ready_at=now, next_tick=now))
            machine, actions = _tick(_replace(machine, state=running), running, now)
            return _on_phase(machine, now), [Note(EventKind.STARTED, f"pid {child.pid}"), Publish(), *actions]
        if isinstance(state, Stopping) and machine.stop is not None:
            return machine, [SendStop(machine.stop)]  # again: a stop is never lost to a race with st_init
        return machine, []
    if isinstance(event, Beat):
        return _beat(machine, state, event.seq, now)
    if isinstance(event, TickRefused):
        if child.in_flight and event.seq == child.seq:
            state = _with_child(state, msgspec.structs.replace(child, in_flight=False))
            return _replace(machine, state=state), [Mark(f"tick {event.seq} refused by the child: lease ran out")]
        return machine, []
    if isinstance(event, (CallAsked, CallAnswered)):
        return _replace(machine, state=_with_child(state, _waits(child, isinstance(event, CallAsked), now))), []
    if isinstance(event, (InitWaits, InitSent)):
        waits = msgspec.structs.replace(child, init_waits=isinstance(event, InitWaits))
        return _replace(machine, state=_with_child(state, waits)), []
    if isinstance(event, Reported):
        error = Charge(EventKind.ERROR, event.message, event.traceback)
        return _replace(machine, state=_with_child(state, msgspec.structs.replace(child, error=error))), []
    if isinstance(event, Confirmed):
        return _confirmed(machine, state, event.reason, now)
    if isinstance(event, Fault):
        return _kill(machine, state, event.charge)
    return machine, []


def _due(machine: Machine, state: Live, now: float) -> Step:
    child = state.child
    if child.killed is not None:
        return machine, []
    settings = machine.supervision
    if isinstance(state, Stopping):
        if now >= state.deadline:
            return _kill(machine, state, Charge(EventKind.STOPPED, f"st_exit took longer than {settings.stop_timeout:g}s"))
        return machine, []
    if child.calls and child.waiting_since is not None and now - child.waiting_since > CALL_PATIENCE:
        return _kill(machine, state, Charge(EventKind.HEARTBEAT_TIMEOUT,
                                            f"hung: no answer to its exchange call for {CALL_PATIENCE:g}s"))
    if not child.calls and now - child.last_beat - child.waited > settings.heartbeat_timeout:
        return _kill(machine, state, Charge(EventKind.HEARTBEAT_TIMEOUT, f"hung: no heartbeat for {settings.heartbeat_timeout:g}s"))
    if isinstance(state, Running):
        return _tick(machine, state, now)
    return machine, []


def _tick(machine: Machine, state: Running, now: float) -> Step:
    """A tick goes out only once the last one was answered; one that comes due meanwhile is an overrun."""
    child = state.child
    if now < child.next_tick:
        return machine, []
    following = next_tick(child.next_tick, machine.supervision.interval, now)
    if child.in_flight:
        child = msgspec.structs.replace(child, next_tick=following)
        return _replace(machine, state=Running(child), overruns=machine.overruns + 1), []
    child = msgspec.structs.replace(child, seq=child.seq + 1, in_flight=True, next_tick=following)
    return _replace(machine, state=Running(child)), [SendTick(child.seq, machine.overruns)]


def _on_phase(machine: Machine, first: float) -> Machine:
    """The ticks after a child's first fall on its strategy's phase, when it has one."""
    phase = machine.supervision.phase
    if phase is None or not isinstance(machine.state, Running):
        return machine
    child = msgspec.structs.replace(machine.state.child, next_tick=second_tick(first, machine.supervision.interval, phase))
    return _replace(machine, state=Running(child))


def _hello(machine: Machine, state: Live) -> Step:
    child = state.child
    if child.greeted:
        return machine, []
    machine = _replace(machine, state=_with_child(state, msgspec.structs.replace(child, greeted=True)))
    if not isinstance(state, Stopping) or machine.stop is None:
        return machine, [SendInit()]
    if moved_away(machine):
        return machine, [SendStop(machine.stop)]  # not ours any more: no st_init, no st_exit
    return machine, [SendInit(), SendStop(machine.stop)]  # st_init, then st_exit: it may clean up


def _beat(machine: Machine, state: Live, seq: int, now: float) -> Step:
    child = state.child
    if not child.in_flight or seq != child.seq:
        return machine, []  # not the tick in flight: a stale answer
    first = child.beats == 0
    child = msgspec.structs.replace(child, in_flight=False, last_beat=now, beats=child.beats + 1, waited=0.0,
                                    waiting_since=now if child.calls else None)
    stable = child.ready_at is not None and now - child.ready_at >= STABLE_AFTER
    machine = _replace(machine, state=_with_child(state, child), consecutive=0 if stable else machine.consecutive)
    return machine, [Beaten(first)]


def _waits(child: Child, asked: bool, now: float) -> Child:
    """The child after one of its exchange calls was sent to the worker (``asked``) or answered."""
    if asked:
        return msgspec.structs.replace(child, calls=child.calls + 1,
                                       waiting_since=now if not child.calls else child.waiting_since)
    if not child.calls:
        return child
    calls = child.calls - 1
    if calls or child.waiting_since is None:
        return msgspec.structs.replace(child, calls=calls)
    waited = child.waited + now - child.waiting_since
    return msgspec.structs.replace(child, calls=0, waiting_since=None, waited=waited)


def _hung_at(child: Child, timeout: float) -> float:
    """When the child counts as hung if nothing happens before: its own time past ``timeout``, or
    a wait on the worker's answer past CALL_PATIENCE."""
    if child.calls and child.waiting_since is not None:
        return child.waiting_since + CALL_PATIENCE
    return child.last_beat + child.waited + timeout


def _confirmed(machine: Machine, state: Live, reason: ExitReason, now: float) -> Step:
    child = msgspec.structs.replace(state.child, exited=reason)
    if isinstance(state, Stopping):
        return _replace(machine, state=Stopping(child, state.deadline)), []
    # Not asked to stop: the strategy called ctx.stop(); it exits by itself now.
    stopping = Stopping(child, now + machine.supervision.stop_timeout)
    return _replace(machine, state=stopping, stop=reason, by_strategy=True), [Publish()]


def _kill(machine: Machine, state: Live, charge: Charge) -> Step:
    child = state.child
    if child.killed is not None:
        return machine, []
    state = _with_child(state, msgspec.structs.replace(child, killed=charge))
    return _replace(machine, state=state), [Kill(child.pid, charge.message)]


def _gone(machine: Machine, child: Child, event: Gone, now: float) -> Step:
    if machine.fatal is not None:
        return _done(machine, "failed", machine.fatal)
    if machine.stop is not None:
        if machine.then_start:
            return _start_afresh(machine, now)
        return _done(machine, _outcome(machine.stop), machine.stop.message or "stopped")
    charge = child.killed or child.error or Charge(EventKind.CRASHED, f"crashed: {event.how}")
    return _count_error(machine, charge, now, event.rand)


def _stop_wanted(machine: Machine, reason: ExitReason, now: float) -> Step:
    if machine.stop is not None:
        if reason.type in MOVED_AWAY and not moved_away(machine):
            # Whatever stop was under way, the Work is someone else's now: fence it off.
            return _replace(machine, stop=reason, then_start=False, by_strategy=False), []
        return _replace(machine, then_start=False) if machine.then_start else machine, []
    machine = _replace(machine, stop=reason, then_start=False)
    state = machine.state
    if isinstance(state, (Waiting, Spawning)):
        return _done(machine, _outcome(reason), reason.message or "stopped")
    assert isinstance(state, (Starting, Running))
    machine = _replace(machine, state=Stopping(state.child, now + machine.supervision.stop_timeout))
    # Before Hello the child cannot take it yet: it goes out on Hello.
    actions: list[Action] = [SendStop(reason)] if state.child.greeted else []
    return machine, [*actions, Publish()]


def _start_wanted(machine: Machine) -> Step:
    """Only the operator's stop is cancelled: not a ctx.stop(), a move, a lapse or the worker's exit."""
    if not machine.by_operator:
        return machine, []
    machine = _replace(machine, by_operator=False)
    stop = machine.stop
    wanted = isinstance(machine.state, Stopping) and stop is not None and stop.type == "manual"
    return (_replace(machine, then_start=True), []) if wanted else (machine, [])


def _restart_wanted(machine: Machine, now: float) -> Step:
    state = machine.state
    mark = Mark("restart requested by operator")
    if isinstance(state, Waiting):
        return _start_afresh(machine, now)
    if isinstance(state, Stopping):
        if machine.stop is not None and machine.stop.type == "manual":
            return _replace(machine, then_start=True), [mark]
        return machine, []
    if isinstance(state, (Starting, Running)):
        machine, actions = _stop_wanted(machine, ExitReason(type="manual", message="restart requested"), now)
        return _replace(machine, then_start=True), [mark, *actions]
    return machine, []


def _fatal(machine: Machine, message: str, now: float) -> Step:
    machine = _replace(machine, fatal=message)
    state = machine.state
    if isinstance(state, (Starting, Running, Stopping)):
        return _kill(machine, state, Charge(EventKind.FAILED, message))
    return _done(machine, "failed", message)


def _start_afresh(machine: Machine, now: float) -> Step:
    machine = _replace(
        machine, state=Waiting(until=now), stop=None, by_strategy=False, by_operator=False, then_start=False, errors=(),
        consecutive=0,
    )
    return machine, [Counted(0), Note(EventKind.RESTARTED, "restart requested"), Publish()]


def _count_error(machine: Machine, charge: Charge, now: float, rand: float) -> Step:
    settings = machine.supervision
    errors = tuple(t for t in machine.errors if t > now - settings.error_window) + (now,)
    machine = _replace(machine, errors=errors)
    actions: list[Action] = [Note(charge.kind, charge.message), Counted(len(errors), charge)]
    if len(errors) > settings.max_errors:
        reason = f"{len(errors)} errors within {settings.error_window:g}s (max {settings.max_errors}): {charge.message}"
        machine, done = _done(machine, "failed", reason)
        return machine, [*actions, Mark(f"failed: {reason}"), *done]
    consecutive = machine.consecutive + 1
    delay = backoff_delay(settings.backoff, settings.backoff_max, consecutive, rand)
    waiting = Waiting(until=now + delay, why=f"{charge.message}; restarting in {delay:.1f}s")
    machine = _replace(machine, state=waiting, consecutive=consecutive)
    return machine, [*actions, Mark(f"restart in {delay:.2f}s after: {charge.message}"), Publish()]


def _done(machine: Machine, outcome: Outcome, reason: str) -> Step:
    return _replace(machine, state=Done(outcome, reason)), [Settle(outcome, reason, machine.by_strategy)]


def _outcome(reason: ExitReason) -> Outcome:
    if reason.type in MOVED_AWAY:
        return "released"
    if reason.type == "worker_exit":
        return "handed_back"
    return "stopped"


def _with_child(state: Live, child: Child) -> Live:
    return msgspec.structs.replace(state, child=child)


def _replace(machine: Machine, **changes: object) -> Machine:
    return msgspec.structs.replace(machine, **changes)
