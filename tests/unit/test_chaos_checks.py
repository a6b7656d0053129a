"""The chaos soak's invariants (scripts/chaos_checks.py, chaos_seen.py, chaos_isolation.py, chaos_attack.py) on
hand-written records: what is and is not a violation."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from chaos_checks import (  # noqa: E402
    StrategyLog,
    beats_while_stopped,
    check_log,
    counter_rollbacks,
    double_runners,
    duplicate_orders,
    lost_writes,
    stale_orders,
    stale_states,
)
from chaos_seen import Seen, plan_mismatch, took_effect  # noqa: E402
from chaos_races import Spec, manifest  # noqa: E402
from chaos_cluster import Proc  # noqa: E402
from chaos_isolation import disturbed, flood_budget, leaked  # noqa: E402
import chaos_attack  # noqa: E402
from quantlab.protocol import LIMITS  # noqa: E402
from quantlab.store.records import Event  # noqa: E402


class Script:
    """Records of one strategy, written the way chaos_strategy.py writes them."""

    def __init__(self) -> None:
        self.log = StrategyLog("s01", Path("/nonexistent"))
        self.gens: dict[int, int] = {}  #: pid -> its generation

    def add(self, kind: str, pid: int, m: float, **fields: Any) -> None:
        record = {"k": kind, "pid": pid, "ppid": 100 + pid % 10, "m": m, "t": 1000.0 + m, "gen": self.gens.get(pid, 0)}
        self.log.add({**record, **fields})

    def init(self, pid: int, m: float, n: int, *, gen: int = 0, sgen: int | None = None) -> None:
        self.gens[pid] = gen
        self.add("init", pid, m, n=n, helper=None, sgen=sgen)

    def link(self, pid: int, n: int) -> str:
        gen = self.gens.get(pid, 0)
        return f"s01-{n}" if not gen else f"s01g{gen}-{n}"

    def beat(self, pid: int, m0: float, n: int, *, ok: bool = True, code: int | None = 0, sent: bool = True, xt: float | None = None) -> None:
        if sent:
            self.add("send", pid, m0, n=n, id=self.link(pid, n))
        at = 1000.0 + m0 if xt is None else xt
        self.add("beat", pid, m0 + 0.01, n=n, id=self.link(pid, n), m0=m0, ok=ok, code=code if not ok else 0, xt=at * 1000 if ok else None)

    def run(self, pid: int, start: float, first: int, count: int, *, gen: int = 0, sgen: int | None = None) -> float:
        """A runner that restored ``first - 1`` and beat ``count`` times, 0.2 s apart; returns its last beat's start."""
        self.init(pid, start, first - 1, gen=gen, sgen=sgen)
        m = start
        for n in range(first, first + count):
            m += 0.2
            self.beat(pid, m, n)
        return m


def kinds(script: Script) -> list[str]:
    return [v.kind for v in check_log(script.log)]


def test_a_clean_handover_is_no_violation() -> None:
    s = Script()
    last = s.run(1, 0.0, 1, 5)
    s.add("exit", 1, last + 0.05, n=5, reason="manual")
    s.run(2, last + 0.5, 6, 5)
    assert kinds(s) == []


def test_losing_only_the_heartbeat_in_flight_is_allowed() -> None:
    s = Script()
    s.run(1, 0.0, 1, 5)
    s.add("send", 1, 1.2, n=6, id="s01-6")  # killed inside heartbeat 6: its state never reached the worker
    s.init(2, 2.0, 5)
    s.beat(2, 2.2, 6, ok=False, code=110072)  # the exchange has s01-6 already: idempotency at work
    s.beat(2, 2.4, 7)
    assert kinds(s) == []


@pytest.mark.parametrize("reason", ["manual", "worker_exit"])
def test_a_clean_handover_that_loses_the_last_write_is_a_lost_write(reason: str) -> None:
    """A runner that exited cleanly had its last state written: restoring one less is no rollback allowance."""
    s = Script()
    last = s.run(1, 0.0, 1, 5)
    s.add("exit", 1, last + 0.05, n=5, reason=reason)
    s.init(2, last + 0.5, 4)
    assert counter_rollbacks(s.log) == []  # within the one write a killed runner may lose
    found = lost_writes(s.log)
    assert [v.kind for v in found] == ["lost-write"]
    assert "restored counter 4" in found[0].detail and "left 5" in found[0].detail


