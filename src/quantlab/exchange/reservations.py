"""An account's limits on open orders and orders per minute, kept in the store for every worker.

One store document per account (blob ``reservations/<account>``), changed by
compare-and-swap. Before an order's intent is written, its sender takes a
``Hold`` for it in the same compare-and-swap that checks the limits, so two
workers can never both take the last free place: one of the two commits
loses, runs again, and sees the other's hold.

What counts as open: the account's open orders at the exchange, read before
the compare-and-swap, plus every hold whose orders the exchange may not show
in that read. A hold is

- *on its way* (``landed == 0``): its orders are being sent; always counted;
- *landed*: the exchange took its orders (``link_ids``) at the document's
  ``seq`` ``landed``, at ``landed_at``. A read that began after that (``seq``
  read before it was at least ``landed``), and ``lag`` seconds after it, shows
  them if they are still open, so the hold is dropped once none of them is in
  such a read (filled or cancelled); until then its orders missing from the
  read are counted. ``lag`` is how late the exchange may list an order it took
  (Bybit's order creation is asynchronous: quantlab/exchange/orders.py
  SHOWN_WITHIN; none on a paper account), judged by the hosts' clocks: a
  holder's clock behind the reader's shortens it by as much.

A hold is released when its orders are refused or found absent, and
reclaimed when its holder may not act any more (``current`` says its epoch is
not the Work's) or, by reconciliation, when the process that took it is gone
and its intent says what became of it.

Orders per minute: the Unix times of the orders reserved in the last 60 s
(each host's own clock: a skew between hosts shifts the minute by as much).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Collection, NamedTuple

import msgspec

from quantlab.exchange.risk import WINDOW, Refused, RiskLimits
from quantlab.store.store import Store

BLOB_KIND = "reservations"

#: (strategy, worker, epoch) -> may that holder still act? (a Work read from the store)
Current = Callable[[str, str, int], bool]


class Hold(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    strategy: str
    epoch: int
    worker: str
    instance: str  #: the worker process that took it
    orders: int  #: places held
    link_ids: list[str] = []  #: the orders the exchange took, once landed
    landed: int = 0  #: the document's seq when they landed; 0 while on their way
    landed_at: float = 0.0  #: Unix time (the lander's clock) when they landed


class Book(msgspec.Struct, kw_only=True):
    seq: int = 0  #: raised by every change
    holds: list[Hold] = []
    sent: list[float] = []  #: Unix times of the orders reserved in the last WINDOW seconds


_decode = msgspec.json.Decoder(Book).decode


def read(store: Store, account: str) -> Book:
    raw = store.get_blob(BLOB_KIND, account)
    return Book() if raw is None else _decode(raw)


def _change(store: Store, account: str, edit: Callable[[Book], Book | None]) -> None:
    def update(raw: bytes | None) -> bytes | None:
        changed = edit(Book() if raw is None else _decode(raw))
        return None if changed is None else msgspec.json.encode(changed)

    store.update_blob(BLOB_KIND, account, update)


class Listing(NamedTuple):
    """A read of an account's open orders, and what it may miss."""

    ids: Collection[str]  #: the orderLinkIds it shows
    seq: int  #: the document's seq read before it began
    at: float  #: Unix time when it began
    lag: float = 0.0  #: seconds the exchange may take to list an order it took


def _shows_landed(hold: Hold, listing: Listing) -> bool:
    """The read began after the hold's orders landed, late enough for the exchange to list them."""
    return hold.landed <= listing.seq and listing.at >= hold.landed_at + listing.lag


def counted(hold: Hold, listing: Listing) -> int:
    """How many of ``hold``'s orders ``listing`` may miss."""
    if not hold.landed:
        return hold.orders
    missing = [i for i in hold.link_ids if i not in listing.ids]
    return 0 if _shows_landed(hold, listing) else len(missing)


