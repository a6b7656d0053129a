"""Records that do not decode never stop a daemon nor an operator: they are quarantined and replaced."""

from __future__ import annotations

import logging

from quantlab import control
from quantlab.director.leadership import Leadership
from quantlab.store.memstore import MemoryStore
from quantlab.store.records import EventKind, Leader, Resource, StrategySpec, Work, WorkerSpec
from quantlab.store.stepguard import StepGuard
from quantlab.worker.registration import claim_record


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def corrupt(store: MemoryStore, kind: str, key: str) -> int:
    table = store._table(kind)
    head = table.head(key)
    assert table.commit(key, head, b"{not json")
    return head.version + 1


def events(store: MemoryStore, kind: EventKind) -> list[str]:
    return [e.detail for e in store.events if e.kind == kind]


def test_a_director_leads_over_a_leader_record_that_does_not_decode_once_it_stood_still() -> None:
    store = MemoryStore()
    for term in range(1, 6):  # five claims: five versions, terms 1 to 5
        store.update_leader(lambda current, term=term: Leader(director="old", epoch=term, ttl=1.0))
    version = corrupt(store, "leases", "director")
    mono = Clock()
    lead = Leadership(store, "d2", 1.0, host="h", mono=mono)
    assert not lead.heartbeat()  # nobody can tell whether its holder lives: waited out like a lease
    mono.sleep(0.6)
    assert not lead.heartbeat()
    mono.sleep(0.7)  # past the lease plus its margin since it was first seen standing still
    assert lead.heartbeat() and lead.leading
    assert lead.term is not None and lead.term > 5 and lead.term == version + 1  # above every term handed out
    leader = store.find_leader()
    assert leader is not None and leader.director == "d2"
    assert len(events(store, EventKind.QUARANTINED)) == 1


def test_a_leader_record_that_keeps_moving_is_not_taken() -> None:
    """A holder that can read it (a newer quantlab, say) keeps renewing: it is never claimed over."""
    store = MemoryStore()
    store.update_leader(lambda current: Leader(director="old", epoch=1))
    mono = Clock()
    lead = Leadership(store, "d2", 1.0, host="h", mono=mono)
    for _ in range(10):
        corrupt(store, "leases", "director")  # a new version, again not one we can read
        assert not lead.heartbeat()
        mono.sleep(0.5)


def worker(instance: str, host: str = "h") -> Resource:
    spec = WorkerSpec(name="w1", region="JP", host=host, pid=1, instance=instance, lease_ttl=1.0)
    return Resource(id="w1", spec=spec)


def test_a_worker_takes_over_a_registration_of_its_id_that_does_not_decode() -> None:
    store = MemoryStore()
    store.update_resource("w1", lambda current: worker("old"))
    corrupt(store, "resources", "w1")
    mono, said = Clock(), []
    detail = claim_record(store, worker("new"), say=said.append, mono=mono, sleep=mono.sleep)
    assert "did not decode" in detail
    found = store.find_resource("w1")
    assert found is not None and found.spec.instance == "new"
    assert len(said) == 1 and "does not decode" in said[0]
    assert 100.0 + 1.2 <= mono.now < 100.0 + 2.0  # waited out one lease plus the margin, no more


def test_remove_gets_rid_of_a_work_that_does_not_decode_with_a_warning() -> None:
    store = MemoryStore()
    store.add_work(Work(id="good", spec=StrategySpec(file="/s.py")))
    store.add_work(Work(id="bad", spec=StrategySpec(file="/s.py")))
    corrupt(store, "works", "bad")
    warnings: list[str] = []
    store.on_warning = warnings.append
    control.remove(store, "bad")
    assert store.find_work("bad") is None and [w.id for w in store.list_works()] == ["good"]
    assert len(warnings) == 1 and "'bad' does not decode" in warnings[0] and "saved state is forgotten" in warnings[0]
    assert [e.strategy for e in store.events if e.kind == EventKind.REMOVED] == ["bad"]


def test_stop_of_a_work_that_does_not_decode_removes_it() -> None:
    store = MemoryStore()
    store.add_work(Work(id="bad", spec=StrategySpec(file="/s.py")))
    corrupt(store, "works", "bad")
    warnings: list[str] = []
    store.on_warning = warnings.append
    stopped = control.stop(store, "bad")
    assert stopped.id == "bad" and stopped.result.status == "stopped"
    assert store.find_work("bad") is None
    assert len(warnings) == 1 and "a stop cannot be written on it, so it was removed" in warnings[0]


def test_a_failing_loop_step_is_reported_once_and_again_after_it_worked() -> None:
    store = MemoryStore()
    guard = StepGuard(store, logging.getLogger("test"), who="worker w1", worker="w1")
    failures = iter([
        ValueError("too many values to unpack"), ValueError("again"), KeyError("k"), None, OSError(28, "full"),
    ])

    def step() -> None:
        error = next(failures)
        if error is not None:
            raise error

    assert [guard.run("following the store's changes", step) for _ in range(5)] == [False, False, False, True, False]
    details = events(store, EventKind.LOOP_ERROR)
    assert len(details) == 3  # ValueError once, KeyError once, and the next outage once
    assert details[0] == "worker w1: following the store's changes failed: ValueError: too many values to unpack"
    assert all(e.worker == "w1" for e in store.events)


def test_a_step_guard_goes_on_when_even_the_event_cannot_be_written() -> None:
    class Full(MemoryStore):
        def append_event(self, event: object) -> None:  # type: ignore[override]
            raise OSError(28, "No space left on device")

    guard = StepGuard(Full(), logging.getLogger("test"), who="director d1")
    assert not guard.run("director heartbeat", lambda: 1 / 0)