@pytest.mark.parametrize("reason", ["lease_lost", "moved_away", "error"])
def test_a_runner_ended_unclean_or_fenced_first_may_lose_its_last_write(reason: str) -> None:
    s = Script()
    last = s.run(1, 0.0, 1, 5)
    s.add("exit", 1, last + 0.05, n=5, reason=reason)  # the new epoch came first: its last write was refused
    s.init(2, last + 0.5, 4)
    assert lost_writes(s.log) == []


def test_restoring_older_than_the_last_delivered_heartbeat_is_a_rollback() -> None:
    s = Script()
    s.run(1, 0.0, 1, 5)  # heartbeat 5 began, so 4 was delivered
    s.init(2, 2.0, 3)
    found = counter_rollbacks(s.log)
    assert [v.kind for v in found] == ["counter-rollback"]
    assert "restored counter 3" in found[0].detail


def test_an_old_runner_beginning_a_heartbeat_after_a_new_one_started_is_a_double_runner() -> None:
    s = Script()
    s.run(1, 0.0, 1, 3)
    s.init(2, 1.0, 3)
    s.beat(2, 1.2, 4)
    s.beat(1, 1.3, 4, sent=True)  # the old worker ticked its child again
    assert [v.kind for v in double_runners(s.log)] == ["double-runner"]


def test_the_old_runners_heartbeat_already_under_way_is_tolerated() -> None:
    s = Script()
    s.run(1, 0.0, 1, 3)
    s.add("send", 1, 0.9, n=4, id="s01-4")
    s.init(2, 1.0, 3)
    s.add("beat", 1, 1.5, n=4, id="s01-4", m0=0.9, ok=False, code=10003, xt=None)  # began before the new one
    s.beat(2, 1.2, 4)
    assert double_runners(s.log) == []


def test_an_id_accepted_twice_is_a_duplicate_order() -> None:
    s = Script()
    s.run(1, 0.0, 1, 3)
    s.init(2, 1.0, 2)  # a rollback, and the exchange took s01-3 again
    s.beat(2, 1.2, 3)
    found = duplicate_orders(s.log)
    assert [v.kind for v in found] == ["duplicate-order"]
    assert "accepted 2 times" in found[0].detail


def test_a_refused_duplicate_that_is_no_replay_is_a_violation() -> None:
    s = Script()
    s.run(1, 0.0, 1, 3)
    s.init(2, 1.0, 1)  # restored 1 although 3 had been begun and 2 delivered
    s.beat(2, 1.2, 2, ok=False, code=110072)
    assert sorted(v.kind for v in check_log(s.log)) == ["counter-rollback", "duplicate-order"]


def test_an_order_accepted_from_an_old_runner_after_a_new_one_began_is_stale() -> None:
    s = Script()
    s.run(1, 0.0, 1, 3)
    s.add("send", 1, 0.9, n=4, id="s01-4")
    s.init(2, 1.0, 3)
    # began before the new runner (tolerated as a heartbeat) but the exchange ran it after: fencing failed
    s.add("beat", 1, 1.6, n=4, id="s01-4", m0=0.9, ok=True, code=0, xt=(1000.0 + 1.5) * 1000)
    assert [v.kind for v in stale_orders(s.log)] == ["stale-order"]
    assert double_runners(s.log) == []


def test_a_heartbeat_while_stopped_is_a_violation() -> None:
    s = Script()
    s.run(1, 0.0, 1, 10)
    assert [v.kind for v in beats_while_stopped(s.log, [(1.0, 1.5)])] == ["ran-while-stopped"]
    assert beats_while_stopped(s.log, [(2.05, 3.0)]) == []


