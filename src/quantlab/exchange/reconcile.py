"""Reconciliation: what a strategy left at the exchange, settled and listed before it starts.

Before a strategy's child is started (first start, restart, or on a new
worker), its worker:

1. settles the strategy's open order intents by querying their orderLinkIds,
   each once no copy of its request can still reach the exchange (an intent
   this process is still sending waits for its answer; a live one written by
   another process waits until the exchange's own clock has passed its
   ``signed + recv_window``, a paper one until its ``expires``; a live order
   not found is settled ``absent`` only once the exchange would list it,
   ``orders.SHOWN_WITHIN`` later); until every intent is settled, the
   strategy does not start;
2. lists the open orders that are the strategy's (made by quantlab for it,
   or a custom orderLinkId its intents remember), page by page, once every
   live order it placed a moment ago is listed, and the positions of its
   accounts, for ``ctx.open_orders`` and ``ctx.positions``;
3. reports orders from an older epoch, and cancels them when the Work says
   ``cancel_stale_orders``.

Anything that fails (the exchange unreachable, a cancel refused) makes the
whole step fail: the worker tries again a moment later, and the strategy
waits, so it never starts on a half-known account.
"""

from __future__ import annotations

import functools
import time
from datetime import datetime
from typing import Any, Callable, Protocol

import msgspec

from quantlab.errors import ApiError
from quantlab.exchange import intents, orders, reservations
from quantlab.exchange.changing import NOT_OPEN
from quantlab.exchange.intents import Intent, IntentLog, Outcome
from quantlab.exchange.signing import WINDOW_SLACK, Fence
from quantlab.store.store import Store

POSITION_CATEGORIES = ("linear", "inverse", "option")
#: Seconds a reconciliation waits for an order this process is sending to land, before it gives
#: up and the start is tried again later (it holds an API pool thread meanwhile).
LANDING_WAIT = 2.0


class Request(msgspec.Struct, frozen=True, kw_only=True):
    strategy: str
    epoch: int
    accounts: list[str]
    cancel_stale: bool = False


class Reconciled(msgspec.Struct, kw_only=True):
    ok: bool
    error: str = ""  #: why it must be tried again
    open_orders: list[dict[str, Any]] = []  #: the strategy's open orders, each with its "account"
    positions: list[dict[str, Any]] = []  #: the accounts' open positions, each with its "account"
    settled: dict[str, str] = {}  #: orderLinkId -> status, for intents settled now
    stale: list[str] = []  #: orderLinkIds of open orders from an older epoch
    cancelled: list[str] = []  #: those of them cancelled now


