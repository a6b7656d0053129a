"""The Work machine: its rules as tables, and random interleavings of every writer through the store's CAS."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from quantlab.errors import NotFound
from quantlab.store import workmachine as wm
from quantlab.store.memstore import MemoryStore
from quantlab.store.records import Assignment, Placement, StrategyResult, StrategySpec, Work

NOW = 100.0
SPEC = StrategySpec(file="/s.py")


def work(desired: str = "running", status: str = "pending", epoch: int = 0, holder: str | None = None,
         held_at: int | None = None, adopted: bool = True) -> Work:
    assignment = None if holder is None else Assignment(worker=holder, epoch=held_at or epoch, adopted=adopted)
    return Work(id="s", spec=SPEC, desired=desired, epoch=epoch, assignment=assignment,  # type: ignore[arg-type]
                result=StrategyResult(status=status))  # type: ignore[arg-type]


def shown(w: Work | None) -> tuple[Any, ...] | None:
    """What a row compares: desired, status, holder, its epoch, adopted, the Work's epoch."""
    if w is None:
        return None
    a = w.assignment
    return (w.desired, w.result.status, a and a.worker, a and a.epoch, a and a.adopted, w.epoch)


RUNNING = work(status="running", epoch=3, holder="w1")

# (rule, the Work before, the transition, what it shows after; None: deleted; Refused: does not apply)
TABLE: list[tuple[str, Work, wm.Transition, Any]] = [
    ("a stop of a Work nobody holds settles at once",
     work(), wm.request_stop(NOW), ("stopped", "stopped", None, None, None, 1)),
    ("a stop of a Work placed but not taken takes it back and settles",
     work(status="assigned", epoch=3, holder="w1", adopted=False), wm.request_stop(NOW),
     ("stopped", "stopped", None, None, None, 4)),
    ("a stop of a running Work is its holder's to carry out",
     RUNNING, wm.request_stop(NOW), ("stopped", "running", "w1", 3, True, 3)),
    ("a start of a stopped Work sends it back to placement",
     work(desired="stopped", status="stopped", epoch=3), wm.request_start(NOW), ("running", "pending", None, None, None, 3)),
    ("a start of a running Work changes nothing",
     RUNNING, wm.request_start(NOW), ("running", "running", "w1", 3, True, 3)),
    ("a restart of a running Work leaves it with its holder (restart_seq tells it)",
     RUNNING, wm.request_start(NOW, restart=True), ("running", "running", "w1", 3, True, 3)),
    ("a removal of a Work nobody holds deletes it",
     work(desired="stopped", status="stopped", epoch=3), wm.remove(NOW), None),
    ("a removal of a running Work fences its holder, who deletes it when its child is gone",
     RUNNING, wm.remove(NOW), ("removed", "stopping", "w1", 3, True, 4)),
    ("nothing but an assign applies to a Work being removed",
     work(desired="removed", epoch=4, holder="w1", held_at=3), wm.request_start(NOW), wm.Refused),
    ("an assign of an id being removed waits for the old holder",
     work(desired="removed", epoch=4, holder="w1", held_at=3), wm.resubmit(SPEC, NOW),
     ("running", "pending", "w1", 3, True, 4)),
    ("a new placement fences the holder and keeps it until it lets go",
     RUNNING, wm.update_spec(msgspec.structs.replace(SPEC, placement=Placement(worker="w2")), NOW),
     ("running", "pending", "w1", 3, True, 4)),
    ("a new interval restarts in place",
     RUNNING, wm.update_spec(msgspec.structs.replace(SPEC, interval=0.2), NOW), ("running", "running", "w1", 3, True, 3)),
    ("placing raises the epoch; the worker has yet to take it",
     work(epoch=3), wm.place("w2", NOW), ("running", "assigned", "w2", 4, False, 4)),
    ("a held Work is not placed again", RUNNING, wm.place("w2", NOW), wm.Refused),
    ("a failed Work is not placed", work(status="failed", epoch=3), wm.place("w2", NOW), wm.Refused),
    ("a worker takes what it was placed on at that epoch",
     work(status="assigned", epoch=4, holder="w2", adopted=False), wm.adopt("w2", 4, NOW),
     ("running", "starting", "w2", 4, True, 4)),
    ("a worker cannot take a Work placed at another epoch",
     work(status="assigned", epoch=5, holder="w2", adopted=False), wm.adopt("w2", 4, NOW), wm.Refused),
    ("a lost worker's Work goes back to placement at a new epoch",
     RUNNING, wm.expire_worker("w1", "worker w1 lost", NOW), ("running", "pending", None, None, None, 4)),
    ("a lost worker's removed Work is deleted",
     work(desired="removed", epoch=4, holder="w1", held_at=3), wm.expire_worker("w1", "lost", NOW), None),
    ("a stopped Work still placed on a worker that never took it is settled by the director",
     work(desired="stopped", status="assigned", epoch=3, holder="w1", adopted=False), wm.settle(NOW),
     ("stopped", "stopped", None, None, None, 4)),
    ("the director leaves a Work its holder runs alone", work(desired="stopped", status="stopping", epoch=3, holder="w1"),
     wm.settle(NOW), wm.Refused),
    ("a report of a fenced-off holder is refused",
     work(desired="removed", epoch=4, holder="w1", held_at=3), wm.report("w1", 3, StrategyResult(status="running"), NOW),
     wm.Refused),
    ("a holder whose child stopped on an operator stop leaves it stopped",
     work(desired="stopped", status="stopping", epoch=3, holder="w1"),
     wm.release("w1", 3, "stopped", StrategyResult(status="stopping", reason="stopped by operator"), NOW),
     ("stopped", "stopped", None, None, None, 3)),
    ("a start during the stop sends it back to placement once the child is gone",
     RUNNING, wm.release("w1", 3, "stopped", StrategyResult(status="stopping"), NOW),
     ("running", "pending", None, None, None, 3)),
    ("a failed child's holder leaves it failed", RUNNING,
     wm.release("w1", 3, "failed", StrategyResult(status="error", reason="6 errors"), NOW),
     ("running", "failed", None, None, None, 3)),
    ("a draining holder of a removed Work deletes it as it lets go",
     work(desired="removed", epoch=4, holder="w1", held_at=3),
     wm.release("w1", 3, "released", StrategyResult(status="stopping"), NOW), None),
    ("a draining holder of a moved Work frees it for placement",
     work(epoch=4, holder="w1", held_at=3), wm.release("w1", 3, "released", StrategyResult(), NOW),
     ("running", "pending", None, None, None, 4)),
    ("only the holder lets go", RUNNING, wm.release("w2", 3, "stopped", StrategyResult(), NOW), wm.Refused),
]