def test_records_are_read_incrementally_and_half_lines_wait(tmp_path: Path) -> None:
    path = tmp_path / "s01.jsonl"
    log = StrategyLog("s01", path)
    assert log.poll() == []
    init = '{"k": "init", "pid": 1, "ppid": 9, "m": 1.0, "t": 1.0, "n": 0, "helper": null}\n'
    beat = '{"k": "beat", "pid": 1, "ppid": 9, "m": 1.3, "t": 1.3, "n": 1, "id": "s01-1", "m0": 1.2, "ok": true, "code": 0, "xt": 1200}\n'
    path.write_text(init + beat[:30])
    assert log.poll() == [] and len(log.runners) == 1
    with open(path, "a") as f:
        f.write(beat[30:])
    [(runner, got)] = log.poll()
    assert runner.pid == 1 and got.n == 1 and got.ok and got.xt == 1.2


def test_an_old_runners_call_refused_as_the_new_runners_duplicate_is_stale_not_duplicate() -> None:
    s = Script()
    s.run(1, 0.0, 1, 3)
    s.add("send", 1, 0.9, n=4, id="s01-4")  # its worker pauses with this call in hand
    s.init(2, 1.0, 3)
    s.beat(2, 1.2, 4)  # the new runner uses s01-4 first
    s.add("beat", 1, 3.5, n=4, id="s01-4", m0=0.9, ok=False, code=110072, xt=None)  # the old call ran after the resume
    assert [v.kind for v in check_log(s.log)] == ["stale-order"]


# ---- a strategy removed and assigned anew under its id (remove-assign, apply --prune) ----


def test_a_recreated_strategy_starting_over_is_no_violation() -> None:
    s = Script()
    last = s.run(1, 0.0, 1, 5)
    s.add("exit", 1, last + 0.05, n=5, reason="manual")  # removed: its st_exit ran
    s.run(2, last + 0.3, 1, 5, gen=1)  # the new Work: empty state, counter from 1, ids of its own
    assert kinds(s) == []


def test_the_removed_runner_beating_after_the_recreated_one_started_is_a_double_runner() -> None:
    s = Script()
    s.run(1, 0.0, 1, 3)
    s.run(2, 1.0, 1, 2, gen=1)
    s.beat(1, 1.1, 4)  # the removed Work's child got another tick
    found = double_runners(s.log)
    assert [v.kind for v in found] == ["double-runner"]
    assert "pid 1 of generation 0" in found[0].detail and "pid 2 of generation 1" in found[0].detail


def test_a_removed_generation_starting_after_the_new_one_is_a_double_runner() -> None:
    s = Script()
    s.run(1, 0.0, 1, 3)
    s.run(2, 1.0, 1, 2, gen=1)
    s.init(3, 1.5, 3)  # generation 0 started again somewhere, after its Work was removed
    found = double_runners(s.log)
    assert [v.kind for v in found] == ["double-runner"]
    assert "removed generation 0" in found[0].detail


def test_restoring_state_a_removed_generation_wrote_is_stale_state() -> None:
    s = Script()
    s.run(1, 0.0, 1, 5)
    s.run(2, 2.0, 1, 2, gen=1)
    s.run(3, 3.0, 6, 2, gen=1, sgen=0)  # the removed runner's late write landed in the new Work's state
    found = stale_states(s.log)
    assert [v.kind for v in found] == ["stale-state"]
    assert "generation 1 restored state written by generation 0" in found[0].detail
    assert "stale-state" in kinds(s)


def test_a_restart_within_a_generation_restores_its_own_state() -> None:
    s = Script()
    s.run(1, 0.0, 1, 3, gen=2)
    s.run(2, 1.0, 4, 3, gen=2, sgen=2)
    assert kinds(s) == []


def test_a_rollback_is_still_found_within_a_new_generation() -> None:
    s = Script()
    s.run(1, 0.0, 1, 3)
    s.run(2, 1.0, 1, 5, gen=1)
    s.init(3, 2.5, 1, gen=1, sgen=1)  # heartbeat 5 of generation 1 began: at least 4 must come back
    assert [v.kind for v in counter_rollbacks(s.log)] == ["counter-rollback"]


