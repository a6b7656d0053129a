"""The director's heartbeat, stepped with an injected clock on a real FileStore."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantlab.pool.director import DirectorLoop
from quantlab.pool.filestore import FileStore
from quantlab.pool.records import Assignment, ExitReason, Resource, StrategySpec, Work, WorkerSpec, WorkerState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(tmp_path: Path) -> tuple[FileStore, DirectorLoop, Clock]:
    store = FileStore(tmp_path / "store")
    clock = Clock()
    director = DirectorLoop(store, clock=clock)
    director.st_director_init()
    return store, director, clock


def add_worker(store: FileStore, wid: str, lease: float, cap: int = 5) -> None:
    store.put_resource(
        Resource(id=wid, spec=WorkerSpec(name=wid, region="JP", host="h", pid=1, max_strategies=cap),
                 state=WorkerState(lease_expires=lease))
    )


def test_places_and_fences_with_epoch(setup: tuple[FileStore, DirectorLoop, Clock]) -> None:
    store, director, clock = setup
    add_worker(store, "w1", clock.now + 10)
    store.add_work(Work(id="s", spec=StrategySpec(file="/s.py")))
    director.st_director_heartbeat(clock.now)
    work = store.get_work("s")
    assert work.assignment == Assignment(worker="w1", epoch=1)
    assert work.result.status == "assigned"


def test_expired_worker_loses_its_works(setup: tuple[FileStore, DirectorLoop, Clock]) -> None:
    store, director, clock = setup
    add_worker(store, "w1", clock.now + 10)
    store.add_work(Work(id="s", spec=StrategySpec(file="/s.py")))
    director.st_director_heartbeat(clock.now)
    assert store.get_work("s").assignment == Assignment(worker="w1", epoch=1)
    add_worker(store, "w2", clock.now + 100)
    clock.now += 50
    director.st_director_heartbeat(clock.now)
    moved = store.get_work("s")
    assert moved.assignment == Assignment(worker="w2", epoch=3)  # 2 fenced off w1 when it was unassigned
    assert store.find_resource("w1") is None
    assert [e.kind for e in store.read_events()[0] if e.kind in ("worker_lost", "reassigned")] == ["worker_lost", "reassigned"]


def test_never_moves_a_running_strategy(setup: tuple[FileStore, DirectorLoop, Clock]) -> None:
    store, director, clock = setup
    add_worker(store, "busy", clock.now + 10, cap=5)
    store.add_work(Work(id="s", spec=StrategySpec(file="/s.py")))
    director.st_director_heartbeat(clock.now)
    add_worker(store, "idle", clock.now + 10, cap=5)
    director.st_director_heartbeat(clock.now)
    assert store.get_work("s").assignment == Assignment(worker="busy", epoch=1)


def test_pending_with_reason_and_stopped_settles(setup: tuple[FileStore, DirectorLoop, Clock]) -> None:
    store, director, clock = setup
    store.add_work(Work(id="s", spec=StrategySpec(file="/s.py")))
    director.st_director_heartbeat(clock.now)
    work = store.get_work("s")
    assert work.result.status == "pending" and "no live worker" in work.result.reason
    store.update_work("s", lambda w: setattr(w, "desired", "stopped") or w)
    director.st_director_heartbeat(clock.now)
    assert store.get_work("s").result.status == "stopped"


def test_only_one_leader(setup: tuple[FileStore, DirectorLoop, Clock], tmp_path: Path) -> None:
    store, director, clock = setup
    standby = DirectorLoop(FileStore(tmp_path / "store"), clock=clock, director_id="standby")
    standby.st_director_init()
    assert director.leading and not standby.leading
    add_worker(store, "w1", clock.now + 10)
    store.add_work(Work(id="s", spec=StrategySpec(file="/s.py")))
    standby.st_director_heartbeat(clock.now)
    assert store.get_work("s").assignment is None
    director.st_director_exit(ExitReason(type="manual"))
    standby.st_director_heartbeat(clock.now)
    assert standby.leading and store.get_work("s").assignment is not None


def test_forgets_directors_that_died_silently(setup: tuple[FileStore, DirectorLoop, Clock], tmp_path: Path) -> None:
    store, director, clock = setup
    dead = DirectorLoop(FileStore(tmp_path / "store"), clock=clock, director_id="dead")
    dead.st_director_init()
    assert len(store.list_directors()) == 2
    clock.now += director.lease_ttl + 1
    director.st_director_heartbeat(clock.now)
    assert [d.id for d in store.list_directors()] == [director.record.id]
