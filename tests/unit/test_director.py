"""The director's heartbeat, stepped with injected clocks on the in-memory store."""

from __future__ import annotations

import logging

import pytest

from quantlab.director.loop import DirectorLoop
from quantlab.store.memstore import MemoryStore
from quantlab.store.records import Assignment, ExitReason, Resource, StrategySpec, Work, WorkerSpec, WorkerState

TTL = 10.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Setup:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.wall = Clock(1000.0)
        self.mono = Clock(50.0)
        self.director = self.new_director("d1")
        self.director.st_director_init()

    def new_director(self, name: str) -> DirectorLoop:
        return DirectorLoop(self.store, clock=self.wall, mono=self.mono, director_id=name, lease_ttl=TTL)

    def advance(self, seconds: float) -> None:
        self.wall.now += seconds
        self.mono.now += seconds

    def beat(self, director: DirectorLoop | None = None) -> None:
        (director or self.director).st_director_heartbeat(self.wall.now)

    def worker(self, wid: str, cap: int = 5, ttl: float = TTL) -> None:
        """Register a worker, or renew its lease (as a worker does: a renewal is no change on the feed)."""
        def put(current: Resource | None) -> Resource:
            if current is not None:
                current.state.renewals += 1
                return current
            return Resource(id=wid, spec=WorkerSpec(name=wid, region="JP", host="h", pid=1, max_strategies=cap,
                                                    lease_ttl=ttl, instance=f"{wid}-1"), state=WorkerState())

        self.store.update_resource(wid, put, announce=self.store.find_resource(wid) is None)

    def work(self, wid: str = "s") -> Work:
        return self.store.add_work(Work(id=wid, spec=StrategySpec(file="/s.py")))


@pytest.fixture
def lab() -> Setup:
    return Setup()


def test_places_and_fences_with_epoch(lab: Setup) -> None:
    lab.worker("w1")
    lab.work()
    lab.beat()
    work = lab.store.get_work("s")
    assert work.assignment == Assignment(worker="w1", epoch=1)
    assert work.result.status == "assigned" and work.leader_epoch == lab.director.lead.term


def test_a_silent_worker_loses_its_works_after_lease_plus_margin(lab: Setup) -> None:
    lab.worker("w1")
    lab.work()
    lab.beat()
    lab.worker("w2")
    for _ in range(15):  # w2 renews every second, w1 stays silent
        lab.advance(1.0)
        lab.worker("w2")
        lab.beat()
        if lab.store.get_work("s").assignment != Assignment(worker="w1", epoch=1):
            break
    assert lab.mono.now - 50.0 > TTL * 1.2  # not before the lease plus the margin
    moved = lab.store.get_work("s")
    assert moved.assignment == Assignment(worker="w2", epoch=3)  # 2 fenced off w1 when it was unassigned
    assert lab.store.find_resource("w1") is None and lab.store.find_resource("w2") is not None
    kinds = [e.kind for e in lab.store.read_events()[0] if e.kind in ("worker_lost", "reassigned")]
    assert kinds == ["worker_lost", "reassigned"]


def test_a_wall_clock_jump_expires_nobody(lab: Setup) -> None:
    lab.worker("w1")
    lab.work()
    lab.beat()
    for _ in range(5):
        lab.wall.now += 3600  # NTP, a resumed VM: the wall clock leaps, the monotonic one does not
        lab.mono.now += 1.0
        lab.worker("w1")
        lab.beat()
    assert lab.store.get_work("s").assignment == Assignment(worker="w1", epoch=1)
    assert lab.store.find_resource("w1") is not None


def test_never_moves_a_running_strategy(lab: Setup) -> None:
    lab.worker("busy")
    lab.work()
    lab.beat()
    lab.worker("idle")
    lab.beat()
    assert lab.store.get_work("s").assignment == Assignment(worker="busy", epoch=1)


def test_pending_with_reason_and_stopped_settles(lab: Setup) -> None:
    lab.work()
    lab.beat()
    work = lab.store.get_work("s")
    assert work.result.status == "pending" and "no live worker" in work.result.reason
    lab.store.update_work("s", lambda w: setattr(w, "desired", "stopped") or w)
    lab.beat()
    assert lab.store.get_work("s").result.status == "stopped"


def test_a_recreated_work_never_reuses_an_epoch(lab: Setup) -> None:
    lab.worker("w1")
    lab.work()
    lab.beat()
    old = lab.store.get_work("s").assignment
    assert old is not None
    lab.store.remove_work("s")
    lab.work()
    lab.beat()
    new = lab.store.get_work("s").assignment
    assert new is not None and new.worker == "w1" and new.epoch > old.epoch


def test_only_one_leader_and_a_clean_exit_hands_over_at_once(lab: Setup) -> None:
    standby = lab.new_director("d2")
    standby.st_director_init()
    assert lab.director.leading and not standby.leading
    lab.worker("w1")
    lab.work()
    lab.beat(standby)
    assert lab.store.get_work("s").assignment is None
    lab.director.st_director_exit(ExitReason(type="manual"))
    lab.beat(standby)
    assert standby.leading and lab.store.get_work("s").assignment is not None