# ---- the operator's final stop, seen from outside ----


def look(began: float, status: str | None, *alive: int) -> Seen:
    return Seen(began, began + 0.2, status, frozenset(alive))


def test_a_stop_takes_effect_when_a_later_status_says_stopped_and_no_child_is_left() -> None:
    seen = [
        look(0.5, "stopped"),  # begun before the stop returned: it may show an earlier stop
        look(1.1, "running", 7),
        look(1.5, "stopped", 7),  # says stopped while its child still runs: not yet
        look(2.0, "stopped"),
    ]
    assert took_effect(seen, 1.0, "stopped") == pytest.approx(2.2)
    assert took_effect(seen[:3], 1.0, "stopped") is None


def test_a_stop_that_never_settles_has_no_effect() -> None:
    # desired stopped on a Work placed but not yet adopted: its status stays pending
    seen = [look(1.0 + i, "pending") for i in range(8)]
    assert took_effect(seen, 1.0, "stopped") is None


def test_a_removal_takes_effect_once_its_runners_are_gone() -> None:
    assert took_effect([look(1.0, None, 4)], 1.0, None) is None
    assert took_effect([look(1.0, None, 4), look(1.4, None)], 1.0, None) == pytest.approx(1.6)


def test_a_beat_after_the_final_stop_took_effect_ran_while_stopped() -> None:
    s = Script()
    s.run(1, 0.0, 1, 3)
    s.add("exit", 1, 0.7, n=3, reason="manual")
    s.run(2, 1.5, 4, 2)  # a child the race's restart spawned, ticked after the stop settled
    effect = took_effect([look(0.8, "stopped")], 0.75, "stopped")
    assert effect is not None
    assert [v.kind for v in beats_while_stopped(s.log, [(effect, 3.0)])] == ["ran-while-stopped"]


# ---- qlab apply ----


def test_an_apply_plan_must_change_exactly_its_target() -> None:
    out = "update  s03  (interval)\n1 to update\n"
    assert plan_mismatch(out, {("update", "s03")}) is None
    assert plan_mismatch("nothing to change\n", set()) is None
    wide = "update  s03  (interval)\nupdate  s04  (params)\nstop    s05\n3 to update\n"
    assert plan_mismatch(wide, {("update", "s03")}) == "planned also stop s05, update s04"
    assert plan_mismatch("nothing to change\n", {("remove", "s03")}) == "did not plan remove s03"


def test_the_soaks_manifest_lists_each_strategy_as_assigned(tmp_path: Path) -> None:
    import tomllib

    file = tmp_path / "chaos_strategy.py"
    spec = Spec(file, 0.2, 3.0, 0.1, True, stop_timeout=1.0, gen=2, worker="w2", accounts=("paper", "paper2"))
    table = tomllib.loads(manifest({"s01": spec, "s02": Spec(file, 0.3, 3.0, 0.1, False)}))["strategies"]
    assert table["s01"] == {
        "file": str(file), "params": {"helper": True, "gen": 2}, "interval": 0.2, "heartbeat_timeout": 3.0,
        "backoff": 0.1, "max_errors": 100_000, "stop_timeout": 1.0, "worker": "w2", "accounts": ["paper", "paper2"],
    }  # fmt: skip
    assert table["s02"]["params"] == {"helper": False, "gen": 0} and "worker" not in table["s02"]
    args = spec.assign_args("s01")
    assert args[args.index("--worker") + 1] == "w2" and args.count("--account") == 2


# ---- isolation faults, leaks and the attacker ----


def test_a_neighbour_that_beat_throughout_a_flood_is_not_disturbed() -> None:
    s = Script()
    s.run(1, 0.0, 1, 30)  # a beat every 0.2 s until 6.0
    assert disturbed(s.log, 1, 1.0, 5.0, bound=1.0) == []


