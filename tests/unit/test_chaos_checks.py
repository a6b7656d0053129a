"""The chaos soak's invariants (scripts/chaos_checks.py) on hand-written records: what is and is not a violation."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from chaos_checks import (  # noqa: E402
    StrategyLog,
    beats_while_stopped,
    check_log,
    counter_rollbacks,
    double_runners,
    duplicate_orders,
    stale_orders,
)


class Script:
    """Records of one strategy, written the way chaos_strategy.py writes them."""

    def __init__(self) -> None:
        self.log = StrategyLog("s01", Path("/nonexistent"))

    def add(self, kind: str, pid: int, m: float, **fields: Any) -> None:
        self.log.add({"k": kind, "pid": pid, "ppid": 100 + pid % 10, "m": m, "t": 1000.0 + m, **fields})

    def init(self, pid: int, m: float, n: int) -> None:
        self.add("init", pid, m, n=n, helper=None)

    def beat(self, pid: int, m0: float, n: int, *, ok: bool = True, code: int | None = 0, sent: bool = True, xt: float | None = None) -> None:
        if sent:
            self.add("send", pid, m0, n=n, id=f"s01-{n}")
        at = 1000.0 + m0 if xt is None else xt
        self.add("beat", pid, m0 + 0.01, n=n, id=f"s01-{n}", m0=m0, ok=ok, code=code if not ok else 0, xt=at * 1000 if ok else None)

    def run(self, pid: int, start: float, first: int, count: int) -> float:
        """A runner that restored ``first - 1`` and beat ``count`` times, 0.2 s apart; returns its last beat's start."""
        self.init(pid, start, first - 1)
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
