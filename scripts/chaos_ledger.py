"""The exchange's side of the chaos soak: what the paper account accepted, the order intents, the Works' epochs.

The strategies' records (chaos_checks.py) say what each child sent and was
told; an order accepted from a child killed before it wrote its answer is
not in them. So the soak also reads, through the store's API, while it runs
and at the end:

- every paper account's document: each order it accepted (its orderLinkId,
  the time of the commit that accepted it, and the strategy and epoch of the
  guarded write that placed it, which the account stamps inside that commit)
  and every orderLinkId it lists as used;
- each strategy's order intents (quantlab/exchange/intents.py): the epoch and
  worker process that sent each order, and which are still open;
- the Works' epochs, each with the wall time the soak first saw it: the epoch
  was raised before that moment;
- with live strategies (chaos_exchange.py), every order the fake Bybit took:
  the exchange stamps no strategy or epoch, so each is matched to the intent
  of its orderLinkId, and its epoch judged at the moment it was signed (the
  intent's ``signed``, the exchange's clock): the worker's fence let it out
  then, and any copy of it could land until ``signed + recv_window``.

The account keeps its last 500 closed orders and the intents their last 100,
so they are read every fraction of a second and gathered here (``Truth``).
The checks below take a ``Truth`` and the strategies' logs and return
violations, so they can be tested on hand-made evidence.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from chaos_checks import StrategyLog, Violation
from quantlab.config import Paths
from quantlab.exchange import intents
from quantlab.exchange.paper import BLOB_KIND, _decode_state
from quantlab.store.open import open_store
from quantlab.store.store import Store

MIN_ACCEPTED = 0.5  #: the share of orders sent that the exchange must have accepted: below, the soak traded too little to judge
EPOCHS_EVERY = 0.1  #: seconds between reads of the Works' epochs (the precision of "the epoch was current")
LEDGER_EVERY = 0.5  #: seconds between reads of the accounts and intents (12 strategies fill 500 orders in ~8 s)
_LINK = re.compile(r"^(s\d+)(?:g\d+)?-\d+$")  #: chaos_strategy.py's orderLinkIds: ID-N, or IDgGEN-N


@dataclass(frozen=True)
class Accepted:
    """One order a paper account accepted."""

    link: str
    account: str
    strategy: str  #: the account's stamp: the strategy whose guarded write placed it ("" for none)
    epoch: int | None  #: the account's stamp: that write's epoch (None for none)
    created: float  #: wall seconds: the commit that accepted it
    #: wall seconds: when the fence judged it; a paper order's is its commit, a live one's its signing
    judged: float = 0.0

    @property
    def fenced_at(self) -> float:
        return self.judged or self.created


@dataclass(frozen=True)
class Sent:
    """One order intent: who sent the order, and where it stands."""

    link: str
    strategy: str
    epoch: int
    worker_pid: int | None  #: the worker process that sent it
    status: str  #: pending, placed, rejected or absent
    settled: float = 0.0  #: wall seconds it was settled (0 while pending)
    signed: float = 0.0  #: live orders: the exchange's wall seconds its copies were signed at (0: paper)


@dataclass(frozen=True)
class HaltWindow:
    """From when `qlab halt` returned until `qlab resume` was issued (wall seconds): no order it covers may land."""

    scope: str  #: all, account or strategy
    name: str  #: the account or strategy ("" for all)
    since: float
    until: float = math.inf

    def covers(self, order: Accepted) -> bool:
        within = self.since < order.created < self.until
        return within and (self.scope == "all" or self.name == (order.account if self.scope == "account" else order.strategy))


@dataclass
class Truth:
    """What the soak read from the store, gathered over the run."""

    orders: dict[str, Accepted] = field(default_factory=dict)  #: orderLinkId -> the order
    listed: dict[str, set[str]] = field(default_factory=dict)  #: account -> every orderLinkId it listed as used
    epochs: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  #: strategy -> (epoch, first seen), in order
    sent: dict[str, Sent] = field(default_factory=dict)  #: orderLinkId -> its intent as last read
    open: list[Sent] = field(default_factory=list)  #: the intents open at the last read
    halts: list[HaltWindow] = field(default_factory=list)
    failed_reads: int = 0
    live_unmatched: list[str] = field(default_factory=list)  #: orderLinkIds the live exchange took with no intent read


    def see_epoch(self, strategy: str, epoch: int, wall: float) -> None:
        seen = self.epochs.setdefault(strategy, [])
        if not seen or epoch > seen[-1][0]:
            seen.append((epoch, wall))

    def raised_before(self, strategy: str, epoch: int, wall: float) -> tuple[int, float] | None:
        """An epoch of ``strategy`` above ``epoch`` that was seen (so raised) before ``wall``."""
        return next(((e, t) for e, t in self.epochs.get(strategy, []) if e > epoch and t < wall), None)


# ---- reading the store ----


class TruthReader:
    """Reads the Works' epochs, the paper accounts and the intents on a thread, into a ``Truth``.

    On a thread because a read may wait on the store (a paused PostgreSQL session, a busy disk),
    and the soak's loop must never wait on that.
    """

    def __init__(self, home: Path, store_url: str, strategies: list[str],
                 live: Callable[[], list[dict[str, Any]]] | None = None, live_account: str = "") -> None:
        """``live``: every order the live account's exchange took (chaos_exchange.py), named ``live_account``."""
        self.truth = Truth()
        self.strategies = strategies
        self._live = live
        self._live_account = live_account
        self._store: Store = open_store(Paths(home, store_url=store_url))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="truth-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop reading; one last full read; the store closed. Once: later calls do nothing."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.read_once(ledger=True)
        self._store.close()

    def add_halt(self, window: HaltWindow) -> None:
        with self._lock:
            self.truth.halts.append(window)

    def _run(self) -> None:
        next_ledger = 0.0
        while not self._stop.wait(EPOCHS_EVERY):
            now = time.monotonic()
            self.read_once(ledger=now >= next_ledger)
            next_ledger = now + LEDGER_EVERY if now >= next_ledger else next_ledger

    def read_once(self, ledger: bool) -> None:
        try:
            self._read_epochs()
            if ledger:
                self._read_accounts()
                self._read_intents()
                self._read_live()
        except Exception:  # a record the corrupt-record fault damaged, a store paused: read again next time
            with self._lock:
                self.truth.failed_reads += 1

    def _read_epochs(self) -> None:
        works = self._store.list_works()
        wall = time.time()
        with self._lock:
            for work in works:
                self.truth.see_epoch(work.id, work.epoch, wall)

    def _read_accounts(self) -> None:
        for name in self._store.blob_keys(BLOB_KIND):
            raw = self._store.get_blob(BLOB_KIND, name)
            if raw is None:
                continue
            state = _decode_state(raw)
            with self._lock:
                self.truth.listed.setdefault(name, set()).update(state.link_ids)
                for order in [*state.open, *state.closed]:
                    if order.link_id and order.link_id not in self.truth.orders:
                        self.truth.orders[order.link_id] = Accepted(
                            order.link_id, name, order.strategy, order.epoch, order.created_ms / 1000.0
                        )  # fmt: skip

    def _read_intents(self) -> None:
        still_open = []
        for sid in self.strategies:
            log = intents.read(self._store, sid)
            for intent in [*log.settled, *log.open]:
                sent = Sent(intent.link_id, sid, intent.epoch, _worker_pid(intent.instance), intent.status, intent.settled,
                            intent.signed / 1000.0)  # fmt: skip
                with self._lock:
                    self.truth.sent[intent.link_id] = sent
                if intent.status == "pending":
                    still_open.append(sent)
        with self._lock:
            self.truth.open = still_open


    def _read_live(self) -> None:
        """The live exchange's orders, each once its intent was read (it is written before the order is signed)."""
        if self._live is None:
            return
        rows = self._live()
        with self._lock:
            for row in rows:
                link = str(row.get("orderLinkId") or "")
                if not link or link in self.truth.orders or (sent := self.truth.sent.get(link)) is None:
                    continue
                self.truth.orders[link] = Accepted(link, self._live_account, sent.strategy, sent.epoch,
                                                   int(row["createdTime"]) / 1000.0, judged=sent.signed)
            self.truth.live_unmatched = sorted(str(r.get("orderLinkId") or "") for r in rows
                                               if str(r.get("orderLinkId") or "") not in self.truth.orders)


