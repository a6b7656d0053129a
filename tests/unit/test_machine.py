"""The per-strategy state machine, fed scripted events: tables of (time, event, expected actions, state)."""

from __future__ import annotations

from typing import Any

import pytest

from quantlab.store.records import EventKind, ExitReason
from quantlab.worker import machine as m
from quantlab.worker.rules import STABLE_AFTER

MANUAL = ExitReason(type="manual", message="stopped by operator")
MOVED = ExitReason(type="reassigned", message="assigned to w2 now")
SUPERVISION = m.Supervision(interval=1.0, heartbeat_timeout=5.0, stop_timeout=3.0, backoff=2.0, max_errors=2, error_window=100.0)

Row = tuple[float, m.Event, list[Any], type]


def play(rows: list[Row], machine: m.Machine | None = None) -> m.Machine:
    """Feed each event at its time; the actions must match (a type matches any instance of it)."""
    machine = machine or m.new_machine(SUPERVISION, 0.0)
    for number, (now, event, expected, state) in enumerate(rows):
        machine, actions = m.step(machine, event, now)
        got = [a if not isinstance(e, type) else type(a) for a, e in zip(actions, expected)]
        assert len(actions) == len(expected) and got == expected, f"row {number}: {event} -> {actions}"
        assert isinstance(machine.state, state), f"row {number}: {event} -> {machine.state}"
    return machine


START: list[Row] = [
    (0.0, m.Due(), [m.Spawn(1)], m.Spawning),
    (0.0, m.Spawned(pid=100), [m.Publish], m.Starting),
]
RUNNING: list[Row] = [
    *START,
    (0.1, m.HelloCame(), [m.SendInit()], m.Starting),
    (0.2, m.ReadyCame(), [m.Note(EventKind.STARTED, "pid 100"), m.Publish(), m.SendTick(1, 0)], m.Running),
]


def test_ticks_wait_for_answers_and_count_overruns() -> None:
    machine = play([
        *RUNNING,
        (1.2, m.Due(), [], m.Running),  # tick 1 unanswered: an overrun, nothing sent
        (1.5, m.Beat(seq=1), [m.Beaten(first=True)], m.Running),
        (1.6, m.Beat(seq=1), [], m.Running),  # a duplicate answer is ignored
        (2.2, m.Due(), [m.SendTick(2, 1)], m.Running),
        (2.3, m.Beat(seq=7), [], m.Running),  # not the tick in flight
        (2.4, m.Beat(seq=2), [m.Beaten(first=False)], m.Running),
    ])
    assert m.deadline(machine) == 3.2


def test_a_long_pause_skips_ahead_instead_of_bursting() -> None:
    machine = play([*RUNNING, (0.3, m.Beat(seq=1), [m.Beaten(True)], m.Running)])
    machine = play([(4.0, m.Due(), [m.SendTick(2, 0)], m.Running), (4.1, m.Beat(seq=2), [m.Beaten(False)], m.Running),
                    (4.5, m.Due(), [], m.Running)], machine)
    assert m.deadline(machine) == 5.2  # on its phase (ready at 0.2), half an interval on at least


def test_hung_child_is_killed_then_restarted_after_backoff() -> None:
    machine = play([
        *RUNNING,
        (5.0, m.Due(), [], m.Running),  # exactly the timeout: not yet
        (5.2, m.Due(), [m.Kill(100, "hung: no heartbeat for 5s")], m.Running),
        (5.3, m.Due(), [], m.Running),  # killed once
        (5.4, m.Gone("signal SIGKILL", rand=0.5), [m.Note(EventKind.HEARTBEAT_TIMEOUT, "hung: no heartbeat for 5s"),
                                                   m.Counted, m.Mark, m.Publish], m.Waiting),
    ])
    assert m.status(machine) == ("error", "hung: no heartbeat for 5s; restarting in 2.0s")
    assert m.deadline(machine) == pytest.approx(7.4)
    play([(7.3, m.Due(), [], m.Waiting), (7.4, m.Due(), [m.Spawn(2)], m.Spawning)], machine)


def test_hang_in_st_init_counts_from_the_spawn() -> None:
    play([*START, (0.1, m.HelloCame(), [m.SendInit()], m.Starting), (5.1, m.Due(), [m.Kill], m.Starting)])


