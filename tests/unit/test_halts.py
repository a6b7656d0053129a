"""The kill switch in the API pool: halts from the store, what passes them, failing closed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from quantlab import killswitch
from quantlab.errors import CorruptRecord, NotFound
from quantlab.exchange import halts, intents
from quantlab.exchange.accounts import default_paper_account
from quantlab.exchange.apipool import ApiPool, Caller
from quantlab.exchange.calls import opens_exposure
from quantlab.exchange.signing import MAX_RECV_WINDOW_MS, WINDOW_SLACK, Stamp
from quantlab.store.filestore import FileStore


def forever() -> float:
    return math.inf


def market(side: str = "Buy", **extra: Any) -> dict[str, Any]:
    return {"category": "linear", "symbol": "BTCUSDT", "side": side, "orderType": "Market", "qty": "0.01", **extra}


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


@pytest.fixture
def pool(store: FileStore) -> ApiPool:
    pool = ApiPool([default_paper_account()], store, worker="w1")
    yield pool  # type: ignore[misc]
    pool.close()


def place(pool: ApiPool, kwargs: dict[str, Any], strategy: str = "s1") -> Any:
    return pool.call("paper", "place_order", kwargs, ["paper"], forever, Caller(strategy, 1))


@pytest.mark.parametrize(
    ("scope", "target", "covered"),
    [("all", "", True), ("account", "paper", True), ("account", "other", False), ("worker", "w1", True),
     ("worker", "w2", False), ("strategy", "s1", True), ("strategy", "s2", False)],
)
def test_a_halt_refuses_what_opens_exposure_where_it_applies(
    pool: ApiPool, store: FileStore, scope: halts.Scope, target: str, covered: bool
) -> None:
    assert place(pool, market()).ok  # a long position to reduce later
    halts.halt(store, scope, target)
    opened = place(pool, market())
    assert opened.ok is not covered
    if covered:
        assert (opened.kind, opened.ret_code) == ("halted", halts.HALTED) and "halted" in opened.error
    assert place(pool, market("Sell", reduceOnly=True)).ok  # reducing always passes
    assert pool.call("paper", "cancel_all_orders", {"category": "linear", "settleCoin": "USDT"}, ["paper"], forever).ok
    assert pool.call("paper", "get_positions", {"category": "linear", "symbol": "BTCUSDT"}, ["paper"]).ok
    assert halts.resume(store, scope, target)
    assert place(pool, market()).ok


def test_an_unreadable_halt_state_halts_everything(pool: ApiPool, store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(kind: str, key: str) -> bytes | None:
        if kind == halts.BLOB_KIND:
            raise OSError(5, "Input/output error")
        return original(kind, key)

    original = store.get_blob
    monkeypatch.setattr(store, "get_blob", broken)
    refused = place(pool, market())
    assert refused.kind == "halted" and "unreadable" in refused.error
    assert pool.call("paper", "get_wallet_balance", {"accountType": "UNIFIED"}, ["paper"]).ok


def test_halts_are_one_entry_per_scope_and_survive_a_new_reader(store: FileStore) -> None:
    halts.halt(store, "account", "a", cancel_orders=True)
    halts.halt(store, "account", "a")
    halts.halt(store, "all")
    found = halts.read(FileStore(store.root))  # another process's view
    assert [(h.scope, h.target, h.cancel_orders) for h in found.halts] == [("account", "a", False), ("all", "", False)]
    assert not halts.resume(store, "worker", "w9")


def test_a_halts_document_that_does_not_decode_is_a_corrupt_record(pool: ApiPool, store: FileStore) -> None:
    """`qlab halt`/`resume`/`status` then say so in one line; an order is still refused (fail closed)."""
    halts.halt(store, "strategy", "s9")
    store.update_blob(halts.BLOB_KIND, halts.BLOB_KEY, lambda raw: b'{"halts":[{"scope":"all","ts":NaN}]}')
    for action in (lambda: halts.read(store), lambda: halts.resume(store, "strategy", "s9"),
                   lambda: halts.halt(store, "all")):
        with pytest.raises(CorruptRecord, match="halts document .* does not decode"):
            action()
    assert place(pool, market()).kind == "halted"


def test_a_repair_replaces_only_a_document_that_does_not_decode_with_a_halt_on_everything(
        pool: ApiPool, store: FileStore) -> None:
    with pytest.raises(NotFound, match="nothing to repair"):
        halts.repair(store)
    halts.halt(store, "strategy", "s9")
    with pytest.raises(NotFound, match="nothing to repair"):
        halts.repair(store)
    assert [h.label for h in halts.read(store).halts] == ["strategy s9"]  # kept
    store.update_blob(halts.BLOB_KIND, halts.BLOB_KEY, lambda raw: b"{")
    assert halts.repair(store).scope == "all"
    assert [h.label for h in halts.read(store).halts] == ["all"]
    assert place(pool, market()).kind == "halted"
    assert halts.resume(store, "all") and place(pool, market()).ok


def test_a_halt_waits_for_the_longest_window_of_the_live_orders_still_open(store: FileStore) -> None:
    """Paper orders (no window: the paper write checks the halt itself) and settled ones add no wait."""
    assert halts.landing_wait(store) == 0.0
    intents.begin(store, "s1", 1, "w", "paper", [market()], expires=0.0)
    assert halts.landing_wait(store) == 0.0
    live = intents.begin(store, "s2", 1, "w", "live", [market(), market()], expires=0.0,
                         stamp=Stamp(signed=1, recv_window=1500))
    intents.begin(store, "s3", 1, "w", "live", [market()], expires=0.0, stamp=Stamp(signed=1, recv_window=700))
    assert halts.landing_wait(store) == 1.5 + WINDOW_SLACK
    intents.settle(store, "s2", {i.link_id: intents.Outcome("placed") for i in live}, live)
    assert halts.landing_wait(store) == 0.7 + WINDOW_SLACK
    store.update_blob(intents.BLOB_KIND, "s4", lambda raw: b"[")
    assert halts.landing_wait(store) == MAX_RECV_WINDOW_MS / 1000 + WINDOW_SLACK  # unreadable: the longest


def test_qlab_halt_says_until_when_an_order_signed_before_it_can_land(store: FileStore) -> None:
    intents.begin(store, "s1", 1, "w", "live", [market()], expires=0.0, stamp=Stamp(signed=1, recv_window=2000))
    slept: list[float] = []
    said = killswitch.halt(store, "all", "", clock=lambda: 1_000_000.0, sleep=slept.append)
    assert said.splitlines()[0].startswith("halted: all: ")
    assert said.splitlines()[1].startswith("halted at ") and "; no order signed before it can land after " in said
    assert len(slept) == 1 and 2.0 < slept[0] <= 2.0 + WINDOW_SLACK


@pytest.mark.parametrize(
    ("method", "kwargs", "opens"),
    [("place_order", market(), True), ("place_order", market(reduceOnly=True), False),
     ("place_order", market(reduceOnly="true"), False), ("amend_order", {}, True), ("cancel_order", {}, False),
     ("cancel_all_orders", {}, False), ("set_leverage", {}, True), ("withdraw", {}, True),
     ("create_internal_transfer", {}, True), ("get_positions", {}, False),
     ("place_batch_order", {"request": [market(reduceOnly=True), market(reduceOnly=True)]}, False),
     ("place_batch_order", {"request": [market(reduceOnly=True), market()]}, True)],
)
def test_what_opens_exposure(method: str, kwargs: dict[str, Any], opens: bool) -> None:
    assert opens_exposure(method, kwargs) is opens
