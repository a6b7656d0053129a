"""The order path: a strategy's order is judged by its risk limits, written down, sent, and its outcome settled.

An order (quantlab/exchange/calls.py ORDER_METHODS) from a strategy is checked
against the limits of its strategy and of its account
(quantlab/exchange/risk.py), gets an orderLinkId, and has its intent written
to the store before it is signed and its outcome after
(quantlab/exchange/intents.py). The checks and the intent run in the send's
``prepare`` step, once the call has its rate-limit turn and has passed the halt
gate, just before it is first sent. When the reply is lost (a network error, an
HTTP error, a duplicate orderLinkId), the order is not sent again: its outcome
is found by querying its orderLinkId once no copy of the request can still
reach the exchange, and on a live account asked for again once the exchange,
which lists an order late, would surely show it (quantlab/exchange/orders.py).

An account's limits on open orders and on orders per minute hold for all its
strategies on every worker: the order takes a hold on the account's
reservation document in the store, by compare-and-swap, before its intent is
written, and the hold ends with the order's outcome
(quantlab/exchange/reservations.py). A strategy's own open orders are counted
under a per-account lock of this process, held until the order is answered
(a strategy runs on one worker at a time), so two of its orders cannot both
take its last free place. Reconciliation settles open intents by query before a strategy starts,
and a query for an order still on its way would answer "absent" too early:
``InFlight`` tells it which orderLinkIds this process is sending, and lets it
wait for them to land.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
from typing import Any, Callable, ContextManager

from quantlab.exchange import calls, intents, orders, reservations
from quantlab.exchange.accounts import Account
from quantlab.exchange.arguments import PARAMS_ERROR
from quantlab.exchange.bybit import DUPLICATE_LINK_ID, BybitClients
from quantlab.exchange.intents import Intent, Outcome
from quantlab.exchange.job import Caller, Failure, Job
from quantlab.exchange.reservations import Current
from quantlab.exchange.risk import NO_LIMITS, RISK_REFUSED, Level, Refused, RiskBook, RiskLimits, notional
from quantlab.exchange.sending import Sender
from quantlab.exchange.signing import WINDOW_SLACK, Fence, Stamp
from quantlab.store.store import Store

log = logging.getLogger(__name__)

MAX_ORDER_WINDOW = 30.0  #: seconds an order may take to reach the exchange, however long the lease
PRICE_FRESH = 1.0  #: seconds a last price is used for the notional of market orders


class InFlight:
    """The orderLinkIds each strategy has on their way from this process (their outcome is coming)."""

    def __init__(self) -> None:
        self._ids: dict[str, set[str]] = {}  # strategy -> orderLinkIds being sent by this process
        self._changed = threading.Condition()  #: guards _ids; notified as orders land

    def mark(self, strategy: str, written: list[Intent], on: bool) -> None:
        """Note the orders as on their way (``on``), or as landed."""
        with self._changed:
            ids = self._ids.setdefault(strategy, set())
            ids.update(i.link_id for i in written) if on else ids.difference_update(i.link_id for i in written)
            if not ids:
                del self._ids[strategy]
            if not on:
                self._changed.notify_all()

    def of(self, strategy: str) -> set[str]:
        """orderLinkIds of the strategy this process is sending now."""
        with self._changed:
            return set(self._ids.get(strategy, ()))

    def wait_landed(self, strategy: str, link_ids: set[str], timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until none of ``link_ids`` is being sent; True when none is."""
        with self._changed:
            return self._changed.wait_for(lambda: not link_ids & self._ids.get(strategy, set()), timeout)


