"""The chaos soak's checks over what the exchange accepted (scripts/chaos_ledger.py), on hand-made evidence.

Each planted fault here is one the soak's records alone cannot see: an order
accepted from a runner that never wrote its answer, accepted while a newer
epoch already stood, or while a halt stood.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from chaos_checks import StrategyLog, check_log  # noqa: E402
from chaos_faults import Watch  # noqa: E402
from chaos_ledger import (  # noqa: E402
    Accepted,
    HaltWindow,
    Sent,
    Truth,
    TruthReader,
    accepted_share,
    check_truth,
    open_intents,
    post_halt_orders,
    stale_epochs,
    unmatched_orders,
    unread_orders,
)
from chaos_report import skipped_violation  # noqa: E402

from quantlab.exchange.accounts import default_paper_account  # noqa: E402
from quantlab.exchange.paper import Guard, PaperExchange  # noqa: E402
from quantlab.store.filestore import FileStore  # noqa: E402
from quantlab.store.records import StrategySpec, Work  # noqa: E402

T0 = 1_000.0  #: wall seconds of the hand-made runs


def records(*lines: dict[str, Any]) -> dict[str, StrategyLog]:
    """One strategy s01 whose runner pid 1 (on worker pid 101) sent the orderLinkIds in ``lines``."""
    log = StrategyLog("s01", Path("/nonexistent"))
    log.add({"k": "init", "pid": 1, "ppid": 101, "m": 0.0, "t": T0, "n": 0, "gen": 0})
    for line in lines:
        log.add({"pid": 1, "ppid": 101, "gen": 0, **line})
    return {"s01": log}


def sent(*links: str) -> dict[str, StrategyLog]:
    return records(*({"k": "send", "m": 0.1 * i, "t": T0 + 0.1 * i, "n": i, "id": link} for i, link in enumerate(links, 1)))


def evidence(*orders: Accepted, epochs: list[tuple[int, float]] | None = None) -> Truth:
    truth = Truth(epochs={"s01": epochs or [(1, T0)]})
    for order in orders:
        truth.orders[order.link] = order
        truth.listed.setdefault(order.account, set()).add(order.link)
        truth.sent[order.link] = Sent(order.link, "s01", order.epoch or 0, 101, "placed")
    return truth


def order(link: str, at: float, epoch: int | None = 1, strategy: str = "s01") -> Accepted:
    return Accepted(link, "paper", strategy, epoch, T0 + at)


def test_orders_of_the_current_epoch_sent_by_their_runner_are_no_violation() -> None:
    truth = evidence(order("s01-1", 0.1), order("s01-2", 0.2), epochs=[(1, T0), (2, T0 + 0.5)])
    assert check_truth(truth, sent("s01-1", "s01-2"), at_end=True) == []


def test_an_order_accepted_after_a_newer_epoch_was_raised_is_stale_though_no_record_shows_it() -> None:
    """The old runner was killed before it wrote its answer: its records show a send and nothing accepted."""
    truth = evidence(order("s01-1", 0.1), order("s01-2", 0.9), epochs=[(1, T0), (2, T0 + 0.5)])
    logs = sent("s01-1", "s01-2")
    assert check_log(logs["s01"]) == []  # the records alone see nothing wrong
    found = stale_epochs(truth)
    assert [v.kind for v in found] == ["stale-epoch"]
    assert "s01-2 of epoch 1" in found[0].detail and "epoch 2" in found[0].detail


def test_an_order_not_matched_to_the_incarnation_that_sent_it_is_a_violation() -> None:
    unstamped = order("s01-1", 0.1, epoch=None, strategy="")
    other_epoch = order("s01-2", 0.2)
    never_sent = order("s01-3", 0.3)
    other_worker = order("s01-4", 0.4)
    truth = evidence(unstamped, other_epoch, never_sent, other_worker)
    truth.sent["s01-2"] = Sent("s01-2", "s01", 3, 101, "placed")
    truth.sent["s01-4"] = Sent("s01-4", "s01", 1, 999, "placed")
    found = unmatched_orders(truth, sent("s01-1", "s01-2", "s01-4"))
    details = sorted(v.detail for v in found)
    assert [v.kind for v in found] == ["unmatched-order"] * 4
    assert "stamped by no strategy" in details[0] and "intent is of epoch 3" in details[1]
    assert "no runner of it recorded sending it" in details[2] and "worker pid 999" in details[3]


def test_an_intent_left_pending_at_the_end_is_a_violation() -> None:
    truth = evidence(order("s01-1", 0.1))
    truth.open = [Sent("s01-2", "s01", 1, 101, "pending")]
    assert [v.kind for v in open_intents(truth)] == ["intent-open"]
    assert "intent-open" not in [v.kind for v in check_truth(truth, sent("s01-1", "s01-2"), at_end=False)]


def test_an_order_accepted_while_a_halt_stood_is_a_violation_whatever_its_scope() -> None:
    truth = evidence(order("s01-1", 0.1), order("s01-2", 1.5), order("s01-3", 3.5))
    truth.halts = [HaltWindow("all", "", T0 + 1.0, T0 + 2.0)]
    found = post_halt_orders(truth)
    assert [v.kind for v in found] == ["post-halt-order"] and "s01-2" in found[0].detail
    truth.halts = [HaltWindow("strategy", "s02", T0 + 1.0, T0 + 2.0), HaltWindow("account", "paper2", T0 + 1.0, T0 + 2.0)]
    assert post_halt_orders(truth) == []  # neither covers s01 on paper
    truth.halts = [HaltWindow("strategy", "s01", T0 + 3.0), HaltWindow("account", "paper", T0 + 3.0)]
    assert len(post_halt_orders(truth)) == 2  # never resumed: the window stays open


def test_an_order_the_soak_never_read_is_a_violation() -> None:
    truth = evidence(order("s01-1", 0.1))
    truth.listed["paper"].add("s01-2")  # rolled out of the account's closed orders between two reads
    assert [v.kind for v in unread_orders(truth)] == ["ledger-unread"]


def test_a_run_where_almost_nothing_traded_fails() -> None:
    truth = evidence(order("s01-1", 0.1))
    logs = sent(*(f"s01-{i}" for i in range(1, 11)))
    found = accepted_share(truth, logs.values())
    assert [v.kind for v in found] == ["few-accepted"] and "accepted 1 of the 10" in found[0].detail
    assert [v.kind for v in accepted_share(Truth(), {}.values())] == ["few-accepted"]  # nothing sent at all


def test_skipped_faults_above_a_small_share_fail_the_run() -> None:
    assert skipped_violation(100, {"worker-kill": 5, "apply": 5}) is None
    found = skipped_violation(100, {"worker-kill": 9, "apply": 5})
    assert found is not None and found.kind == "faults-skipped" and "worker-kill 9" in found.detail


def test_a_watch_after_a_halt_counts_only_a_beat_whose_order_landed() -> None:
    logs = records({"k": "send", "m": 1.0, "t": T0 + 1, "n": 1, "id": "s01-1"},
                   {"k": "beat", "m": 1.1, "t": T0 + 1.1, "n": 1, "id": "s01-1", "m0": 1.0, "ok": False, "code": 170999},
                   {"k": "send", "m": 1.2, "t": T0 + 1.2, "n": 2, "id": "s01-2"},
                   {"k": "beat", "m": 1.3, "t": T0 + 1.3, "n": 2, "id": "s01-2", "m0": 1.2, "ok": True, "code": 0})
    refused, accepted = logs["s01"].runners[0].beats
    watch = Watch("s01", 0.5, frozenset(), 0.5, needs_ok=True)
    assert not watch.accepts(refused) and watch.accepts(accepted)


def test_the_reader_gathers_orders_epochs_and_intents_from_the_store(tmp_path: Path) -> None:
    """Through the store's API: an order's stamp and commit time, the epochs as they rise, the open intents."""
    store = FileStore(tmp_path / "store")
    store.add_work(Work(id="s01", spec=StrategySpec(file="x.py"), epoch=3))
    paper = PaperExchange(default_paper_account(), store)
    reply = paper.call("place_order", {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit",
                                       "qty": "0.001", "price": "1000", "timeInForce": "IOC", "orderLinkId": "s01-1"},
                       Guard("s01", 3, lambda: None))
    assert reply["retCode"] == 0
    reader = TruthReader(tmp_path, "", ["s01"])
    reader.read_once(ledger=True)
    store.update_work("s01", lambda w: setattr(w, "epoch", 4) or w)
    reader.stop()
    truth = reader.truth
    assert [e for e, _ in truth.epochs["s01"]] == [3, 4] and truth.failed_reads == 0
    accepted = truth.orders["s01-1"]
    assert (accepted.strategy, accepted.epoch, accepted.account) == ("s01", 3, "paper")
    assert abs(accepted.created - reply["time"] / 1000) < 1.0 and truth.listed == {"paper": {"s01-1"}}


def test_a_live_order_is_judged_by_when_it_was_signed_not_when_it_landed() -> None:
    """A copy signed while its epoch was current may land up to its window later; one signed after is stale."""
    in_window = Accepted("s01-1", "live", "s01", 1, T0 + 0.9, judged=T0 + 0.4)
    signed_late = Accepted("s01-2", "live", "s01", 1, T0 + 0.9, judged=T0 + 0.6)
    truth = evidence(in_window, signed_late, epochs=[(1, T0), (2, T0 + 0.5)])
    found = stale_epochs(truth)
    assert [(v.kind, v.detail.split()[0]) for v in found] == [("stale-epoch", "s01-2")]
    assert "signed 0.100s after epoch 2" in found[0].detail


def test_a_live_order_no_intent_names_is_unmatched_at_the_end() -> None:
    truth = evidence(order("s01-1", 0.1))
    truth.live_unmatched = ["by-hand-1"]
    found = check_truth(truth, sent("s01-1"), at_end=True)
    assert [v.kind for v in found] == ["unmatched-order"] and "by-hand-1" in found[0].detail
