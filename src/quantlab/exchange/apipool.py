"""The worker's API pool: runs strategies' exchange calls with the worker's own clients.

``ApiPool`` is what the worker and reconciliation (quantlab/exchange/reconcile.py
``Desk``) hold. It only builds, in its constructor, the parts that each own one
concern, and hands each call to them:

- quantlab/exchange/dispatch.py: whether a call may go at all (the account and
  method allowed, a fence on every call that changes something, the halt gate)
  and the per-account threads it runs on; every outcome becomes an ``ApiResult``;
- placing.py: a strategy's order: risk limits, intent, send, outcome, and a lost
  reply found by its orderLinkId;
- sending.py: one call on one account, in its turn under the account's rate
  limit (ratelimit.py), to pybit (bybit.py: the clients, signing under the
  fence, the clock offset to the exchange) or to the paper exchange;
- job.py: a call as the parts pass it along, and the ``Failure`` they raise.

The parts share one ``closing`` event: close() sets it, so nothing is sent
after it, and a wait for a rate-limit turn or for a lost order's window ends
at once.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Collection

from quantlab.errors import ApiError
from quantlab.exchange import orders, reconcile
from quantlab.exchange.accounts import Account
from quantlab.exchange.bybit import BybitClients
from quantlab.exchange.dispatch import Dispatcher
from quantlab.exchange.job import WORKER, Caller, Failure
from quantlab.exchange.placing import InFlight, OrderPlacer
from quantlab.exchange.ratelimit import AccountLimits
from quantlab.exchange.reservations import Current
from quantlab.exchange.sending import Sender
from quantlab.exchange.sharedreads import SharedReads
from quantlab.exchange.signing import Fence
from quantlab.protocol import ApiCall, ApiResult
from quantlab.store.store import Store

__all__ = ["ApiPool", "Caller", "WORKER", "CALL_DEADLINE", "THREADS_PER_ACCOUNT"]

CALL_DEADLINE = 10.0  #: seconds from submission within which a call must start, else it is refused unsent
THREADS_PER_ACCOUNT = 4  #: threads per account: calls of one account wait only for each other


class ApiPool:
    """Runs exchange calls for the accounts this worker serves."""

    def __init__(
        self,
        accounts: list[Account],
        store: Store,
        *,
        proxy: str | None = None,
        worker: str = "",
        instance: str = "",
        threads: int = THREADS_PER_ACCOUNT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        current: Current = lambda strategy, worker, epoch: True,
        wait_observer: Callable[[str, float], None] | None = None,
    ) -> None:
        """``current(strategy, worker, epoch)``: may that holder of an account hold still act? (the
        worker reads the Work; a hold of one that may not is reclaimed by the next order);
        ``wait_observer``: told (account, seconds) after each rate-limit wait."""
        self._accounts = {account.name: account for account in accounts}
        self._store = store
        self.instance = instance  #: this worker process, written into the intents it sends
        self._closing = threading.Event()
        wait: Callable[[float], object] = sleep or self._closing.wait  # close() ends a rate-limit wait at once
        self._limits = AccountLimits({a.name: a.rate_limit for a in accounts}, clock, wait, wait_observer)
        self._clients = BybitClients(accounts, self._limits, proxy=proxy, clock=clock)
        self._sender = Sender(accounts, store, self._clients, self._limits, self._closing, proxy=proxy, clock=clock,
                              call_deadline=CALL_DEADLINE)
        self._shared_reads = SharedReads(self.read)  #: reconciliation's list reads, shared by starts (sharedreads.py)
        self._flying = InFlight()
        placer = OrderPlacer(accounts, store, self._sender, self._clients, self._flying, self._closing,
                             instance=instance, worker=worker, current=current, clock=clock)
        self._dispatcher = Dispatcher(accounts, store, self._sender, placer, worker=worker, threads=threads,
                                      clock=clock, call_deadline=CALL_DEADLINE)

    @property
    def names(self) -> list[str]:
        return list(self._accounts)

    def call(
        self, account: str, method: str, kwargs: dict[str, Any], allowed: Collection[str], fence: Fence | None = None,
        caller: Caller = WORKER,
    ) -> ApiResult:
        """Run one call on this thread and wait for it; never raises."""
        call = ApiCall(call_id=0, account=account, method=method, kwargs=kwargs)
        return self._dispatcher.run(call, allowed, fence, caller)

    def submit(
        self, call: ApiCall, allowed: Collection[str], done: Callable[[ApiResult], None], fence: Fence | None = None,
        caller: Caller = WORKER,
    ) -> None:
        """Run ``call`` on its account's queue, then ``done(result)`` on that thread.

        ``fence`` guards a call that changes something (see quantlab/exchange/signing.py); a call
        that needs one and has none is refused. ``caller`` decides which halts cover the call,
        and makes its orders carry intents and pass the risk limits. A call refused before it is
        queued (an account not served, after close()) has ``done`` run at once on the caller's thread.
        """
        self._dispatcher.submit(call, allowed, done, fence, caller)

    def reconcile(self, request: reconcile.Request, fence: Fence, done: Callable[[reconcile.Reconciled], None]) -> None:
        """Reconcile a strategy before it starts (quantlab/exchange/reconcile.py); ``done`` on a pool thread."""

        def run() -> None:
            done(reconcile.reconcile(self, self._store, request, fence))

        if not self._dispatcher.aside(run):
            done(reconcile.Reconciled(ok=False, error="the API pool is closed"))

    def cancel_orders(self, accounts: list[str], strategy: str, fence: Fence, done: Callable[[int, str], None]) -> None:
        """Cancel open orders on a reconciliation thread: ``strategy``'s own, or ("") every one on
        ``accounts`` (linear USDT, and the categories and symbols the strategies' intents used);
        ``done(cancelled, error)`` on that thread."""

        def run() -> None:
            try:
                done(reconcile.cancel_open_orders(self, self._store, accounts, strategy, fence), "")
            except Exception as e:  # reported by done; the halt's cancel is not tried again
                done(0, f"{type(e).__name__}: {e}")

        if not self._dispatcher.aside(run):
            done(0, "the API pool is closed")

    def read(self, account: str, method: str, kwargs: dict[str, Any],
             on_turn: Callable[[], None] | None = None) -> dict[str, Any]:
        """A read-only call on the account for the worker itself; raises ApiError. ``on_turn``: told
        just before the request is sent, once the account's rate limit gave it its turn."""
        served = self._accounts.get(account)
        if served is None:
            raise ApiError(f"account {account!r} is not served by this worker")
        try:
            return self._sender.read(served, method, kwargs, on_turn)
        except Failure as failure:
            raise ApiError(self._sender.scrubbed(failure, account).error, failure.ret_code) from None

    def shared_reader(self, account: str, since: float) -> orders.Read:
        """List reads on the account shared by the starts that began by ``since`` (quantlab/exchange/sharedreads.py)."""
        return self._shared_reads.reader(account, since)

    def cancel(self, account: str, kwargs: dict[str, Any], fence: Fence) -> None:
        """Cancel one order for the worker itself (fenced); raises ApiError."""
        self._shared_reads.forget(account)
        _checked(self.call(account, "cancel_order", kwargs, [account], fence))

    def cancel_all(self, account: str, scope: dict[str, str], fence: Fence) -> dict[str, Any]:
        """Cancel every open order in ``scope`` for the worker itself (fenced); raises ApiError."""
        self._shared_reads.forget(account)
        body: dict[str, Any] = _checked(self.call(account, "cancel_all_orders", dict(scope), [account], fence))
        return body

    def exchange_passed_ms(self, account: str) -> int:
        """A time (ms) the exchange's clock of a bybit account has surely passed now; raises ApiError."""
        served = self._accounts.get(account)
        if served is None or served.type != "bybit":
            raise ApiError(f"account {account!r} is not a bybit account served by this worker")
        try:
            return self._clients.exchange_passed_ms(served)
        except Failure as failure:
            raise ApiError(self._sender.scrubbed(failure, account).error, failure.ret_code) from None

    def seal(self, account: str, strategy: str, epoch: int) -> None:
        """Make ``account`` take no more writes of ``strategy`` from below ``epoch`` (paper accounts)."""
        if account in self._accounts:
            self._sender.seal(account, strategy, epoch)

    def in_flight(self, strategy: str) -> set[str]:
        """orderLinkIds of the strategy this process is sending now (their outcome is coming)."""
        return self._flying.of(strategy)

    def wait_landed(self, strategy: str, link_ids: set[str], timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until none of ``link_ids`` is being sent; True when none is."""
        return self._flying.wait_landed(strategy, link_ids, timeout)

    def close(self) -> None:
        """Let running calls finish, drop queued ones, end rate-limit waits, close every connection."""
        self._closing.set()
        self._dispatcher.close()
        self._clients.close()


def _checked(result: ApiResult) -> Any:
    if not result.ok:
        raise ApiError(result.error, result.ret_code)
    return result.result