def test_crash_error_and_too_many_errors() -> None:
    machine = play([*RUNNING, (1.0, m.Gone("exit code 3"), [m.Note(EventKind.CRASHED, "crashed: exit code 3"),
                                                             m.Counted, m.Mark, m.Publish], m.Waiting)])
    machine = play([
        (3.0, m.Due(), [m.Spawn(2)], m.Spawning),
        (3.0, m.Spawned(pid=101), [m.Publish], m.Starting),
        (3.1, m.Reported("st_init: ValueError: bad", "tb"), [], m.Starting),
        (3.2, m.Gone("exit code 1"), [m.Note(EventKind.ERROR, "st_init: ValueError: bad"),
                                     m.Counted(2, m.Charge(EventKind.ERROR, "st_init: ValueError: bad", "tb")),
                                     m.Mark, m.Publish], m.Waiting),
    ], machine)
    machine = play([
        (9.0, m.Due(), [m.Spawn(3)], m.Spawning),
        (9.0, m.SpawnFailed("no zygote"), [m.Note, m.Counted, m.Mark, m.Settle], m.Done),
    ], machine)
    assert machine.state == m.Done("failed", "3 errors within 100s (max 2): spawn failed: no zygote")


def test_error_window_forgets_old_errors_and_stable_run_resets_backoff() -> None:
    machine = play([*RUNNING, (1.0, m.Gone("exit code 3"), [m.Note, m.Counted(1, m.Charge(EventKind.CRASHED, "crashed: exit code 3")),
                                                           m.Mark, m.Publish], m.Waiting)])
    assert machine.consecutive == 1
    machine = play([
        (3.0, m.Due(), [m.Spawn(2)], m.Spawning),
        (3.0, m.Spawned(pid=101), [m.Publish], m.Starting),
        (3.0, m.HelloCame(), [m.SendInit()], m.Starting),
        (3.0, m.ReadyCame(), [m.Note, m.Publish, m.SendTick(1, 0)], m.Running),
        (3.0 + STABLE_AFTER, m.Beat(seq=1), [m.Beaten(True)], m.Running),
        (200.0, m.Gone("exit code 3"), [m.Note, m.Counted(1, m.Charge(EventKind.CRASHED, "crashed: exit code 3")),
                                        m.Mark, m.Publish], m.Waiting),
    ], machine)
    assert machine.consecutive == 1 and machine.state == m.Waiting(until=202.0, why="crashed: exit code 3; restarting in 2.0s")


def test_a_stop_before_the_child_connects_is_sent_on_hello_and_again_on_ready() -> None:
    """A stop before the child connects is sent on its Hello and again on Ready, which never undoes it."""
    machine = play([
        *START,
        (0.1, m.StopWanted(MANUAL), [m.Publish()], m.Stopping),  # nothing to send to yet
        (0.2, m.HelloCame(), [m.SendInit(), m.SendStop(MANUAL)], m.Stopping),  # st_init, then st_exit
        (0.3, m.ReadyCame(), [m.SendStop(MANUAL)], m.Stopping),  # never back to running
        (0.4, m.Due(), [], m.Stopping),
        (0.5, m.Confirmed(MANUAL), [], m.Stopping),
        (0.6, m.Gone("exit code 0"), [m.Settle("stopped", "stopped by operator")], m.Done),
    ])
    assert m.status(machine) == ("stopped", "stopped by operator")


def test_a_stop_during_st_init_keeps_its_deadline() -> None:
    """A stop during st_init keeps its deadline through Ready."""
    play([
        *START,
        (0.1, m.HelloCame(), [m.SendInit()], m.Starting),
        (0.2, m.StopWanted(MANUAL), [m.SendStop(MANUAL), m.Publish()], m.Stopping),
        (1.0, m.ReadyCame(), [m.SendStop(MANUAL)], m.Stopping),
        (3.1, m.Due(), [], m.Stopping),
        (3.2, m.Due(), [m.Kill(100, "st_exit took longer than 3s")], m.Stopping),
        (3.3, m.Gone("signal SIGKILL"), [m.Settle("stopped", "stopped by operator")], m.Done),
    ])


def test_stop_then_start_while_st_exit_runs_ends_running() -> None:
    """A completed stop leaves desired as the operator last set it: a start asked meanwhile wins."""
    machine = play([
        *RUNNING,
        (1.0, m.StopWanted(MANUAL, by_operator=True), [m.SendStop(MANUAL), m.Publish()], m.Stopping),
        (1.1, m.StartWanted(), [], m.Stopping),
        (1.2, m.Confirmed(MANUAL), [], m.Stopping),
        (1.3, m.Gone("exit code 0"), [m.Counted(0), m.Note, m.Publish()], m.Waiting),
        (1.3, m.Due(), [m.Spawn(2)], m.Spawning),
    ])
    assert machine.stop is None and machine.errors == ()