class OrderPlacer:
    """Sends strategies' orders: limits checked, intent written before each leaves, outcome settled after."""

    def __init__(
        self, accounts: list[Account], store: Store, sender: Sender, clients: BybitClients, flying: InFlight,
        closing: threading.Event, *, instance: str, worker: str, current: Current, clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._sender = sender
        self._clients = clients  #: for when a signed request's window ends
        self._flying = flying
        self._closing = closing  #: ends the wait for a lost order's window at close()
        self._instance = instance  #: this worker process, written into the intents it sends
        self._worker = worker  #: named in the account holds it takes
        self._current = current  #: whether a hold's holder may still act (else its hold is reclaimed)
        self._clock = clock
        self._risk = RiskBook(clock)
        self._order_locks = {a.name: threading.Lock() for a in accounts}  # while open orders are counted
        self._prices: dict[tuple[str, str, str], tuple[float, float]] = {}  # (account, category, symbol) -> (price, at)

    def place(self, account: Account, job: Job, fence: Fence | None, gate: Callable[[], None] | None) -> Any:
        """Send a strategy's order: limits checked, intent written before it leaves, outcome after."""
        call, caller = job.call, job.caller
        placed = calls.orders_of(call.method, call.kwargs)
        if not placed:  # malformed: the exchange says why
            return self._sender.attempts(account, call, fence, job.deadline, gate, caller=caller)
        # The account's counts are shared with every worker: kept in the store, not in this RiskBook.
        per_order = RiskLimits(max_order_notional=account.limits.max_order_notional)
        levels = [Level(f"strategy {caller.strategy}", caller.limits, caller.strategy),
                  Level(f"account {account.name}", per_order)]
        levels = [level for level in levels if level.limits != NO_LIMITS]
        counting = any(level.limits.counts_open_orders for level in levels)
        shared = account.limits.max_open_orders is not None or account.limits.max_orders_per_minute is not None
        written: list[Intent] = []
        hold: list[str] = []  # the account hold taken for these orders, once taken

        def prepare(fence: Fence | None) -> tuple[dict[str, Any], Fence | None, Stamp | None]:
            self._check_risk(account, call.method, placed, levels)
            if shared:
                hold.append(self._reserve(account, call.method, caller, placed))
            # Frozen at the lease left now (at most MAX_ORDER_WINDOW): no copy of the order may be
            # signed with a window that ends after ``expires``.
            now = self._clock()
            until = min(fence() if fence is not None else math.inf, now + MAX_ORDER_WINDOW)
            capped = _capped(fence, until)
            # A live order is signed with the exchange's time now and its window, both written down.
            stamp = self._clients.stamp(account, capped) if account.type == "bybit" else None
            expires = time.time() + max(0.0, until - now) + self._clients.slack(account.name) + WINDOW_SLACK
            try:
                written[:] = intents.begin(self._store, caller.strategy, caller.epoch, self._instance, account.name,
                                           placed, expires, hold=hold[0] if hold else "", stamp=stamp)
            except intents.DuplicateLinkId as e:  # the exchange's answer, without asking it
                raise Failure(f"{call.method}: OrderLinkedID is duplicate: {e} (retCode {DUPLICATE_LINK_ID})",
                              DUPLICATE_LINK_ID, "api") from None
            except intents.ForeignLinkId as e:
                raise Failure(f"{call.method}: {e} (retCode {PARAMS_ERROR}); nothing was sent", PARAMS_ERROR,
                              "api") from None
            self._flying.mark(caller.strategy, written, True)
            linked = [{**o, "orderLinkId": i.link_id} for o, i in zip(placed, written)]
            return calls.with_orders(call.method, call.kwargs, linked), capped, stamp

        lock: ContextManager[Any] = self._order_locks[account.name] if counting else contextlib.nullcontext()
        try:
            with lock:
                body = self._sender.attempts(account, call, fence, job.deadline, gate, prepare, caller)
        except Failure as failure:
            if not written:
                self._end_hold(account, hold, {})
                raise
            if failure.sure:
                self._settle(caller, {i.link_id: Outcome("rejected", detail=failure.error) for i in written}, written,
                             account, hold)
                raise
            return self._find_lost(account, call.method, caller, written, failure, hold)
        except BaseException:
            if not written:
                self._end_hold(account, hold, {})
            raise  # an order written down and not answered keeps its hold until it is settled
        finally:
            self._flying.mark(caller.strategy, written, False)
        self._settle(caller, orders.from_answer(call.method, body, written), written, account, hold)
        return body

    def _reserve(self, account: Account, method: str, caller: Caller, placed: list[dict[str, Any]]) -> str:
        """Take the account's hold for ``placed``, or refuse them by its limits."""
        scope = intents.scope_of(str(placed[0].get("category", "")), str(placed[0].get("symbol", "")))
        read = self._sender.reader(account)
        listing = None if account.limits.max_open_orders is None else functools.partial(orders.open_orders, read, scope)
        try:
            return reservations.take(self._store, account.name, account.limits, len(placed),
                                     (caller.strategy, self._worker, caller.epoch, self._instance), listing,
                                     self._current, lag=orders.SHOWN_WITHIN if account.type == "bybit" else 0.0)
        except Refused as e:
            raise Failure(f"{method}: refused by a risk limit: {e}", RISK_REFUSED, "risk") from None

    def _end_hold(self, account: Account, hold: list[str], outcomes: dict[str, Outcome]) -> None:
        """The orders under ``hold`` are answered: it keeps the places of those placed, and ends otherwise."""
        if not hold:
            return
        placed = [link_id for link_id, outcome in outcomes.items() if outcome.status == "placed"]
        try:
            reservations.land(self._store, account.name, hold[0], placed)
        except Exception:  # counted a while too long: reclaimed when this process or its epoch is gone
            log.exception("could not record the outcome of the hold %s on %s", hold[0], account.name)

    def _check_risk(self, account: Account, method: str, placed: list[dict[str, Any]], levels: list[Level]) -> None:
        if not levels:
            return
        read = self._sender.reader(account)
        priced = any(level.limits.max_order_notional is not None for level in levels)
        notionals = [notional(o, functools.partial(self.last_price, account, o)) for o in placed] if priced else []
        scope = intents.scope_of(str(placed[0].get("category", "")), str(placed[0].get("symbol", "")))

        listed: list[list[dict[str, Any]]] = []  # the exchange's open orders, read once for every level

        def open_orders(level: Level) -> int:
            if not listed:
                listed.append(orders.open_orders(read, scope))
            rows = listed[0]
            if not level.strategy:
                return len(rows)
            log_ = intents.read(self._store, level.strategy)
            own = [r for r in rows if log_.epoch_of(level.strategy, str(r.get("orderLinkId", ""))) is not None]
            # Orders it placed a moment ago that the exchange does not list yet are open all the same.
            ids = {str(r.get("orderLinkId", "")) for r in rows}
            return len(own) + len(log_.unlisted(account.name, scope, ids, time.time(), orders.SHOWN_WITHIN))

        try:
            self._risk.check(levels, len(placed), notionals, open_orders)
        except Refused as e:
            raise Failure(f"{method}: refused by a risk limit: {e}", RISK_REFUSED, "risk") from None

    def last_price(self, account: Account, order: dict[str, Any]) -> float:
        """The last traded price of ``order``'s symbol (at most PRICE_FRESH old), to judge a notional by."""
        key = (account.name, str(order.get("category", "")), str(order.get("symbol", "")))
        price, at = self._prices.get(key, (0.0, -PRICE_FRESH))
        if self._clock() - at < PRICE_FRESH:
            return price
        body = self._sender.read(account, "get_tickers", {"category": key[1], "symbol": key[2]})
        rows = (body.get("result") or {}).get("list") or [{}]
        try:
            price = float(rows[0].get("lastPrice", 0))
        except (TypeError, ValueError):
            price = 0.0
        if price <= 0:
            raise Failure(f"no last price for {key[2]} to judge a market order's notional", RISK_REFUSED, "risk")
        self._prices[key] = (price, self._clock())
        return price

    def _find_lost(self, account: Account, method: str, caller: Caller, written: list[Intent], failure: Failure,
                   hold: list[str]) -> Any:
        """The reply to an order was lost: once no copy can arrive any more, ask the exchange for it."""
        until = self._clients.window_end() or max(i.expires for i in written)
        delay = until - time.time()
        unknown = f"{failure.error}; outcome unknown: the order intent stays open and is settled before the strategy starts again"
        if delay > 0 and self._closing.wait(delay):
            raise Failure(unknown, failure.ret_code, failure.kind, sure=False)
        found = self._look_up(account, written, until)
        if found is None:
            raise Failure(unknown, failure.ret_code, failure.kind, sure=False)
        if isinstance(found, Failure):
            raise Failure(f"{unknown} ({found.error})", failure.ret_code, failure.kind, sure=False)
        self._settle(caller, found, written, account, hold)
        if any(o.status == "rejected" for o in found.values()):
            details = "; ".join(o.detail for o in found.values() if o.status == "rejected")
            raise Failure(f"{method}: not placed: {details} (retCode {DUPLICATE_LINK_ID})", DUPLICATE_LINK_ID, "api")
        if all(o.status == "absent" for o in found.values()):
            names = ", ".join(found)
            raise Failure(f"{failure.error}; not placed: the exchange has no order {names}", failure.ret_code,
                          failure.kind)
        log.warning("API call %s on %s: reply lost, order found by orderLinkId", method, account.name)
        return orders.lost_reply_body(method, written, found)

    def _look_up(self, account: Account, written: list[Intent], until: float) -> dict[str, Outcome] | Failure | None:
        """Each order's outcome by query once its window is over (``until``); None if the pool closed first.

        On a live account an order not found is asked for again once it would surely be shown
        (orders.SHOWN_WITHIN): a filled market order shows only in the order history, which lags.
        """
        read = self._sender.reader(account)
        try:
            found = {i.link_id: orders.find(read, i) for i in written}
            missing = [i for i in written if found[i.link_id].status == "absent"]
            if missing and account.type == "bybit":
                if self._closing.wait(max(0.0, until + orders.SHOWN_WITHIN - time.time())):
                    return None
                found |= {i.link_id: orders.find(read, i) for i in missing}
        except Failure as e:
            return e
        return found

    def _settle(self, caller: Caller, outcomes: dict[str, Outcome], written: list[Intent], account: Account,
                hold: list[str]) -> None:
        self._end_hold(account, hold, outcomes)
        try:
            intents.settle(self._store, caller.strategy, outcomes, written)
        except Exception:  # the order stands; the open intent is settled by query before the next start
            log.exception("could not record the outcome of %s's order(s) %s", caller.strategy, ", ".join(outcomes))


def _capped(fence: Fence | None, until: float) -> Fence | None:
    """``fence``, never later than ``until``."""
    if fence is None:
        return None
    held = fence
    return lambda: min(held(), until)
