"""The paper exchange checks the fence where an order takes effect: inside the write that records it.

A writer may pause between any check and its commit. These tests pause one
exactly there (inside the store's compare-and-swap, after the update ran and
before it commits), let a failover or a halt happen meanwhile, and then let
the commit go on.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from quantlab.exchange import halts, intents, reconcile, reservations
from quantlab.exchange.accounts import Account, default_paper_account
from quantlab.exchange.apipool import ApiPool, Caller
from quantlab.store.filestore import FileStore

ORDER = {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": "0.001",
         "price": "1000"}
LINK = "s1-1-1"


def forever() -> float:
    return math.inf


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


@pytest.fixture
def pools(store: FileStore) -> Iterator[tuple[ApiPool, ApiPool]]:
    old = ApiPool([default_paper_account()], store, worker="w1", instance="w1")
    new = ApiPool([default_paper_account()], store, worker="w2", instance="w2")
    yield old, new
    old.close()
    new.close()


def pause_before_commit(store: FileStore, monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], None]) -> None:
    """Run ``meanwhile`` once, between the update that records LINK and the commit of that update."""
    original = store.update_blob
    pending = [meanwhile]

    def update_blob(kind: str, key: str, update: Callable[[bytes | None], bytes | None]) -> bytes | None:
        def paused(raw: bytes | None) -> bytes | None:
            new = update(raw)
            if kind == "paper" and pending and new is not None and LINK.encode() in new:
                pending.pop()()
            return new

        return original(kind, key, paused)

    monkeypatch.setattr(store, "update_blob", update_blob)


def order_at_exchange(pool: ApiPool) -> list[dict[str, Any]]:
    body = pool.read("paper", "get_order_history", {"category": "linear", "orderLinkId": LINK})
    rows: list[dict[str, Any]] = body["result"]["list"]
    return rows


def test_an_old_epochs_order_settled_absent_by_the_new_runner_never_lands(
        store: FileStore, pools: tuple[ApiPool, ApiPool], monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = pools
    epoch = {"current": 1}
    settled: list[reconcile.Reconciled] = []

    def fence() -> float:
        return math.inf if epoch["current"] == 1 else -math.inf

    def failover() -> None:
        epoch["current"] = 2
        request = reconcile.Request(strategy="s1", epoch=2, accounts=["paper"])
        # Long after the old order's window: the new runner may settle it by query now.
        settled.append(reconcile.reconcile(new, store, request, forever, clock=lambda: time.time() + 600))

    pause_before_commit(store, monkeypatch, failover)
    result = old.call("paper", "place_order", ORDER, ["paper"], fence, Caller("s1", 1))
    assert settled and settled[0].ok, settled
    assert settled[0].settled == {LINK: "absent"}
    assert not result.ok and result.kind == "permission", result
    assert order_at_exchange(new) == []
    assert [(i.link_id, i.status) for i in intents.read(store, "s1").settled] == [(LINK, "absent")]


def test_no_order_lands_after_a_halt_has_returned(
        store: FileStore, pools: tuple[ApiPool, ApiPool], monkeypatch: pytest.MonkeyPatch) -> None:
    old, _new = pools
    pause_before_commit(store, monkeypatch, lambda: halts.halt(store, "all"))
    result = old.call("paper", "place_order", ORDER, ["paper"], forever, Caller("s1", 1))
    assert not result.ok and (result.kind, result.ret_code) == ("halted", halts.HALTED), result
    assert order_at_exchange(old) == []


def test_the_new_epoch_and_the_worker_itself_still_write_after_a_seal(
        store: FileStore, pools: tuple[ApiPool, ApiPool]) -> None:
    old, new = pools
    assert old.call("paper", "place_order", ORDER, ["paper"], forever, Caller("s1", 1)).ok
    new.seal("paper", "s1", 2)
    refused = old.call("paper", "place_order", ORDER, ["paper"], forever, Caller("s1", 1))
    assert not refused.ok and "epoch 2 has taken it over" in refused.error
    assert new.call("paper", "place_order", ORDER, ["paper"], forever, Caller("s1", 2)).ok
    assert new.call("paper", "place_order", ORDER, ["paper"], forever, Caller("s2", 1)).ok
    assert old.call("paper", "cancel_all_orders", {"category": "linear", "settleCoin": "USDT"}, ["paper"], forever).ok


# ---- an account's limits hold for every worker that serves it ----


def limited(**limits: Any) -> Account:
    return Account(name="paper", type="paper", **limits)


def test_max_open_orders_of_an_account_hold_across_workers(store: FileStore) -> None:
    """Two workers (pools with their own locks and counts) on one account: one place, one order per round."""
    pools = [ApiPool([limited(max_open_orders=1)], store, worker=f"w{n}", instance=f"w{n}") for n in (1, 2)]
    try:
        for round_ in range(12):
            barrier = threading.Barrier(2)
            results: list[Any] = [None, None]

            def place(n: int) -> None:
                barrier.wait()
                results[n] = pools[n].call("paper", "place_order", ORDER, ["paper"], forever, Caller(f"s{n}", 1))

            threads = [threading.Thread(target=place, args=(n,)) for n in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(r.ok for r in results) == [False, True], (round_, results)
            refused = next(r for r in results if not r.ok)
            assert refused.kind == "risk" and "account paper has 1 open order(s)" in refused.error
            cancel = {"category": "linear", "settleCoin": "USDT"}
            assert pools[0].call("paper", "cancel_all_orders", cancel, ["paper"], forever).ok
    finally:
        for pool in pools:
            pool.close()


def test_orders_per_minute_of_an_account_count_every_workers_orders(store: FileStore) -> None:
    pools = [ApiPool([limited(max_orders_per_minute=2)], store, worker=f"w{n}", instance=f"w{n}") for n in (1, 2)]
    try:
        assert pools[0].call("paper", "place_order", ORDER, ["paper"], forever, Caller("a", 1)).ok
        assert pools[1].call("paper", "place_order", ORDER, ["paper"], forever, Caller("b", 1)).ok
        third = pools[1].call("paper", "place_order", ORDER, ["paper"], forever, Caller("b", 1))
        assert third.kind == "risk" and "account paper sent 2 order(s) in the last minute" in third.error
    finally:
        for pool in pools:
            pool.close()


def test_a_hold_whose_holder_may_not_act_any_more_is_reclaimed(store: FileStore) -> None:
    gone = ApiPool([limited(max_open_orders=1)], store, worker="w1", instance="w1")
    alive = ApiPool([limited(max_open_orders=1)], store, worker="w2", instance="w2",
                    current=lambda strategy, worker, epoch: worker != "w1")
    try:
        # What a worker killed between taking its hold and sending leaves behind.
        reservations.take(store, "paper", limited(max_open_orders=1).limits, 1, ("a", "w1", 1, "w1"), None,
                          lambda *_: True)
        refused = gone.call("paper", "place_order", ORDER, ["paper"], forever, Caller("b", 1))
        assert refused.kind == "risk", refused
        assert alive.call("paper", "place_order", ORDER, ["paper"], forever, Caller("b", 1)).ok
        assert [h.strategy for h in reservations.read(store, "paper").holds] == ["b"]
    finally:
        gone.close()
        alive.close()