def test_a_later_stop_cancels_a_start_and_a_move_fences_a_stop() -> None:
    machine = play([
        *RUNNING,
        (1.0, m.StopWanted(MANUAL, by_operator=True), [m.SendStop, m.Publish], m.Stopping),
        (1.1, m.StartWanted(), [], m.Stopping),
        (1.2, m.StopWanted(MANUAL, by_operator=True), [], m.Stopping),
        (1.3, m.StopWanted(MOVED), [], m.Stopping),
    ])
    assert m.moved_away(machine) and not machine.then_start
    play([(1.4, m.Gone("exit code 0"), [m.Settle("released", "assigned to w2 now")], m.Done)], machine)


def test_only_the_operators_stop_is_cancelled_by_a_start() -> None:
    """A start cancels the stop the operator asked for, once; never a ctx.stop() or a restart's own stop."""
    enough = ExitReason(type="manual", message="enough")
    by_strategy = play([*RUNNING, (0.5, m.Confirmed(enough), [m.Publish()], m.Stopping),
                        (0.6, m.StartWanted(), [], m.Stopping)])
    assert not by_strategy.then_start and not m.operator_stop(by_strategy)
    by_operator = play([*RUNNING, (1.0, m.StopWanted(MANUAL, by_operator=True), [m.SendStop, m.Publish], m.Stopping)])
    assert m.operator_stop(by_operator)
    started = play([(1.1, m.StartWanted(), [], m.Stopping)], by_operator)
    assert started.then_start and not m.operator_stop(started)
    # The operator stops a restart under way, then starts it again: the start wins once more.
    restarting = play([*RUNNING, (1.0, m.RestartWanted(), [m.Mark, m.SendStop, m.Publish], m.Stopping),
                       (1.1, m.StopWanted(MANUAL, by_operator=True), [], m.Stopping)])
    assert not restarting.then_start and m.operator_stop(restarting)
    machine = play([(1.2, m.StartWanted(), [], m.Stopping),
                    (1.3, m.Gone("exit code 0"), [m.Counted(0), m.Note, m.Publish()], m.Waiting)], restarting)
    assert not m.operator_stop(machine)  # a fresh start owes the operator nothing


def test_a_lapsed_lease_fences_off_every_later_call_of_the_strategy() -> None:
    """Once it ran while the lease ran out, no call of its may leave, across restarts, whatever lease comes next."""
    machine = play([*RUNNING, (0.5, m.LeaseLapsed(), [], m.Running)])
    assert m.fenced_off(machine) and not m.moved_away(machine) and m.deadline(machine) == 1.2  # nothing else changes
    machine = play([(0.6, m.RestartWanted(), [m.Mark, m.SendStop, m.Publish], m.Stopping),
                    (0.7, m.Gone("exit code 0"), [m.Counted(0), m.Note, m.Publish()], m.Waiting)], machine)
    assert m.fenced_off(machine)
    assert m.fenced_off(play([*RUNNING, (0.5, m.StopWanted(MOVED), [m.SendStop, m.Publish], m.Stopping)]))
    assert not m.fenced_off(play(RUNNING))


def test_a_spawn_waits_for_its_reconciliation_and_retries_a_failed_one() -> None:
    machine = play([(0.0, m.Due(), [m.Spawn(1)], m.Spawning), (0.0, m.ReconcileStarted(), [], m.Spawning)])
    assert m.reconciling(machine) and not m.reconcile_failed(machine) and m.deadline(machine) is None
    machine = play([(0.5, m.ReconcileEnded(ok=False), [], m.Spawning)], machine)
    assert m.reconcile_failed(machine) and not m.reconciling(machine)
    machine = play([(1.5, m.ReconcileStarted(), [], m.Spawning), (1.6, m.ReconcileEnded(ok=True), [], m.Spawning)], machine)
    assert not m.reconciling(machine) and not m.reconcile_failed(machine)
    play([(1.7, m.Spawned(pid=100), [m.Publish], m.Starting)], machine)
    reconciling = play([(0.0, m.Due(), [m.Spawn(1)], m.Spawning), (0.0, m.ReconcileStarted(), [], m.Spawning)])
    play([(0.1, m.StopWanted(MANUAL), [m.Settle("stopped", "stopped by operator")], m.Done)], reconciling)


