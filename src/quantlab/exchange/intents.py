"""Order intents: every order a strategy sends is written down before it leaves, and its outcome after.

One store document per strategy (blob ``intents/<strategy>``), changed by
compare-and-swap, holds the orders whose outcome is not known yet (``open``)
and the last few settled ones. An intent is written, durably, before its
request is signed; its outcome is written when the answer comes. A crash or
a lost reply in between leaves it open, and it is then settled by asking the
exchange for its orderLinkId, never by sending it again.

When may an open intent be settled by query? Only once no copy of its
request can still be accepted. A live order is signed with the ``Stamp`` its
intent records (quantlab/exchange/signing.py): the exchange's time when it was
written (``signed``) and a ``recv_window`` that ends before the sender's lease
does. The exchange takes no copy once its own clock has passed ``signed +
recv_window``, so that is judged by the exchange's time, never by comparing
one host's clock with another's. A paper order is fenced inside the paper
exchange's write instead; ``expires`` (the writer's Unix time after which the
lease it was sent under has ended) bounds it. Before that, an order missing
from the exchange might still arrive.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Collection, Iterable, Literal

import msgspec

from quantlab.exchange import orderids
from quantlab.exchange.signing import Stamp
from quantlab.store.store import Store

BLOB_KIND = "intents"
KEEP_SETTLED = 100  #: settled intents kept per strategy (reconciliation knows custom orderLinkIds by them)

#: pending: written, its outcome unknown; placed: the exchange took it; rejected: the exchange
#: refused it; absent: its reply was lost and a query, once no copy could arrive any more, found nothing.
Status = Literal["pending", "placed", "rejected", "absent"]


class Intent(msgspec.Struct, frozen=True, kw_only=True):
    link_id: str
    account: str
    category: str
    symbol: str
    order: dict[str, Any]  #: the order's parameters as the strategy gave them (never a secret)
    epoch: int
    instance: str  #: the worker process that sends it
    written: float  #: Unix time
    expires: float  #: the writer's Unix time after which its lease (and any copy's window) has ended
    signed: int = 0  #: live orders: the X-BAPI-TIMESTAMP its copies carry (the exchange's time, ms)
    recv_window: int = 0  #: live orders: ms after ``signed`` (by the exchange's clock) it may still be taken
    status: Status = "pending"
    order_id: str = ""
    detail: str = ""  #: the exchange's error, or how the outcome was found
    settled: float = 0.0
    hold: str = ""  #: the account's reservation it was sent under (quantlab/exchange/reservations.py), if any


class IntentLog(msgspec.Struct, kw_only=True):
    next_seq: int = 1  #: the sequence of the next orderLinkId made for the strategy
    open: list[Intent] = []
    settled: list[Intent] = []  #: oldest first, at most KEEP_SETTLED

    def epoch_of(self, strategy: str, link_id: str) -> int | None:
        """The epoch that sent ``link_id`` if it is the strategy's order; None if it is not."""
        made = orderids.owned_by(link_id, strategy)
        if made is not None:
            return made.epoch
        # A refused or absent intent's id is no order of the strategy's: the exchange may hold another's under it.
        return next((i.epoch for i in [*self.open, *self.settled]
                     if i.link_id == link_id and i.status in ("pending", "placed")), None)

    def unlisted(self, account: str, scope: dict[str, str], listed: Collection[str], now: float,
                 within: float) -> list[Intent]:
        """The live resting orders in ``scope`` placed less than ``within`` s before ``now`` that a list
        of ``account``'s open orders (``listed`` orderLinkIds) misses: the exchange may not show them yet."""
        return [i for i in self.settled
                if i.status == "placed" and i.signed and i.account == account and abs(now - i.settled) < within
                and scope_of(i.category, i.symbol) == scope and i.link_id not in listed
                and str(i.order.get("orderType", "")).lower() != "market"]

    def owns(self, strategy: str, link_id: str) -> bool:
        """Is ``link_id`` an order the strategy placed: made for it, or a custom id the exchange took from it?

        Only a ``placed`` intent counts for a custom id: another strategy's refused or pending
        attempt at the same id must not make that order its own.
        """
        if not link_id:
            return False
        made = orderids.owned_by(link_id, strategy)
        if made is not None:  # and not another's custom id that only reads like one made for it
            return made.seq < self.next_seq
        return any(i.link_id == link_id and i.status == "placed" for i in self.settled)


    def placed(self, order_id: str, link_id: str) -> Intent | None:
        """The strategy's placed order the exchange knows by ``order_id`` (else by ``link_id``), if it is one."""
        key, named = ("order_id", order_id) if order_id else ("link_id", link_id)
        if not named:
            return None
        return next((i for i in reversed(self.settled) if i.status == "placed" and getattr(i, key) == named), None)


class Outcome(msgspec.Struct, frozen=True):
    status: Status
    order_id: str = ""
    detail: str = ""


_decode = msgspec.json.Decoder(IntentLog).decode


def read(store: Store, strategy: str) -> IntentLog:
    raw = store.get_blob(BLOB_KIND, strategy)
    return IntentLog() if raw is None else _decode(raw)


