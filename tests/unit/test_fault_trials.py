"""The fault trials' verdict (scripts/fault_trials.py ``judge``) on hand-made ledgers: each planted order that
should not exist is caught, and the same ledger without it passes."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from chaos_ledger import Accepted, HaltWindow, Sent, Truth, check_truth  # noqa: E402
from fault_trials import judge, summary, Outcome  # noqa: E402

T0 = 1_000.0  #: wall seconds of the hand-made trials


def ledger(*orders: Accepted, status: str = "placed", settled: float = 0.0) -> Truth:
    """s01 moved from epoch 1 to epoch 2 at T0 + 1 (seen then); each order with an intent of ``status``."""
    truth = Truth(epochs={"s01": [(1, T0), (2, T0 + 1.0)]})
    for order in orders:
        truth.orders[order.link] = order
        truth.listed.setdefault(order.account, set()).add(order.link)
        truth.sent[order.link] = Sent(order.link, "s01", order.epoch or 0, 101, status, settled)
    return truth


def order(link: str, epoch: int, created: float) -> Accepted:
    return Accepted(link, "paper", "s01", epoch, created)


def test_a_clean_failover_passes() -> None:
    """The old epoch's orders before the new epoch was raised, the new epoch's after: nothing to report."""
    assert judge(ledger(order("s01-1", 1, T0 + 0.5), order("s01-2", 2, T0 + 1.5))) == []


def test_an_old_epochs_order_after_the_new_epoch_is_caught() -> None:
    """A paused worker's order of epoch 1 committed 0.4 s after epoch 2 of its strategy was raised."""
    found = judge(ledger(order("s01-1", 1, T0 + 0.5), order("s01-2", 1, T0 + 1.4)))
    assert [(v.kind, v.strategy) for v in found] == [("stale-epoch", "s01")]
    assert "s01-2 of epoch 1" in found[0].detail and "epoch 2" in found[0].detail


def test_an_order_settled_absent_that_landed_later_is_caught() -> None:
    """Reconciliation settled the intent absent at T0 + 0.2; the order landed 363 ms after that, before any new epoch."""
    found = judge(ledger(order("s01-1", 1, T0 + 0.563), status="absent", settled=T0 + 0.2))
    assert [v.kind for v in found] == ["absent-landed"]
    assert "0.363s after" in found[0].detail


def test_an_order_after_halt_returned_is_caught() -> None:
    """`qlab halt` returned at T0 + 2 and `qlab resume` was issued at T0 + 3: an order at T0 + 2.5 should not exist."""
    truth = ledger(order("s01-1", 2, T0 + 1.9), order("s01-2", 2, T0 + 2.5), order("s01-3", 2, T0 + 3.1))
    truth.halts.append(HaltWindow("all", "", T0 + 2.0, T0 + 3.0))
    found = judge(truth)
    assert [v.kind for v in found] == ["post-halt-order"]
    assert "s01-2" in found[0].detail and "1 order(s)" in found[0].detail


def test_a_violation_fails_the_verdicts() -> None:
    """The --json verdicts the integration test reads: a violation or a trial that could not do its fault is no pass."""
    clean = Outcome("halt", 1, orders=3)
    assert summary(1, [clean])["passed"]
    caught = Outcome("halt", 1, orders=3, violations=judge(ledger(order("s01-2", 1, T0 + 1.4))))
    verdicts = summary(1, [caught])
    assert not verdicts["passed"] and verdicts["kinds"]["halt"]["violations"] == 1
    assert verdicts["details"][0]["kind"] == "stale-epoch" and verdicts["details"][0]["trials"] == "halt"
    assert not summary(1, [Outcome("halt", 1, setup_error="the fleet did not come up")])["passed"]


def test_the_chaos_soak_counts_an_order_settled_absent_that_landed() -> None:
    """The soak's ledger verdict (chaos_ledger.check_truth) holds the same check."""
    truth = ledger(order("s01-1", 1, T0 + 0.563), status="absent", settled=T0 + 0.2)
    assert "absent-landed" in [v.kind for v in check_truth(truth, {}, at_end=False)]