def test_an_init_the_store_cannot_give_yet_waits_for_the_child_only() -> None:
    machine = play([*START, (0.1, m.HelloCame(), [m.SendInit()], m.Starting), (0.1, m.InitWaits(), [], m.Starting)])
    assert m.init_waits(machine)
    assert not m.init_waits(play([(0.2, m.InitSent(), [], m.Starting)], machine))
    machine = play([(0.2, m.Gone("signal SIGKILL"), [m.Note, m.Counted, m.Mark, m.Publish], m.Waiting)], machine)
    assert not m.init_waits(machine)  # a child gone waits for nothing; the next one starts afresh


def test_moved_away_before_hello_gets_no_init() -> None:
    play([
        *START,
        (0.1, m.StopWanted(MOVED), [m.Publish()], m.Stopping),
        (0.2, m.HelloCame(), [m.SendStop(MOVED)], m.Stopping),
    ])


def test_ctx_stop_settles_as_stopped_by_the_strategy() -> None:
    enough = ExitReason(type="manual", message="enough")
    play([
        *RUNNING,
        (0.5, m.Confirmed(enough), [m.Publish()], m.Stopping),
        (0.6, m.Gone("exit code 0"), [m.Settle("stopped", "enough", by_strategy=True)], m.Done),
    ])


def test_worker_exit_hands_back_and_a_stop_without_child_settles_at_once() -> None:
    worker_exit = ExitReason(type="worker_exit", message="SIGTERM")
    play([*RUNNING, (1.0, m.StopWanted(worker_exit), [m.SendStop, m.Publish], m.Stopping),
          (1.1, m.Gone("exit code 0"), [m.Settle("handed_back", "SIGTERM")], m.Done)])
    backing_off = play([*RUNNING, (1.0, m.Gone("exit code 3"), [m.Note, m.Counted, m.Mark, m.Publish], m.Waiting)])
    play([(1.5, m.StopWanted(MANUAL), [m.Settle("stopped", "stopped by operator")], m.Done)], backing_off)


def test_restart_stops_cleanly_then_starts_with_a_fresh_error_count() -> None:
    machine = play([*RUNNING, (0.5, m.Gone("exit code 3"), [m.Note, m.Counted, m.Mark, m.Publish], m.Waiting),
                    (2.5, m.Due(), [m.Spawn(2)], m.Spawning), (2.5, m.Spawned(pid=101), [m.Publish], m.Starting),
                    (2.6, m.HelloCame(), [m.SendInit()], m.Starting),
                    (2.7, m.ReadyCame(), [m.Note, m.Publish, m.SendTick(1, 0)], m.Running)])
    machine = play([
        (3.0, m.RestartWanted(), [m.Mark("restart requested by operator"), m.SendStop, m.Publish], m.Stopping),
        (3.1, m.Gone("exit code 0"), [m.Counted(0), m.Note(EventKind.RESTARTED, "restart requested"), m.Publish], m.Waiting),
        (3.1, m.Due(), [m.Spawn(3)], m.Spawning),
    ], machine)
    assert machine.errors == () and machine.consecutive == 0


def test_unreadable_state_fails_the_strategy() -> None:
    play([
        *START,
        (0.1, m.Fatal("its state is unreadable: bad JSON"), [m.Kill(100, "its state is unreadable: bad JSON")], m.Starting),
        (0.2, m.Gone("signal SIGKILL"), [m.Settle("failed", "its state is unreadable: bad JSON")], m.Done),
    ])


def test_a_fault_is_charged_to_the_strategy() -> None:
    over = m.Charge(EventKind.MEMORY_LIMIT, "over its memory limit: 600 MB > 500 MB (max-memory)")
    play([
        *RUNNING,
        (1.0, m.Fault(over), [m.Kill(100, over.message)], m.Running),
        (1.1, m.Gone("signal SIGKILL"), [m.Note(EventKind.MEMORY_LIMIT, over.message), m.Counted(1, over), m.Mark, m.Publish],
         m.Waiting),
    ])


def test_an_expired_tick_is_counted_out_and_hang_detection_goes_on() -> None:
    machine = play([*RUNNING, (0.5, m.TickRefused(seq=1), [m.Mark], m.Running), (1.2, m.Due(), [m.SendTick(2, 0)], m.Running)])
    play([(5.3, m.Due(), [m.Kill], m.Running)], machine)


def test_deadlines_come_from_the_state() -> None:
    assert m.deadline(m.new_machine(SUPERVISION, 4.0)) == 4.0
    starting = play(START)
    assert m.deadline(starting) == 5.0  # hang detection from the spawn
    stopping = play([*START, (1.0, m.StopWanted(MANUAL), [m.Publish], m.Stopping)])
    assert m.deadline(stopping) == 4.0
    killed = play([(4.0, m.Due(), [m.Kill], m.Stopping)], stopping)
    assert m.deadline(killed) is None
