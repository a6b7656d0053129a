from __future__ import annotations

from collections import Counter

from quantlab.director.placement import choose_worker
from quantlab.store.records import Load, Placement, Resource, StrategySpec, Work, WorkerSpec, WorkerState

NOW = 1000.0


def worker(wid: str, region: str = "JP", accounts: tuple[str, ...] = ("paper",), cap: int = 2, cpu: float = 0.0,
           lease: float = NOW + 10) -> Resource:
    return Resource(
        id=wid,
        spec=WorkerSpec(name=wid, region=region, host="h", pid=1, max_strategies=cap, accounts=list(accounts)),
        state=WorkerState(lease_expires=lease, load=Load(cpu=cpu)),
    )


def work(region: str | None = None, pin: str | None = None, accounts: tuple[str, ...] = ()) -> Work:
    return Work(id="s", spec=StrategySpec(file="/x.py", accounts=list(accounts), placement=Placement(region=region, worker=pin)))


def test_least_loaded_wins() -> None:
    choice = choose_worker(work(), [worker("a"), worker("b")], Counter({"a": 1}))
    assert choice.worker == "b"


def test_cpu_breaks_ties() -> None:
    choice = choose_worker(work(), [worker("a", cpu=50), worker("b", cpu=5)], Counter())
    assert choice.worker == "b"


def test_no_live_worker() -> None:
    stopping = worker("a")
    stopping.state.status = "stopping"
    choice = choose_worker(work(), [stopping], Counter())
    assert choice.worker is None and "no live worker" in choice.reason


def test_region_must_match() -> None:
    choice = choose_worker(work(region="US"), [worker("a")], Counter())
    assert choice.worker is None and "region 'US'" in choice.reason
    assert choose_worker(work(region="US"), [worker("a"), worker("u", "US")], Counter()).worker == "u"


def test_pin_must_match() -> None:
    assert choose_worker(work(pin="b"), [worker("a"), worker("b")], Counter({"b": 1})).worker == "b"
    choice = choose_worker(work(pin="c"), [worker("a")], Counter())
    assert choice.worker is None and "'c'" in choice.reason


def test_account_must_be_served() -> None:
    choice = choose_worker(work(accounts=("live1",)), [worker("a")], Counter())
    assert choice.worker is None and "serves account live1" in choice.reason
    assert choose_worker(work(accounts=("live1",)), [worker("a"), worker("b", accounts=("live1",))], Counter()).worker == "b"


def test_capacity_is_never_exceeded() -> None:
    choice = choose_worker(work(), [worker("a", cap=1)], Counter({"a": 1}))
    assert choice.worker is None and "full" in choice.reason and "a (1/1)" in choice.reason