@pytest.mark.parametrize("before, transition, after", [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_rule(before: Work, transition: wm.Transition, after: Any) -> None:
    if after is wm.Refused:
        with pytest.raises(wm.Refused):
            transition(msgspec.structs.replace(before))
        return
    assert shown(transition(msgspec.structs.replace(before)).work) == after


def test_the_fenced_holder_is_told_why() -> None:
    assert wm.exit_reason(None, "w1", 3).type == "removed"  # type: ignore[union-attr]
    assert wm.exit_reason(work(desired="removed", epoch=4, holder="w1", held_at=3), "w1", 3).type == "removed"  # type: ignore[union-attr]
    assert wm.exit_reason(work(epoch=4, holder="w1", held_at=3), "w1", 3).type == "moved_away"  # type: ignore[union-attr]
    assert wm.exit_reason(work(epoch=4, holder="w2"), "w1", 3).type == "reassigned"  # type: ignore[union-attr]
    assert wm.exit_reason(work(epoch=4), "w1", 3).type == "lease_lost"  # type: ignore[union-attr]
    assert wm.exit_reason(RUNNING, "w1", 3) is None


def test_a_deletion_that_lost_a_race_decides_again_on_the_new_record() -> None:
    store = MemoryStore()
    store.add_work(work(desired="stopped", status="stopped"))
    racing = wm.remove(NOW)

    def resubmitted_meanwhile(w: Work) -> wm.Change:
        change = racing(w)
        if not getattr(resubmitted_meanwhile, "done", False):
            resubmitted_meanwhile.done = True  # type: ignore[attr-defined]
            wm.apply(store, "s", wm.request_start(NOW))  # lands between the decision and the delete
        return change

    wm.apply(store, "s", resubmitted_meanwhile)
    assert store.find_work("s") is None


def test_since_moves_with_the_status_only_whoever_writes_the_result() -> None:
    store = MemoryStore()
    store.add_work(wm.submit("s", SPEC, 10.0))
    assert store.get_work("s").result.since == 10.0
    wm.apply(store, "s", wm.place("w1", 20.0))
    epoch = store.get_work("s").epoch
    wm.apply(store, "s", wm.adopt("w1", epoch, 30.0))
    assert (store.get_work("s").result.status, store.get_work("s").result.since) == ("starting", 30.0)
    # The worker's reports carry its own copy of the result, whose since it never sets.
    wm.apply(store, "s", wm.report("w1", epoch, StrategyResult(status="starting", heartbeats=0), 35.0))
    assert store.get_work("s").result.since == 30.0
    wm.apply(store, "s", wm.report("w1", epoch, StrategyResult(status="running", heartbeats=1), 40.0))
    wm.apply(store, "s", wm.report("w1", epoch, StrategyResult(status="running", heartbeats=9), 50.0))
    result = store.get_work("s").result
    assert (result.status, result.since, result.updated) == ("running", 40.0, 50.0)
    wm.apply(store, "s", wm.request_stop(60.0))  # asked, not yet done: still running since 40
    assert store.get_work("s").result.since == 40.0


# ---- every writer at once ----

WORKERS = ("w1", "w2")


class Writers(RuleBasedStateMachine):
    """The operator, the director and two workers apply transitions in random orders through the CAS.

    Workers and the director act on what they read earlier (``seen``), as the real ones do,
    so their decisions are often stale by the time they land. A worker runs a child only
    after its adoption landed, stops it when the Work fences it or asks it to stop, and lets
    go of the Work only once the child is gone. A worker that dies takes its children with it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryStore()
        self.store.add_work(wm.submit("s", SPEC, NOW))
        self.seen: dict[str, Work | None] = {w: None for w in (*WORKERS, "director")}
        self.children: dict[str, int] = {}  #: worker -> the epoch its live child runs at
        self.last_epoch = 0

    def now(self) -> Work | None:
        return self.store.find_work("s")

    def _try(self, transition: wm.Transition) -> wm.Change | None:
        try:
            return wm.try_apply(self.store, "s", transition)
        except NotFound:
            return None

    # the operator
    @rule(kind=st.sampled_from(["stop", "start", "restart", "remove", "move"]))
    def operator(self, kind: str) -> None:
        transitions = {
            "stop": wm.request_stop(NOW), "start": wm.request_start(NOW), "restart": wm.request_start(NOW, restart=True),
            "remove": wm.remove(NOW),
            "move": wm.update_spec(msgspec.structs.replace(SPEC, accounts=[f"a{self.last_epoch}"]), NOW),
        }
        self._try(transitions[kind])

    @rule()
    def assign_again(self) -> None:
        if self.now() is None:
            self.store.add_work(wm.submit("s", SPEC, NOW))
        else:
            self._try(wm.resubmit(SPEC, NOW))

    # readers
    @rule(who=st.sampled_from([*WORKERS, "director"]))
    def read(self, who: str) -> None:
        self.seen[who] = self.now()

    # the director
    @rule(worker=st.sampled_from(WORKERS))
    def place(self, worker: str) -> None:
        if (seen := self.seen["director"]) is not None and wm.wants_a_worker(seen):
            self._try(wm.place(worker, NOW))

    @rule()
    def settle(self) -> None:
        if (seen := self.seen["director"]) is not None and wm.needs_settling(seen):
            self._try(wm.settle(NOW))

    @rule(worker=st.sampled_from(WORKERS))
    def worker_dies_and_expires(self, worker: str) -> None:
        self.children.pop(worker, None)  # its children die with it (the fence kills them first)
        self._try(wm.expire_worker(worker, f"worker {worker} lost", NOW))

    # the workers
    @rule(worker=st.sampled_from(WORKERS))
    def adopt_and_run(self, worker: str) -> None:
        seen = self.seen[worker]
        if worker in self.children or seen is None or not wm.placed_on(seen, worker):
            return
        assert seen.assignment is not None
        if self._try(wm.adopt(worker, seen.assignment.epoch, NOW)) is not None:
            self.children[worker] = seen.assignment.epoch

    @rule(worker=st.sampled_from(WORKERS))
    def child_follows_the_store(self, worker: str) -> None:
        """The child stops when the Work (as the worker read it) fences it off or wants it stopped."""
        seen, epoch = self.seen[worker], self.children.get(worker)
        if epoch is not None and (wm.exit_reason(seen, worker, epoch) is not None or seen is None
                                  or seen.desired != "running"):
            del self.children[worker]
            self._try(wm.release(worker, epoch, "stopped", StrategyResult(status="stopping"), NOW))

    @rule(worker=st.sampled_from(WORKERS))
    def child_fails(self, worker: str) -> None:
        epoch = self.children.pop(worker, None)
        if epoch is not None:
            self._try(wm.release(worker, epoch, "failed", StrategyResult(status="error"), NOW))

    @rule(worker=st.sampled_from(WORKERS))
    def let_go_of_what_it_does_not_run(self, worker: str) -> None:
        seen = self.seen[worker]
        if worker not in self.children and seen is not None and seen.assignment is not None \
                and seen.assignment.worker == worker and not wm.placed_on(seen, worker):
            self._try(wm.release(worker, seen.assignment.epoch, "stopped", seen.result, NOW))

    # what must always hold
    @invariant()
    def one_runner_at_most(self) -> None:
        assert len(self.children) <= 1, f"two live children: {self.children}"

    @invariant()
    def a_live_child_is_held_by_its_worker(self) -> None:
        w = self.now()
        for worker, epoch in self.children.items():
            assert w is not None and wm.holds(w, worker, epoch), (worker, epoch, w)

    @invariant()
    def the_epoch_never_goes_down(self) -> None:
        w = self.now()
        if w is not None:
            assert w.epoch >= self.last_epoch
            self.last_epoch = w.epoch

    @invariant()
    def capacity_counts_only_what_runs_or_is_about_to(self) -> None:
        w = self.now()
        if w is not None and wm.occupies(w):
            assert w.assignment is not None
            assert w.assignment.worker in self.children or (w.desired == "running" and not w.assignment.adopted) \
                or wm.draining(w) or w.assignment.adopted
        if w is not None and w.assignment is not None and not w.assignment.adopted and w.desired != "running":
            assert not wm.occupies(w)

    def teardown(self) -> None:
        """Every stop settles: once every worker and the director have looked again, it is stopped."""
        for _ in range(3):
            for worker in WORKERS:
                self.read(worker)
                self.child_follows_the_store(worker)
                self.let_go_of_what_it_does_not_run(worker)
            self.read("director")
            self.settle()
        w = self.now()
        if w is not None and w.desired == "stopped":
            assert (w.result.status, w.assignment) == ("stopped", None), w
        if w is not None and w.desired == "removed":
            raise AssertionError(f"a removed Work nobody runs was not deleted: {w}")


Writers.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_every_writer_at_once = Writers.TestCase


def test_an_adoption_wakes_nobody_but_a_placement_and_a_stop_do() -> None:
    """Only the adopting worker cares; a director that decides on a view without it decides again on the record."""
    store = MemoryStore()
    store.add_work(wm.submit("s", SPEC, NOW))
    cursor = store.changes_end()
    wm.apply(store, "s", wm.place("w1", NOW))
    placed, cursor, _ = store.changes(cursor)
    wm.apply(store, "s", wm.adopt("w1", 1, NOW))
    adopted, cursor, _ = store.changes(cursor)
    wm.apply(store, "s", wm.request_stop(NOW))
    stopped, _, _ = store.changes(cursor)
    assert ([c.worker for c in placed], adopted, [c.worker for c in stopped]) == (["w1"], [], ["w1"])