def _gone(hold: Hold, listing: Listing) -> bool:
    """Landed, and a read that would show them shows none of its orders open: filled or cancelled."""
    return bool(hold.landed) and _shows_landed(hold, listing) and not any(i in listing.ids for i in hold.link_ids)


def take(
    store: Store, account: str, limits: RiskLimits, count: int, holder: tuple[str, str, int, str],
    open_orders: Callable[[], list[dict[str, Any]]] | None, current: Current, clock: Callable[[], float] = time.time,
    lag: float = 0.0,
) -> str:
    """Reserve ``count`` places on ``account`` for ``holder`` (strategy, worker, epoch, instance); the hold's id.

    ``open_orders`` reads the account's open orders at the exchange (None: the open orders are
    not limited); ``lag``: seconds the exchange may take to list an order it took. Raises
    Refused when a limit would be passed.
    """
    strategy, worker, epoch, instance = holder
    read_from, read_at = read(store, account).seq, clock()  # before the exchange is read: see ``counted``
    rows = open_orders() if open_orders is not None else []
    listing = Listing({str(r.get("orderLinkId", "")) for r in rows}, read_from, read_at, lag)
    hold = Hold(id=uuid.uuid4().hex[:16], strategy=strategy, epoch=epoch, worker=worker, instance=instance,
                orders=count)
    label = f"account {account}"

    def reserve(book: Book) -> Book:
        now = clock()
        holds = [h for h in book.holds
                 if not _gone(h, listing) and current(h.strategy, h.worker, h.epoch)]
        most = limits.max_open_orders
        if most is not None:
            found = len(rows) + sum(counted(h, listing) for h in holds)
            if found + count > most:
                raise Refused(f"{label} has {found} open order(s): {count} more would pass its max-open-orders {most}")
        sent = [t for t in book.sent if t > now - WINDOW]
        rate = limits.max_orders_per_minute
        if rate is not None and len(sent) + count > rate:
            raise Refused(f"{label} sent {len(sent)} order(s) in the last minute: {count} more "
                          f"would pass its max-orders-per-minute {rate}")
        return Book(seq=book.seq + 1, holds=[*holds, hold], sent=[*sent, *[now] * count])

    _change(store, account, reserve)
    return hold.id


def land(store: Store, account: str, hold_id: str, placed: list[str], clock: Callable[[], float] = time.time) -> None:
    """The exchange answered the hold's orders: it took ``placed`` (none: the hold is released)."""

    def edit(book: Book) -> Book | None:
        if not any(h.id == hold_id for h in book.holds):
            return None
        seq = book.seq + 1
        holds = [msgspec.structs.replace(h, link_ids=list(placed), landed=seq, landed_at=clock())
                 if h.id == hold_id else h
                 for h in book.holds if h.id != hold_id or placed]
        return Book(seq=seq, holds=holds, sent=book.sent)

    _change(store, account, edit)


def release(store: Store, account: str, hold_id: str) -> None:
    """The hold's orders were refused, or never sent."""
    land(store, account, hold_id, [])


def reclaim(store: Store, account: str, strategy: str, instance: str, placed: Callable[[str], list[str] | None]) -> None:
    """Settle the holds of ``strategy`` taken by other processes (before the strategy starts here).

    ``placed(hold_id)`` is what the hold's settled intents say the exchange took, or None while one
    of them is open (it may still land: the hold stays).
    """

    def edit(book: Book) -> Book | None:
        seq = book.seq + 1
        holds: list[Hold] = []
        changed = False
        for h in book.holds:
            if h.strategy != strategy or h.instance == instance or h.landed:
                holds.append(h)
                continue
            took = placed(h.id)
            if took is None:
                holds.append(h)
                continue
            changed = True
            if took:
                holds.append(msgspec.structs.replace(h, link_ids=took, landed=seq))
        return Book(seq=seq, holds=holds, sent=book.sent) if changed else None

    _change(store, account, edit)