def _worker_pid(instance: str) -> int | None:
    """The pid in a worker instance's name, HOST-PID-TOKEN (quantlab/worker/registration.py)."""
    parts = instance.rsplit("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


# ---- the checks ----


def stale_epochs(truth: Truth) -> list[Violation]:
    """An order accepted after a newer epoch of its strategy had been raised: its sender was fenced off, yet it landed.

    The account stamps the epoch of the write that placed the order in the
    commit that accepted it, and the commit's time; the soak saw each epoch
    only after it was raised, so one seen before the commit was raised before it.
    """
    found = []
    for order in truth.orders.values():
        if order.epoch is None or (newer := truth.raised_before(order.strategy, order.epoch, order.fenced_at)) is None:
            continue
        found.append(Violation("stale-epoch", order.strategy, (
            f"{order.link} of epoch {order.epoch} {'signed' if order.judged else 'accepted'} "
            f"{order.fenced_at - newer[1]:.3f}s after epoch {newer[0]} of {order.strategy} was already raised"
        )))  # fmt: skip
    return found


def unmatched_orders(truth: Truth, logs: dict[str, StrategyLog]) -> list[Violation]:
    """An accepted order not matched to the incarnation that sent it.

    Each of the soak's orders must carry the stamp of its own strategy, have an
    intent of the same epoch, and have been sent (a ``send`` record) by a
    runner whose worker is the process that wrote that intent.
    """
    found = []
    senders: dict[str, list[int]] = {}  # orderLinkId -> the worker pids of the runners that sent it
    for log in logs.values():
        for runner in log.runners:
            for send in runner.sends:
                senders.setdefault(send.link, []).append(runner.ppid)
    for order in truth.orders.values():
        owner = _LINK.match(order.link)
        if owner is None or owner[1] not in logs:
            continue  # not one of the soak's orders
        sid, sent, problem = owner[1], truth.sent.get(order.link), None
        if order.strategy != sid or order.epoch is None:
            problem = f"stamped {order.strategy or 'by no strategy'} epoch {order.epoch}, not {sid}'s"
        elif order.link not in senders:
            problem = "no runner of it recorded sending it"
        elif sent is not None and sent.epoch != order.epoch:
            problem = f"its intent is of epoch {sent.epoch}, the account stamped epoch {order.epoch}"
        elif sent is not None and sent.worker_pid is not None and sent.worker_pid not in senders[order.link]:
            problem = f"its intent was written by worker pid {sent.worker_pid}, its senders ran on {senders[order.link]}"
        if problem:
            found.append(Violation("unmatched-order", sid, f"{order.link} accepted by {order.account}: {problem}"))
    return found


def open_intents(truth: Truth) -> list[Violation]:
    """An order intent still open once everything stopped: an order whose outcome nobody settled."""
    return [
        Violation("intent-open", s.strategy, f"{s.link} of epoch {s.epoch} (worker pid {s.worker_pid}) still pending at the end")
        for s in truth.open
    ]


def post_halt_orders(truth: Truth) -> list[Violation]:
    """An order accepted while a halt covering it stood: after `qlab halt` returned and before `qlab resume`."""
    found = []
    for window in truth.halts:
        landed = sorted((o for o in truth.orders.values() if window.covers(o)), key=lambda o: o.created)
        if landed:
            found.append(Violation("post-halt-order", landed[0].strategy or None, (
                f"{len(landed)} order(s) accepted while `qlab halt` ({window.scope} {window.name}) stood: the first, "
                f"{landed[0].link}, {landed[0].created - window.since:.3f}s after the halt returned"
            )))  # fmt: skip
    return found


def absent_landed(truth: Truth) -> list[Violation]:
    """An intent settled ``absent`` whose order the account accepted: reconciliation told its strategy something false.

    Absent means no copy of the order could land any more; one that landed after the settle slipped
    past the fence, and one that landed before it was missed by the query.
    """
    found = []
    for sent in truth.sent.values():
        if sent.status != "absent" or (order := truth.orders.get(sent.link)) is None:
            continue
        gap = order.created - sent.settled
        found.append(Violation("absent-landed", sent.strategy, (
            f"{sent.link} of epoch {sent.epoch} was settled absent, yet {order.account} accepted it "
            f"{abs(gap):.3f}s {'after' if gap >= 0 else 'before'} that"
        )))  # fmt: skip
    return found


def unread_orders(truth: Truth) -> list[Violation]:
    """An orderLinkId an account lists as used whose order the soak never read: the soak cannot vouch for it."""
    seen = set(truth.orders)
    found = []
    for account, listed in sorted(truth.listed.items()):
        if missed := sorted(listed - seen):
            found.append(Violation("ledger-unread", None, (
                f"{len(missed)} order(s) of {account} gone from its document before the soak read them, e.g. {missed[:3]}"
            )))  # fmt: skip
    return found


def accepted_share(truth: Truth, logs: Iterable[StrategyLog], minimum: float = MIN_ACCEPTED) -> list[Violation]:
    """Too few of the orders sent were accepted: checks over orders that never landed prove nothing."""
    sent = {s.link for log in logs for r in log.runners for s in r.sends}
    accepted = sent & set(truth.orders)
    if sent and len(accepted) >= minimum * len(sent):
        return []
    return [Violation("few-accepted", None, (
        f"the exchange accepted {len(accepted)} of the {len(sent)} orders sent (at least {minimum:.0%} must land)"
    ))]  # fmt: skip


def check_truth(truth: Truth, logs: dict[str, StrategyLog], *, at_end: bool) -> list[Violation]:
    """Every ledger invariant; the open intents and the share accepted only once everything stopped."""
    found = [
        *stale_epochs(truth), *absent_landed(truth), *unmatched_orders(truth, logs), *post_halt_orders(truth),
        *unread_orders(truth),
    ]  # fmt: skip
    if at_end:
        found += [*open_intents(truth), *accepted_share(truth, logs.values()), *unmatched_live(truth)]
    return found


def unmatched_live(truth: Truth) -> list[Violation]:
    """An order the live exchange took that no intent of the soak's strategies names: sent past the order path."""
    if not truth.live_unmatched:
        return []
    return [Violation("unmatched-order", None, (
        f"{len(truth.live_unmatched)} order(s) the live exchange took have no intent, e.g. {truth.live_unmatched[:3]}"
    ))]  # fmt: skip