def test_a_neighbour_silent_for_longer_than_the_bound_or_replaced_is_disturbed() -> None:
    s = Script()
    s.run(1, 0.0, 1, 5)  # beats until 1.0, then silence
    s.run(2, 3.0, 6, 5)  # a new process: its worker lost the lease, or killed it
    found = disturbed(s.log, 1, 0.5, 4.0, bound=1.0)
    assert [v.kind for v in found] == ["neighbour-disturbed"] * 2
    assert "replaced by pid 2" in found[0].detail and "went 2.99s without a beat" in found[1].detail  # its last beat ended at 1.01


def event(kind: str, strategy: str, ts: float) -> Event:
    return Event(ts=ts, kind=kind, strategy=strategy)


def test_a_flood_must_be_met_by_an_over_budget_event_and_ctx_send_events_stay_in_budget() -> None:
    held = [event("over_budget", "s01", 105.0), *(event("strategy_message", "s01", 101.0) for _ in range(LIMITS.send.burst))]
    assert flood_budget(held, {"s01": [100.0]}, seconds=10.0) == []
    found = flood_budget([event("over_budget", "s01", 90.0)], {"s01": [100.0]}, seconds=10.0)
    assert [v.kind for v in found] == ["flood-budget"] and "nothing was dropped" in found[0].detail
    bound = LIMITS.send.burst + LIMITS.send.rate * 10.0
    flooded = [event("strategy_message", "s02", 101.0) for _ in range(int(bound) + 1)]
    found = flood_budget(flooded, {}, seconds=10.0)
    assert [(v.kind, v.strategy) for v in found] == [("flood-budget", "s02")]


def proc(pid: int, start: int, cmdline: str, state: str = "S") -> Proc:
    return Proc(pid, 1, state, start, cmdline)


def test_a_process_of_the_run_left_after_the_fleet_stopped_is_leaked() -> None:
    seen = {(10, 500): "qlab zygote w1", (11, 501): "qlab strategy s01 [w1]", (12, 502): "qlab strategy s02 [w1]"}
    now = {
        10: proc(10, 500, "qlab zygote w1"),  # the same process: left running
        11: proc(11, 999, "bash"),  # its pid reused by another process: not ours
        12: proc(12, 502, "", state="Z"),  # ended, not yet reaped: the zombie check's
        20: proc(20, 700, "qlab-chaos-helper:/tmp/h 3600"),  # a helper never seen among the descendants
        21: proc(21, 701, "qlab-chaos-helper:/tmp/other 3600"),  # another run's helper
    }
    found = leaked(seen, now, "qlab-chaos-helper:/tmp/h ")
    assert [v.kind for v in found] == ["leaked-process"] * 2
    assert [v.detail.split()[1] for v in found] == ["10", "20"]
    assert leaked(seen, {}, "qlab-chaos-helper:/tmp/h ") == []


def test_an_attack_that_had_an_effect_or_an_idle_attacker_is_a_violation() -> None:
    refused = {"rounds": 3, "tries": {"read the accounts file": [3, 0, "refused: PermissionError"]}}
    assert chaos_attack.judge(refused, {"s01-1", "s02-1"}) == []
    done = {"rounds": 3, "tries": {"SIGSTOP the worker": [3, 1, "DONE: sent SIGSTOP to pid 7"]}}
    found = chaos_attack.judge(done, {"atk-hijack-2"})
    assert [v.kind for v in found] == ["attack-succeeded"] * 2
    assert "SIGSTOP the worker: 1 of 3" in found[0].detail and "atk-hijack-2" in found[1].detail
    assert [v.kind for v in chaos_attack.judge({}, set())] == ["attacker-idle"]
    assert chaos_attack.summary(done) == {"rounds": 3, "attacks": {"SIGSTOP the worker": {"tries": 3, "done": 1}}}


def test_an_escape_record_names_the_helpers_of_its_runner() -> None:
    s = Script()
    s.init(1, 0.0, 0)
    s.add("escape", 1, 0.5, helpers=[40, 0, 41])  # 0: a double fork whose pid never came back
    assert s.log.runners[0].escaped == [40, 41]