def test_a_paused_leader_is_replaced_and_steps_down_without_writing(lab: Setup) -> None:
    standby = lab.new_director("d2")
    standby.st_director_init()
    lab.worker("w1")
    first_term = lab.director.lead.term
    for _ in range(13):  # the leader is paused: only the standby beats
        lab.advance(1.0)
        lab.worker("w1")
        lab.beat(standby)
    assert standby.leading and standby.lead.term == (first_term or 0) + 1
    lab.work()
    lab.beat(standby)
    placed = lab.store.get_work("s")
    assert placed.assignment is not None and placed.leader_epoch == standby.lead.term
    lab.store.update_work("s", lambda w: setattr(w, "desired", "stopped") or w)
    before = lab.store.get_work("s")
    lab.beat()  # the old leader resumes: it finds itself deposed and writes nothing
    assert not lab.director.leading
    assert lab.store.get_work("s") == before


def test_a_write_from_an_older_term_is_refused(lab: Setup) -> None:
    lab.worker("w1")
    lab.work()
    lab.store.update_work("s", lambda w: setattr(w, "leader_epoch", 99) or w)  # a newer leader wrote it
    lab.beat()
    assert lab.store.get_work("s").assignment is None


def test_forgets_directors_that_died_silently(lab: Setup) -> None:
    dead = lab.new_director("dead")
    dead.st_director_init()
    assert len(lab.store.list_directors()) == 2
    for _ in range(14):
        lab.advance(1.0)
        lab.beat()
    assert [d.id for d in lab.store.list_directors()] == ["d1"]


def test_a_freed_place_goes_to_a_waiting_work_at_once(lab: Setup) -> None:
    lab.worker("w1", cap=1)
    lab.work("a")
    lab.beat()
    lab.work("b")
    lab.beat()
    assert "full" in lab.store.get_work("b").result.reason

    def released(w: Work) -> Work:  # what the worker writes when a stop completes
        w.assignment, w.desired, w.result.status = None, "stopped", "stopped"
        return w

    lab.store.update_work("a", released)
    lab.director.st_director_heartbeat(lab.wall.now, renew=False)  # a change-driven heartbeat, no full pass
    assert lab.store.get_work("b").assignment == Assignment(worker="w1", epoch=1)


def lost_or_moved(lab: Setup) -> list[tuple[str, str | None]]:
    return [(e.kind, e.worker) for e in lab.store.read_events()[0] if e.kind in ("worker_lost", "reassigned")]


def test_change_driven_heartbeats_judge_workers_on_a_fresh_read(lab: Setup) -> None:
    lab.worker("live", ttl=2.0)
    lab.worker("dead", ttl=2.0)
    lab.work("a")
    lab.work("b")
    lab.beat()  # a timer heartbeat: the only one that reads every worker record
    assert {lab.store.get_work(w).assignment.worker for w in "ab"} == {"live", "dead"}  # type: ignore[union-attr]
    on_live = "a" if lab.store.get_work("a").assignment == Assignment(worker="live", epoch=1) else "b"
    for step in range(1, 21):  # 10 s: the timer beats every 4 s, changes wake the director every half second
        lab.advance(0.5)
        lab.worker("live", ttl=2.0)
        lab.director.st_director_heartbeat(lab.wall.now, renew=step % 8 == 0)
    assert lab.store.get_work(on_live).assignment == Assignment(worker="live", epoch=1)
    assert lab.store.find_resource("live") is not None and lab.store.find_resource("dead") is None
    assert lost_or_moved(lab) == [("worker_lost", "dead"), ("reassigned", "dead")]


def test_a_failed_conditional_removal_keeps_the_worker_and_its_works(lab: Setup) -> None:
    lab.worker("w1", ttl=2.0)
    lab.work()
    lab.beat()
    lab.advance(3.0)  # past the lease plus its margin since the director saw w1 renew
    token = lab.director.workers.token("w1")
    lab.worker("w1", ttl=2.0)  # w1 renews between the director's read and its removal
    assert not lab.director.remove_lost("w1", token)
    assert "w1" in lab.director.resources
    lab.director.st_director_heartbeat(lab.wall.now, renew=False)
    assert lab.store.get_work("s").assignment == Assignment(worker="w1", epoch=1)
    assert lab.store.find_resource("w1") is not None and lost_or_moved(lab) == []


def test_warns_when_a_heartbeat_outlasts_a_worker_lease(lab: Setup, caplog: pytest.LogCaptureFixture) -> None:
    lab.director.heartbeat = 4.0
    lab.worker("w1")
    lab.worker("w2", ttl=2.0)
    with caplog.at_level(logging.WARNING, logger="quantlab.director"):
        lab.beat()
    assert [r.getMessage() for r in caplog.records] == [
        "heartbeat 4s is longer than worker w2's lease (2s): a lost worker is noticed up to two heartbeats after its "
        "lease runs out"
    ]