def _change(store: Store, strategy: str, edit: Callable[[IntentLog], IntentLog | None]) -> None:
    def update(raw: bytes | None) -> bytes | None:
        changed = edit(IntentLog() if raw is None else _decode(raw))
        return None if changed is None else msgspec.json.encode(changed)

    store.update_blob(BLOB_KIND, strategy, update)


class DuplicateLinkId(Exception):
    """An order names an orderLinkId the strategy already used for an order that is pending or placed."""


class ForeignLinkId(Exception):
    """An order names an orderLinkId of the shape quantlab makes that was not made for this strategy.

    Taken, it would be another strategy's order to that one's reconciliation and ownership checks, and
    the exchange would refuse the other's own order under it (or this strategy's own next one).
    """


def begin(
    store: Store, strategy: str, epoch: int, instance: str, account: str, orders: list[dict[str, Any]],
    expires: float, clock: Callable[[], float] = time.time, hold: str = "", stamp: Stamp | None = None,
) -> list[Intent]:
    """Write an intent for each order (in one write); orders without an orderLinkId get one made."""
    made: list[Intent] = []

    def add(log: IntentLog) -> IntentLog:
        made.clear()
        seq = log.next_seq
        for order in orders:
            link_id = str(order.get("orderLinkId") or "")
            # A second intent with the id would be settled with the first's outcome.
            if link_id and any(i.link_id == link_id for i in [*log.open, *made, *log.settled]
                               if i.status in ("pending", "placed")):
                raise DuplicateLinkId(f"{link_id} was used for an earlier order")
            if link_id and not _may_name(strategy, link_id, seq):
                raise ForeignLinkId(f"orderLinkId {link_id} has the shape of the ids quantlab makes (TAG-EPOCH-SEQ) "
                                    "and was not made for this strategy: choose one of another shape")
            if not link_id:
                link_id, seq = orderids.make(strategy, epoch, seq), seq + 1
            made.append(Intent(
                link_id=link_id, account=account, category=str(order.get("category", "")),
                symbol=str(order.get("symbol", "")), order=order, epoch=epoch, instance=instance,
                written=clock(), expires=expires, hold=hold,
                signed=stamp.signed if stamp else 0, recv_window=stamp.recv_window if stamp else 0,
            ))
        return IntentLog(next_seq=seq, open=[*log.open, *made], settled=log.settled)

    _change(store, strategy, add)
    return made


def _may_name(strategy: str, link_id: str, next_seq: int) -> bool:
    """A strategy's own id may be of any shape but the made one, unless made for it already."""
    made = orderids.parse(link_id)
    return made is None or (made.tag == orderids.tag(strategy) and made.seq < next_seq)


def settle(store: Store, strategy: str, outcomes: dict[str, Outcome], of: Iterable[Intent],
           clock: Callable[[], float] = time.time) -> None:
    """Record the outcome (by orderLinkId) of the intents ``of``, those still open.

    Only those very intents: a strategy may reuse the orderLinkId of an order that was found absent,
    and a process that learns late what became of the first must not settle the second with it.
    """
    mine = {_identity(i) for i in of}

    def record(log: IntentLog) -> IntentLog | None:
        done = [i for i in log.open if i.link_id in outcomes and _identity(i) in mine]
        if not done:
            return None
        now = clock()
        settled = [
            msgspec.structs.replace(i, status=o.status, order_id=o.order_id, detail=o.detail, settled=now)
            for i in done
            for o in [outcomes[i.link_id]]
        ]
        still = [i for i in log.open if i not in done]
        return IntentLog(next_seq=log.next_seq, open=still, settled=[*log.settled, *settled][-KEEP_SETTLED:])

    _change(store, strategy, record)


def _identity(intent: Intent) -> tuple[str, str, int, float]:
    """What tells one intent from another of the same orderLinkId: who wrote it, under which epoch, when."""
    return intent.link_id, intent.instance, intent.epoch, intent.written


def longest_open_window(store: Store) -> int:
    """The longest recv_window (ms) of the live orders written down and not answered yet, of every strategy."""
    logs = [read(store, key) for key in store.blob_keys(BLOB_KIND)]
    return max((i.recv_window for log in logs for i in log.open), default=0)


LINEAR_USDT = {"category": "linear", "settleCoin": "USDT"}


def scope_of(category: str, symbol: str) -> dict[str, str]:
    """The order list an order is in: linear USDT as a whole (Bybit's settleCoin scope), else its symbol."""
    if category == "linear" and symbol.endswith("USDT"):
        return dict(LINEAR_USDT)
    return {"category": category, "symbol": symbol}


def scopes(logs: Iterable[IntentLog]) -> list[dict[str, str]]:
    """Where to look for a strategy's orders: linear USDT, and every other category and symbol it used."""
    found = [dict(LINEAR_USDT)]
    for log in logs:
        for intent in [*log.open, *log.settled]:
            scope = scope_of(intent.category, intent.symbol)
            if intent.category and intent.symbol and scope not in found:
                found.append(scope)
    return found
