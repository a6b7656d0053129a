"""The worker's API pool: runs strategies' exchange calls with the worker's own clients.

Secrets never leave the worker: a strategy sends ``ApiCall(account, method,
kwargs)`` and gets an ``ApiResult`` back. The pool checks the strategy may use
that account and method before any client is touched, waits for the account's
rate limiter (one per account, shared by every strategy on this worker), runs
the call and turns every outcome into an ``ApiResult``; it never raises.

Each account has its own queue and threads: a call waiting for one account's
rate limit (or a slow reply) never holds a thread another account needs.
Every call has a deadline; one that cannot start before it is refused unsent.
An order (quantlab/exchange/calls.py ORDER_METHODS) from a strategy is checked
against its risk limits (quantlab/exchange/risk.py), gets an orderLinkId, and
has its intent written before it is signed and its outcome after
(quantlab/exchange/intents.py); when its reply is lost, the outcome is found
by querying that orderLinkId once no copy of the request can still arrive.
A call that changes something (quantlab/exchange/calls.py) carries a fence,
checked when pybit signs the request and turned into its ``recv_window``
(quantlab/exchange/signing.py), so it leaves only while the worker's lease
and the strategy's epoch hold, and the exchange refuses it if it arrives later.

Bybit accounts use pybit's ``HTTP`` client, one per account per thread, since
requests does not promise that a session is thread safe. Paper accounts go to
one ``PaperExchange`` per account. pybit is left to retry what it retries well
(10002, a stale timestamp); the rate limit (10006, or ``X-Bapi-Limit-Status: 0``)
is handled here so that it pauses every thread on the account, not just the one
that hit it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import logging
import threading
import time
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Collection, ContextManager, Mapping, NamedTuple
from urllib.parse import urlsplit

from quantlab.store.store import Store
from quantlab.protocol import ApiCall, ApiResult
from quantlab.errors import ApiError
from quantlab.exchange import calls, halts, intents, orders, reconcile
from quantlab.exchange.accounts import Account
from quantlab.exchange.intents import Intent, Outcome
from quantlab.exchange.methods import PUBLIC_METHODS
from quantlab.exchange.ratelimit import RateLimiter
from quantlab.exchange.risk import NO_LIMITS, RISK_REFUSED, Level, Refused, RiskBook, RiskLimits, notional
from quantlab.exchange.signing import ClockOffset, Fence, Fenced, recv_window_ms, time_left

# pybit and requests cost a worker about 12 MB: imported by a pool that serves a bybit account
# (issue 12), so a worker that serves paper accounts only never holds them.
if TYPE_CHECKING:
    import requests
    from pybit import exceptions as pybit_errors
    from pybit import unified_trading
    from pybit.unified_trading import HTTP


def _import_pybit() -> None:
    """Import pybit and requests for real, on the thread that makes the pool, before any API thread.

    Not lazily on first use: Python 3.11's LazyLoader is not thread safe, and two API threads
    making their first clients at once got half-loaded modules ("has no attribute 'HTTP'").
    """
    global requests, pybit_errors, unified_trading
    import requests
    from pybit import exceptions as pybit_errors
    from pybit import unified_trading

if TYPE_CHECKING:
    from quantlab.exchange.paper import PaperExchange

log = logging.getLogger(__name__)



CALL_DEADLINE = 10.0  #: seconds from submission within which a call must start, else it is refused unsent
RETRY_DELAY = 0.2  #: seconds pybit waits before retrying a retried retCode (its default is 3)
DEFAULT_PAUSE = 1.0  #: seconds to pause an account after a 10006 that names no reset time
MAX_PAUSE = 60.0  #: seconds; a longer reset time from the exchange is taken as this
RATE_LIMITED = 10006  # Bybit's retCode for "too many visits"
STALE_TIMESTAMP = 10002  # Bybit's retCode for a timestamp outside the recv_window
THREADS_PER_ACCOUNT = 4  #: threads per account: calls of one account wait only for each other
MIN_SCRUB = 6  # shorter "secrets" (tests, typos) occur in plain words: blanking them mangles messages
DUPLICATE_LINK_ID = 110072  # Bybit: "OrderLinkedID is duplicate": an earlier copy may have been taken
WINDOW_SLACK = 1.0  #: seconds added to a request's window before a lost order is looked for
MAX_ORDER_WINDOW = 30.0  #: seconds an order may take to reach the exchange, however long the lease
PRICE_FRESH = 1.0  #: seconds a last price is used for the notional of market orders

def network_errors() -> tuple[type[Exception], ...]:
    return (
        requests.exceptions.Timeout,
        requests.exceptions.ConnectionError,  # also refused, reset, proxy and TLS failures
        requests.exceptions.ChunkedEncodingError,
        requests.exceptions.ContentDecodingError,
    )


class _Failure(Exception):
    """Internal: a call failed; carries the ApiResult fields.

    ``sure``: the exchange surely did not act on it (it answered with an error, or nothing
    was sent). A network error, an HTTP error or a garbled reply is not sure: the request
    may have been carried out, and an order's outcome must then be looked for.
    """

    def __init__(self, error: str, ret_code: int, kind: str, sure: bool = True) -> None:
        super().__init__(error)
        self.error = error
        self.ret_code = ret_code
        self.kind = kind
        self.sure = sure


class Caller(NamedTuple):
    """Who makes a call: a strategy (its epoch names its orders; its limits bound them), or the worker."""

    strategy: str
    epoch: int = 0
    limits: RiskLimits = NO_LIMITS


WORKER = Caller("")  #: the worker's own calls (halts' cancels, reconciliation): no intents, no limits


@dataclass(frozen=True)
class _Job:
    """One call as the pool runs it."""

    call: ApiCall
    allowed: Collection[str]
    fence: Fence | None
    deadline: float  #: monotonic: a call that cannot start before it is refused unsent
    caller: Caller  #: for halts, intents and risk limits


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
    ) -> None:
        self._accounts = {account.name: account for account in accounts}
        if any(account.type == "bybit" for account in accounts):
            _import_pybit()
        self._proxy = proxy
        self._store = store  # the halts are read from it as each call that opens exposure is signed
        self._worker = worker
        self.instance = instance  #: this worker process, written into the intents it sends
        self._clock = clock
        self._closing = threading.Event()
        wait: Callable[[float], object] = sleep or self._closing.wait  # close() ends a rate-limit wait at once
        #: Called on a pool thread with (account, seconds) after each rate-limit wait (set by a worker serving metrics).
        self.wait_observer: Callable[[str, float], None] | None = None
        self._limiters = {a.name: RateLimiter(a.rate_limit, clock=clock, sleep=self._timed(a.name, wait)) for a in accounts}
        self._offsets = {a.name: ClockOffset() for a in accounts}
        self._papers = {a.name: _paper_exchange(a, store) for a in accounts if a.type == "paper"}  # thread safe
        self._local = threading.local()  # .clients: account name -> this thread's HTTP; .fence: the call's
        self._sessions: list[requests.Session] = []  # every client's session, to close them all
        self._sessions_lock = threading.Lock()
        # One queue and its threads per account (threads start on demand).
        self._queues = {
            a.name: ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"api-{a.name}") for a in accounts
        }
        self._risk = RiskBook(clock)
        self._order_locks = {a.name: threading.Lock() for a in accounts}  # while open orders are counted
        self._prices: dict[tuple[str, str, str], tuple[float, float]] = {}  # (account, category, symbol) -> (price, at)
        self._in_flight: dict[str, set[str]] = {}  # strategy -> orderLinkIds being sent by this process
        self._in_flight_changed = threading.Condition()  #: guards _in_flight; notified as orders land
        # Reconciliation waits on several calls in turn: its own threads, so it never holds an account's.
        self._reconciling = ThreadPoolExecutor(max_workers=2, thread_name_prefix="reconcile")
        self._closed = False

    @property
    def names(self) -> list[str]:
        return list(self._accounts)

    def call(
        self, account: str, method: str, kwargs: dict[str, Any], allowed: Collection[str], fence: Fence | None = None,
        caller: Caller = WORKER,
    ) -> ApiResult:
        """Run one call on this thread and wait for it; never raises."""
        call = ApiCall(call_id=0, account=account, method=method, kwargs=kwargs)
        return self._run(_Job(call, allowed, fence, self._clock() + CALL_DEADLINE, caller))

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
        job = _Job(call, allowed, fence, self._clock() + CALL_DEADLINE, caller)
        queue = self._queues.get(call.account)
        try:
            if queue is None:
                raise RuntimeError("no such account")  # _run refuses it with the permission message
            queue.submit(self._run_and_deliver, job, done)
        except RuntimeError:  # not served, or the queue is shut down
            _deliver(done, self._run(job))

    def reconcile(self, request: reconcile.Request, fence: Fence, done: Callable[[reconcile.Reconciled], None]) -> None:
        """Reconcile a strategy before it starts (quantlab/exchange/reconcile.py); ``done`` on a pool thread."""

        def run() -> None:
            done(reconcile.reconcile(self, self._store, request, fence))

        try:
            self._reconciling.submit(run)
        except RuntimeError:  # closed
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

        try:
            self._reconciling.submit(run)
        except RuntimeError:
            done(0, "the API pool is closed")

    def read(self, account: str, method: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """A read-only call on the account for the worker itself; raises ApiError."""
        served = self._accounts.get(account)
        if served is None:
            raise ApiError(f"account {account!r} is not served by this worker")
        try:
            return self._read(served, method, kwargs)
        except _Failure as failure:
            raise ApiError(self._scrubbed(failure, account).error, failure.ret_code) from None

    def cancel(self, account: str, kwargs: dict[str, Any], fence: Fence) -> None:
        """Cancel one order for the worker itself (fenced); raises ApiError."""
        self._checked(self.call(account, "cancel_order", kwargs, [account], fence))

    def cancel_all(self, account: str, scope: dict[str, str], fence: Fence) -> dict[str, Any]:
        """Cancel every open order in ``scope`` for the worker itself (fenced); raises ApiError."""
        body: dict[str, Any] = self._checked(self.call(account, "cancel_all_orders", dict(scope), [account], fence))
        return body

    @staticmethod
    def _checked(result: ApiResult) -> Any:
        if not result.ok:
            raise ApiError(result.error, result.ret_code)
        return result.result

    def close(self) -> None:
        """Let running calls finish, drop queued ones, end rate-limit waits, close every connection."""
        self._closed = True
        self._closing.set()
        self._reconciling.shutdown(wait=False, cancel_futures=True)
        for queue in self._queues.values():
            queue.shutdown(wait=False, cancel_futures=True)
        for queue in self._queues.values():
            queue.shutdown(wait=True)
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def _timed(self, account: str, sleep: Callable[[float], object]) -> Callable[[float], None]:
        """``sleep`` that reports how long it waited: the limiter calls it only when a call must wait."""

        def timed_sleep(seconds: float) -> None:
            started = self._clock()
            sleep(seconds)
            if self.wait_observer is not None:
                self.wait_observer(account, self._clock() - started)

        return timed_sleep

    # ---- one call ----

    def _run_and_deliver(self, job: _Job, done: Callable[[ApiResult], None]) -> None:
        _deliver(done, self._run(job))

    def _run(self, job: _Job) -> ApiResult:
        call = job.call
        try:
            account = self._permitted(call, job.allowed)
            if calls.fenced(call.method) and job.fence is None:
                raise _Failure(f"{call.method!r} changes the account and needs a fence; refused", 0, "permission")
            fence = job.fence if calls.fenced(call.method) else None  # reads skip the lease check
            gate = self._halt_gate(account, job) if calls.opens_exposure(call.method, call.kwargs) else None
            if call.method in calls.ORDER_METHODS and job.caller.strategy:
                result = self._place(account, job, fence, gate)
            else:
                result = self._attempts(account, call, fence, job.deadline, gate)
            return ApiResult(call_id=call.call_id, ok=True, result=result)
        except _Failure as failure:
            return _result(call.call_id, self._scrubbed(failure, call.account))
        except Exception as e:  # a bug of ours must not kill the pool thread or leave a call unanswered
            log.exception("API call %s on %s failed unexpectedly", call.method, call.account)
            return _result(call.call_id, _Failure(f"internal error: {type(e).__name__}", 0, "api"))

    def _permitted(self, call: ApiCall, allowed: Collection[str]) -> Account:
        """The account, if the strategy may use it and the method is an exchange call."""
        account = self._accounts.get(call.account)
        if call.account not in allowed or account is None:
            raise _Failure(f"account {call.account!r} is not available to this strategy", 0, "permission")
        if call.method not in PUBLIC_METHODS:
            raise _Failure(f"{call.method!r} is not an exchange API method", 0, "permission")
        return account

    def _halt_gate(self, account: Account, job: _Job) -> Callable[[], None]:
        """A check, run as the call is signed, that no halt covers it (fail closed: unreadable = halted)."""

        def gate() -> None:
            found, problem = halts.read_or_closed(self._store)
            halt = found.covering(self._worker, job.caller.strategy, [account.name])
            if halt is not None:
                why = problem or f"halted ({halt.label})"
                raise _Failure(f"{job.call.method}: {why}: calls that open exposure are refused", halts.HALTED, "halted")

        return gate

    def _attempts(
        self, account: Account, call: ApiCall, fence: Fence | None, deadline: float, gate: Callable[[], None] | None,
        prepare: Callable[[Fence | None], tuple[dict[str, Any], Fence | None]] | None = None,
    ) -> Any:
        """Send the call, again after a rate-limit pause, up to the account's max_retries, before its deadline.

        ``prepare`` runs once, just before the first send: it may refuse the call (risk limits),
        and gives the arguments and the fence to send with (an order's intent is written there).
        """
        limiter = self._limiters[account.name]
        attempts = max(1, account.max_retries)
        attempt = 1
        kwargs = call.kwargs
        while True:
            self._check_open(fence)
            wait = deadline - self._clock()
            if wait <= 0 or not limiter.acquire(wait):
                raise _Failure(f"rate limit: no turn on {account.name!r} within its {CALL_DEADLINE:g} s deadline",
                               RATE_LIMITED, "api")
            self._check_open(fence)
            if gate is not None:
                gate()  # early, so a halted call does not spend a turn; again as it is signed
            if prepare is not None:
                (kwargs, fence), prepare = prepare(fence), None
            try:
                return self._send(account, call.method, kwargs, fence, gate)
            except _Failure as failure:
                # A 10006 was refused before the exchange acted on it, so sending again is safe.
                if failure.ret_code != RATE_LIMITED or attempt >= attempts:
                    raise
            attempt += 1

    # ---- orders: risk limits, intents, lost replies ----

    def _place(self, account: Account, job: _Job, fence: Fence | None, gate: Callable[[], None] | None) -> Any:
        """Send a strategy's order: limits checked, intent written before it leaves, outcome after."""
        call, caller = job.call, job.caller
        placed = calls.orders_of(call.method, call.kwargs)
        if not placed:
            return self._attempts(account, call, fence, job.deadline, gate)  # malformed: the exchange says why
        levels = [Level(f"strategy {caller.strategy}", caller.limits, caller.strategy),
                  Level(f"account {account.name}", account.limits)]
        levels = [level for level in levels if level.limits != NO_LIMITS]
        counting = any(level.limits.counts_open_orders for level in levels)
        written: list[Intent] = []

        def prepare(fence: Fence | None) -> tuple[dict[str, Any], Fence | None]:
            self._check_risk(account, call.method, placed, levels)
            # Frozen at the lease left now (at most MAX_ORDER_WINDOW): no copy of the order may be
            # signed with a window that ends after ``expires``.
            now = self._clock()
            until = min(fence() if fence is not None else math.inf, now + MAX_ORDER_WINDOW)
            expires = time.time() + max(0.0, until - now) + self._offsets[account.name].slack() + WINDOW_SLACK
            written[:] = intents.begin(self._store, caller.strategy, caller.epoch, self.instance, account.name,
                                       placed, expires)
            self._flying(caller.strategy, written, True)
            linked = [{**o, "orderLinkId": i.link_id} for o, i in zip(placed, written)]
            return calls.with_orders(call.method, call.kwargs, linked), _capped(fence, until)

        lock: ContextManager[Any] = self._order_locks[account.name] if counting else contextlib.nullcontext()
        try:
            with lock:
                body = self._attempts(account, call, fence, job.deadline, gate, prepare)
        except _Failure as failure:
            if not written:
                raise
            if failure.sure:
                self._settle(caller, {i.link_id: Outcome("rejected", detail=failure.error) for i in written})
                raise
            return self._find_lost(account, call.method, caller, written, failure)
        finally:
            self._flying(caller.strategy, written, False)
        self._settle(caller, orders.from_answer(call.method, body, written))
        return body

    def _check_risk(self, account: Account, method: str, placed: list[dict[str, Any]], levels: list[Level]) -> None:
        if not levels:
            return
        read = self._reader(account)
        priced = any(level.limits.max_order_notional is not None for level in levels)
        notionals = [notional(o, functools.partial(self._last_price, account, o)) for o in placed] if priced else []
        scope = intents.scope_of(str(placed[0].get("category", "")), str(placed[0].get("symbol", "")))

        listed: list[list[dict[str, Any]]] = []  # the exchange's open orders, read once for every level

        def open_orders(level: Level) -> int:
            if not listed:
                listed.append(orders.open_orders(read, scope))
            rows = listed[0]
            if not level.strategy:
                return len(rows)
            log_ = intents.read(self._store, level.strategy)
            return sum(1 for r in rows if log_.epoch_of(level.strategy, str(r.get("orderLinkId", ""))) is not None)

        try:
            self._risk.check(levels, len(placed), notionals, open_orders)
        except Refused as e:
            raise _Failure(f"{method}: refused by a risk limit: {e}", RISK_REFUSED, "risk") from None

    def _last_price(self, account: Account, order: dict[str, Any]) -> float:
        key = (account.name, str(order.get("category", "")), str(order.get("symbol", "")))
        price, at = self._prices.get(key, (0.0, -PRICE_FRESH))
        if self._clock() - at < PRICE_FRESH:
            return price
        body = self._read(account, "get_tickers", {"category": key[1], "symbol": key[2]})
        rows = (body.get("result") or {}).get("list") or [{}]
        try:
            price = float(rows[0].get("lastPrice", 0))
        except (TypeError, ValueError):
            price = 0.0
        if price <= 0:
            raise _Failure(f"no last price for {key[2]} to judge a market order's notional", RISK_REFUSED, "risk")
        self._prices[key] = (price, self._clock())
        return price

    def _find_lost(self, account: Account, method: str, caller: Caller, written: list[Intent], failure: _Failure) -> Any:
        """The reply to an order was lost: once no copy can arrive any more, ask the exchange for it."""
        until = getattr(self._local, "window_end", None) or max(i.expires for i in written)
        delay = until - time.time()
        unknown = f"{failure.error}; outcome unknown: the order intent stays open and is settled before the strategy starts again"
        if delay > 0 and self._closing.wait(delay):
            raise _Failure(unknown, failure.ret_code, failure.kind, sure=False)
        read = self._reader(account)
        try:
            found = {i.link_id: orders.find(read, i) for i in written}
        except _Failure as e:
            raise _Failure(f"{unknown} ({e.error})", failure.ret_code, failure.kind, sure=False) from None
        self._settle(caller, found)
        if all(o.status == "absent" for o in found.values()):
            names = ", ".join(found)
            raise _Failure(f"{failure.error}; not placed: the exchange has no order {names}", failure.ret_code,
                           failure.kind)
        log.warning("API call %s on %s: reply lost, order found by orderLinkId", method, account.name)
        return orders.lost_reply_body(method, written, found)

    def _settle(self, caller: Caller, outcomes: dict[str, Outcome]) -> None:
        try:
            intents.settle(self._store, caller.strategy, outcomes)
        except Exception:  # the order stands; the open intent is settled by query before the next start
            log.exception("could not record the outcome of %s's order(s) %s", caller.strategy, ", ".join(outcomes))

    def _flying(self, strategy: str, written: list[Intent], on: bool) -> None:
        with self._in_flight_changed:
            ids = self._in_flight.setdefault(strategy, set())
            ids.update(i.link_id for i in written) if on else ids.difference_update(i.link_id for i in written)
            if not ids:
                del self._in_flight[strategy]
            if not on:
                self._in_flight_changed.notify_all()

    def in_flight(self, strategy: str) -> set[str]:
        """orderLinkIds of the strategy this process is sending now (their outcome is coming)."""
        with self._in_flight_changed:
            return set(self._in_flight.get(strategy, ()))

    def wait_landed(self, strategy: str, link_ids: set[str], timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until none of ``link_ids`` is being sent; True when none is."""
        with self._in_flight_changed:
            return self._in_flight_changed.wait_for(lambda: not link_ids & self._in_flight.get(strategy, set()), timeout)

    def _reader(self, account: Account) -> orders.Read:
        return functools.partial(self._read, account)

    def _read(self, account: Account, method: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """A read on the account for the pool's own needs, in its turn under the account's rate limit."""
        if not self._limiters[account.name].acquire(CALL_DEADLINE):
            raise _Failure(f"rate limit: no turn on {account.name!r} for {method}", RATE_LIMITED, "api")
        body: dict[str, Any] = self._send(account, method, kwargs, None, None)
        return body

    def _check_open(self, fence: Fence | None) -> None:
        if self._closed:
            raise _Failure("the API pool is closed", 0, "api")
        if fence is not None:
            try:
                time_left(fence, self._clock())
            except Fenced as e:
                raise _Failure(str(e), 0, "permission") from None

    def _send(
        self, account: Account, method: str, kwargs: dict[str, Any], fence: Fence | None, gate: Callable[[], None] | None
    ) -> Any:
        if account.type == "paper":
            self._check_open(fence)  # the simulator answers at once: this is the moment it is "signed"
            if gate is not None:
                gate()
            return _paper_body(method, self._papers[account.name].call(method, kwargs))
        self._local.window_end = None
        try:
            client = self._client(account)
            if fence is not None and self._offsets[account.name].stale(self._clock()):
                self._measure_offset(account, client)
            self._local.fence, self._local.gate = fence, gate  # read by the signer (_install_signer)
            try:
                body, _elapsed, headers = getattr(client, method)(**kwargs)
            finally:
                self._local.fence = self._local.gate = None
        except Fenced as e:
            raise _Failure(f"{method}: {e}", 0, "permission") from None
        except _Failure:
            raise
        except pybit_errors.InvalidRequestError as e:
            self._note_limits(account, e.resp_headers, rate_limited=e.status_code == RATE_LIMITED)
            if e.status_code == STALE_TIMESTAMP:
                self._offsets[account.name].invalidate()  # our idea of the exchange's clock may be wrong
            # A duplicate orderLinkId may mean an earlier copy of this very order was taken.
            raise _Failure(f"{method}: {e.message} (retCode {e.status_code})", e.status_code, "api",
                           sure=e.status_code != DUPLICATE_LINK_ID) from None
        except pybit_errors.FailedRequestError as e:
            # pybit gives the HTTP status for a non-200 reply (it has resp_headers then) and
            # made-up codes (400 "retries exceeded", 409 bad JSON) for its own failures.
            if e.resp_headers is None:
                raise _Failure(f"{method}: {e.message}", 0, "api", sure=False) from None
            raise _Failure(f"{method}: {e.message} (HTTP {e.status_code})", e.status_code, "api", sure=False) from None
        except network_errors() as e:
            log.warning("API call %s on %s: network error %s", method, account.name, type(e).__name__)
            raise _Failure(f"{method}: network error: {e}", 0, "network", sure=False) from None
        except Exception as e:  # bad kwargs, a missing secret, pybit's own checks
            raise _Failure(f"{method}: {type(e).__name__}: {e}", 0, "api", sure=False) from None
        self._note_limits(account, headers, rate_limited=False)
        return body

    def _measure_offset(self, account: Account, client: HTTP) -> None:
        """The exchange's clock against ours, from /v5/market/time (public, unsigned)."""
        try:
            before = time.time()
            body, _elapsed, _headers = client.get_server_time()
            after = time.time()
            server = int(body["result"]["timeNano"]) / 1e9
        except network_errors() as e:
            raise _Failure(f"cannot read the exchange's time to fence the call: {e}", 0, "network") from None
        except Exception as e:  # a fenced call does not leave on a guess
            raise _Failure(f"cannot read the exchange's time to fence the call: {type(e).__name__}: {e}", 0, "api") from None
        offset, error = server - (before + after) / 2, (after - before) / 2
        self._offsets[account.name].update(offset, error, self._clock())
        if abs(offset) > 1.0:
            log.warning("clock offset to the exchange for %s: %.3f s (fenced calls get shorter windows)", account.name, offset)

    def _install_signer(self, client: HTTP, account: Account) -> None:
        """Wrap pybit's signing: a fenced call is checked, and its recv_window cut, as it is signed.

        pybit signs every attempt (its own retries too) through ``_prepare_headers``, so no
        attempt of a fenced call is signed after its lease, and none with a window that outlasts it.
        """
        original = client._prepare_headers
        offset = self._offsets[account.name]

        def prepare_headers(payload: Any, recv_window: int, *args: Any, **kwargs: Any) -> Any:
            fence: Fence | None = getattr(self._local, "fence", None)
            gate: Callable[[], None] | None = getattr(self._local, "gate", None)
            if gate is not None:
                gate()  # raises _Failure through pybit, which catches only network and JSON errors
            if fence is not None:
                recv_window = recv_window_ms(fence, self._clock(), offset.slack(), recv_window)
            # The last moment (our clock) the exchange could still take this request: a lost
            # order is looked for only after it.
            self._local.window_end = time.time() + recv_window / 1000 + offset.slack() + WINDOW_SLACK
            return original(payload, recv_window, *args, **kwargs)

        client._prepare_headers = prepare_headers

    def _note_limits(self, account: Account, headers: Mapping[str, str] | None, *, rate_limited: bool) -> None:
        """Pause the account when the exchange says its budget is spent (pybit ignores these headers)."""
        headers = headers or {}
        if not rate_limited and headers.get("X-Bapi-Limit-Status") != "0":
            return
        try:
            delay = int(headers["X-Bapi-Limit-Reset-Timestamp"]) / 1000 - time.time()
        except (KeyError, ValueError):
            delay = DEFAULT_PAUSE
        delay = min(max(delay, 0.0), MAX_PAUSE)
        log.warning("rate limit reached on %s: pausing its calls for %.2f s", account.name, delay)
        self._limiters[account.name].pause_until(self._clock() + delay)

    def _scrubbed(self, failure: _Failure, account_name: str) -> _Failure:
        """The failure with the account's secret and any proxy password blanked out of its text."""
        account = self._accounts.get(account_name)
        if account is None:
            return failure
        proxies = [p for p in (account.proxy, self._proxy) if p]
        secrets = [_secret_or_empty(account)] + [urlsplit(p).password or "" for p in proxies]
        error = failure.error
        for secret in secrets:
            if len(secret) >= MIN_SCRUB:
                error = error.replace(secret, "***")
        return _Failure(error, failure.ret_code, failure.kind)

    # ---- clients ----

    def _client(self, account: Account) -> HTTP:
        """This thread's pybit client for ``account``; never log or repr it: its repr holds the secret."""
        clients: dict[str, HTTP] | None = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        client = clients.get(account.name)
        if client is None:
            client = clients[account.name] = self._new_client(account)
        return client

    def _new_client(self, account: Account) -> HTTP:
        client = unified_trading.HTTP(
            testnet=account.testnet,
            demo=account.demo,
            domain=account.domain,
            tld=account.tld,
            api_key=account.api_key,
            api_secret=account.secret(),
            timeout=account.timeout,
            max_retries=max(1, account.max_retries),
            retry_delay=RETRY_DELAY,
            return_response_headers=True,
            log_requests=False,  # True logs the key and signature
        )
        client.retry_codes = set(client.retry_codes) - {RATE_LIMITED}  # ours to handle, for all threads
        self._install_signer(client, account)
        proxy = account.proxy or self._proxy
        if account.endpoint:
            client.endpoint = account.endpoint
        if proxy:
            client.client.proxies = {"http": proxy, "https": proxy}
        if account.endpoint or proxy:
            client.client.trust_env = False  # HTTP(S)_PROXY in the environment must not override them
        with self._sessions_lock:
            self._sessions.append(client.client)
        return client


def _capped(fence: Fence | None, until: float) -> Fence | None:
    """``fence``, never later than ``until``."""
    if fence is None:
        return None
    held = fence
    return lambda: min(held(), until)


def _paper_exchange(account: Account, store: Store) -> PaperExchange:
    from quantlab.exchange.paper import PaperExchange  # the simulator loads only where a paper account is served

    return PaperExchange(account, store)


def _paper_body(method: str, envelope: dict[str, Any]) -> dict[str, Any]:
    """The simulator answers with an envelope, errors included, like the exchange does."""
    code = envelope.get("retCode", 0)
    if code:
        raise _Failure(f"{method}: {envelope.get('retMsg', '')} (retCode {code})", code, "api")
    return envelope


def _secret_or_empty(account: Account) -> str:
    try:
        return account.secret()
    except Exception:  # a secret that cannot be read cannot leak either
        return ""


def _result(call_id: int, failure: _Failure) -> ApiResult:
    return ApiResult(call_id=call_id, ok=False, error=failure.error, ret_code=failure.ret_code, kind=failure.kind)


def _deliver(done: Callable[[ApiResult], None], result: ApiResult) -> None:
    try:
        done(result)
    except Exception:  # the executor would swallow it silently
        log.exception("API result callback failed for call %d", result.call_id)