class Desk(Protocol):
    """What reconciliation needs of the worker's API pool."""

    instance: str

    def read(self, account: str, method: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """A read-only call on the account; raises ApiError."""
        ...

    def shared_reader(self, account: str, since: float) -> orders.Read:
        """Reads of lists on the account, shared with other starts that began by ``since`` (monotonic)."""
        ...

    def cancel(self, account: str, kwargs: dict[str, Any], fence: Fence) -> None:
        """Cancel one order (fenced like any order-changing call); raises ApiError."""
        ...

    def cancel_all(self, account: str, scope: dict[str, str], fence: Fence) -> dict[str, Any]:
        """Cancel every open order in ``scope``; the exchange's answer; raises ApiError."""
        ...

    def seal(self, account: str, strategy: str, epoch: int) -> None:
        """Make ``account`` take no more writes of ``strategy`` from below ``epoch``, where it can."""
        ...

    def exchange_passed_ms(self, account: str) -> int:
        """A time (ms) the exchange's clock has surely passed now; raises ApiError."""
        ...

    def in_flight(self, strategy: str) -> set[str]: ...

    def wait_landed(self, strategy: str, link_ids: set[str], timeout: float) -> bool: ...


class NotYet(Exception):
    """The strategy cannot start yet; the message says why."""


def reconcile(desk: Desk, store: Store, request: Request, fence: Fence,
              clock: Callable[[], float] = time.time) -> Reconciled:
    try:
        settled = _settle_open(desk, store, request, clock)
        since = time.monotonic()  # the strategy sealed and its intents settled: lists read from now on will do
        log = intents.read(store, request.strategy)
        scopes = intents.scopes([log])
        mine: list[dict[str, Any]] = []
        stale: list[dict[str, Any]] = []
        positions: list[dict[str, Any]] = []
        for account in request.accounts:
            lists = desk.shared_reader(account, since)
            owned, unlisted = owned_orders(desk, log, request.strategy, account, scopes, clock, lists)
            if unlisted:  # left out, it would be neither handed to the strategy nor cancelled as stale
                raise NotYet(f"order {unlisted[0].link_id} was placed a moment ago and the exchange does not "
                             "list it yet: listing the open orders again")
            for row, epoch in owned:
                (stale if epoch < request.epoch else mine).append(row)
            positions += _positions(lists, account, scopes)
        cancelled = _cancel(desk, stale, fence) if request.cancel_stale else []
        kept = [row for row in stale if row["orderLinkId"] not in cancelled]
        return Reconciled(ok=True, open_orders=[*mine, *kept], positions=positions, settled=settled,
                          stale=[row["orderLinkId"] for row in stale], cancelled=cancelled)
    except (NotYet, ApiError) as e:
        return Reconciled(ok=False, error=str(e))
    except Exception as e:  # the store: a full disk, a database away
        return Reconciled(ok=False, error=f"{type(e).__name__}: {e}")


def _settle_open(desk: Desk, store: Store, request: Request, clock: Callable[[], float]) -> dict[str, str]:
    """Settle every open intent by query, or raise NotYet when one may still be on its way."""
    # Before the intents are read: an older epoch's write that has not landed by now never will
    # on a paper account, so "absent" below stays true (quantlab/exchange/paper.py).
    pending = {intent.account for intent in intents.read(store, request.strategy).open}
    for account in sorted({*request.accounts, *pending}):
        desk.seal(account, request.strategy, request.epoch)
    log = intents.read(store, request.strategy)
    flying = desk.in_flight(request.strategy) & {intent.link_id for intent in log.open}
    # Its answer is moments away (the call runs on a thread of this process): waiting for it here
    # beats failing the start and trying again a retry later.
    if flying and desk.wait_landed(request.strategy, flying, LANDING_WAIT):
        log, flying = intents.read(store, request.strategy), desk.in_flight(request.strategy)
    found: dict[str, Outcome] = {}
    for intent in log.open:
        if intent.link_id in flying:
            raise NotYet(f"order {intent.link_id} is being sent: waiting for its answer")
        if intent.instance != desk.instance:
            _check_window_closed(desk, intent, clock)
        found[intent.link_id] = outcome = orders.find(functools.partial(desk.read, intent.account), intent)
        if outcome.status == "absent" and intent.signed:
            _check_shown(desk, intent)
    if found:
        intents.settle(store, request.strategy, found, log.open)
    _reclaim_holds(store, request, desk.instance, [*pending, *request.accounts])
    return {link_id: outcome.status for link_id, outcome in found.items()}


def _check_window_closed(desk: Desk, intent: Intent, clock: Callable[[], float]) -> None:
    """Raise NotYet while a copy of ``intent``'s request, sent by another process, could still be taken."""
    if intent.signed:  # a live order: by the exchange's clock alone, whatever the hosts' clocks say
        left = intent.signed + intent.recv_window + WINDOW_SLACK * 1000 - desk.exchange_passed_ms(intent.account)
        if left > 0:
            raise NotYet(f"order {intent.link_id} could still reach the exchange for {left / 1000:.1f} s "
                         "by the exchange's clock: settling it after that")
    elif clock() < intent.expires:
        until = datetime.fromtimestamp(intent.expires).strftime("%H:%M:%S")
        raise NotYet(f"order {intent.link_id} could still reach the exchange until {until}: settling it after that")


def _check_shown(desk: Desk, intent: Intent) -> None:
    """Raise NotYet while a live order the exchange took at the end of its window may not be listed yet."""
    shown = intent.signed + intent.recv_window + (WINDOW_SLACK + orders.SHOWN_WITHIN) * 1000
    left = shown - desk.exchange_passed_ms(intent.account)
    if left > 0:
        raise NotYet(f"order {intent.link_id} is not listed at the exchange, which may list it {left / 1000:.1f} s "
                     "late: settling it after that")


def _reclaim_holds(store: Store, request: Request, instance: str, accounts: list[str]) -> None:
    """End the account holds other processes took for the strategy, by what its intents say now."""
    log = intents.read(store, request.strategy)

    def placed(hold: str) -> list[str] | None:
        if any(i.hold == hold for i in log.open):
            return None
        return [i.link_id for i in log.settled if i.hold == hold and i.status == "placed"]

    for account in sorted(set(accounts)):
        reservations.reclaim(store, account, request.strategy, instance, placed)


def owned_orders(desk: Desk, log: IntentLog, strategy: str, account: str, scopes: list[dict[str, str]],
                 clock: Callable[[], float] = time.time, read: orders.Read | None = None,
                 ) -> tuple[list[tuple[dict[str, Any], int]], list[Intent]]:
    """The strategy's open orders on ``account`` (looked for in ``scopes``), each with the epoch that
    placed it, and the live orders it placed a moment ago that the exchange does not list yet (it
    lists an order it took late: orders.SHOWN_WITHIN). ``read``: how the lists are read (default:
    each afresh)."""
    found = []
    unlisted: list[Intent] = []
    for scope in scopes:
        rows = orders.open_orders(read or functools.partial(desk.read, account), scope)
        listed = {str(r.get("orderLinkId", "")) for r in rows}
        unlisted += log.unlisted(account, scope, listed, clock(), orders.SHOWN_WITHIN)
        for row in rows:
            epoch = log.epoch_of(strategy, str(row.get("orderLinkId", "")))
            if epoch is not None:
                found.append(({**row, "account": account, "category": row.get("category") or scope["category"]}, epoch))
    return found, unlisted


def _positions(read: orders.Read, account: str, scopes: list[dict[str, str]]) -> list[dict[str, Any]]:
    rows = []
    for scope in scopes:
        if scope["category"] not in POSITION_CATEGORIES:
            continue
        listed = orders.all_pages(read, "get_positions", scope, orders.POSITION_PAGE)
        rows += [{**r, "account": account} for r in listed if _size(r) != 0]
    return rows


def _size(row: dict[str, Any]) -> float:
    try:
        return float(row.get("size") or 0)
    except (TypeError, ValueError):
        return 0.0


def _cancel(desk: Desk, stale: list[dict[str, Any]], fence: Fence) -> list[str]:
    for row in stale:
        desk.cancel(row["account"], {"category": row["category"], "symbol": row.get("symbol", ""),
                                     "orderLinkId": row["orderLinkId"]}, fence)
    return [row["orderLinkId"] for row in stale]


def _cancel_unlisted(desk: Desk, account: str, unlisted: list[Intent], fence: Fence) -> int:
    """Cancel orders the exchange took but does not list yet, by orderLinkId; how many it cancelled."""
    cancelled = 0
    for intent in unlisted:
        try:
            desk.cancel(account, {"category": intent.category, "symbol": intent.symbol, "orderLinkId": intent.link_id},
                        fence)
            cancelled += 1
        except ApiError as e:
            if e.ret_code != NOT_OPEN:  # filled or cancelled since: nothing to cancel
                raise
    return cancelled


def cancel_open_orders(desk: Desk, store: Store, accounts: list[str], strategy: str, fence: Fence) -> int:
    """Cancel the strategy's open orders on ``accounts`` (one by one), or with ``strategy`` "" every
    open order there, scope by scope; how many were cancelled (for a scope: asked to be)."""
    if strategy:
        log = intents.read(store, strategy)
        scopes = intents.scopes([log])
        cancelled = 0
        for account in accounts:
            owned, unlisted = owned_orders(desk, log, strategy, account, scopes)
            cancelled += len(_cancel(desk, [row for row, _epoch in owned], fence))
            cancelled += _cancel_unlisted(desk, account, unlisted, fence)
        return cancelled
    logs = [intents.read(store, key) for key in store.blob_keys(intents.BLOB_KIND)]
    cancelled = 0
    for account in accounts:
        for scope in intents.scopes(logs):
            body = desk.cancel_all(account, scope, fence)
            cancelled += len((body.get("result") or {}).get("list") or [])
    return cancelled
