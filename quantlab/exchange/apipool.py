"""The worker's API pool: runs strategies' exchange calls with the worker's own clients.

Secrets never leave the worker: a strategy sends ``ApiCall(account, method,
kwargs)`` and gets an ``ApiResult`` back. The pool checks the strategy may use
that account and method before any client is touched, waits for the account's
rate limiter (one per account, shared by every strategy on this worker), runs
the call and turns every outcome into an ``ApiResult``; it never raises.

Each account has its own queue and threads: a call waiting for one account's
rate limit (or a slow reply) never holds a thread another account needs.
Every call has a deadline; one that cannot start before it is refused unsent.
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

import logging
import threading
import time
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Collection, Mapping
from urllib.parse import urlsplit

from quantlab.lazy import lazy_module
from quantlab.pool.store import Store
from quantlab.protocol import ApiCall, ApiResult
from quantlab.exchange import calls, halts
from quantlab.exchange.accounts import Account
from quantlab.exchange.methods import PUBLIC_METHODS
from quantlab.exchange.ratelimit import RateLimiter
from quantlab.exchange.signing import ClockOffset, Fence, Fenced, recv_window_ms, time_left

# pybit and requests cost a worker about 12 MB: loaded with the first bybit client (issue 12),
# so a worker that serves paper accounts only never holds them.
if TYPE_CHECKING:
    import requests
    from pybit import exceptions as pybit_errors
    from pybit import unified_trading
    from pybit.unified_trading import HTTP
else:
    requests = lazy_module("requests")
    pybit_errors = lazy_module("pybit.exceptions")
    unified_trading = lazy_module("pybit.unified_trading")

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

def network_errors() -> tuple[type[Exception], ...]:
    return (
        requests.exceptions.Timeout,
        requests.exceptions.ConnectionError,  # also refused, reset, proxy and TLS failures
        requests.exceptions.ChunkedEncodingError,
        requests.exceptions.ContentDecodingError,
    )


class _Failure(Exception):
    """Internal: a call failed; carries the ApiResult fields."""

    def __init__(self, error: str, ret_code: int, kind: str) -> None:
        super().__init__(error)
        self.error = error
        self.ret_code = ret_code
        self.kind = kind


@dataclass(frozen=True)
class _Job:
    """One call as the pool runs it."""

    call: ApiCall
    allowed: Collection[str]
    fence: Fence | None
    deadline: float  #: monotonic: a call that cannot start before it is refused unsent
    strategy: str  #: the caller, for halts; "" for the worker's own calls


class ApiPool:
    """Runs exchange calls for the accounts this worker serves."""

    def __init__(
        self,
        accounts: list[Account],
        store: Store,
        *,
        proxy: str | None = None,
        worker: str = "",
        threads: int = THREADS_PER_ACCOUNT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self._accounts = {account.name: account for account in accounts}
        self._proxy = proxy
        self._store = store  # the halts are read from it as each call that opens exposure is signed
        self._worker = worker
        self._clock = clock
        self._closing = threading.Event()
        wait: Callable[[float], object] = sleep or self._closing.wait  # close() ends a rate-limit wait at once
        self._limiters = {a.name: RateLimiter(a.rate_limit, clock=clock, sleep=wait) for a in accounts}
        self._offsets = {a.name: ClockOffset() for a in accounts}
        self._papers = {a.name: _paper_exchange(a, store) for a in accounts if a.type == "paper"}  # thread safe
        self._local = threading.local()  # .clients: account name -> this thread's HTTP; .fence: the call's
        self._sessions: list[requests.Session] = []  # every client's session, to close them all
        self._sessions_lock = threading.Lock()
        # One queue and its threads per account (threads start on demand).
        self._queues = {
            a.name: ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"api-{a.name}") for a in accounts
        }
        self._closed = False

    @property
    def names(self) -> list[str]:
        return list(self._accounts)

    def call(
        self, account: str, method: str, kwargs: dict[str, Any], allowed: Collection[str], fence: Fence | None = None,
        strategy: str = "",
    ) -> ApiResult:
        """Run one call on this thread and wait for it; never raises."""
        call = ApiCall(call_id=0, account=account, method=method, kwargs=kwargs)
        return self._run(_Job(call, allowed, fence, self._clock() + CALL_DEADLINE, strategy))

    def submit(
        self, call: ApiCall, allowed: Collection[str], done: Callable[[ApiResult], None], fence: Fence | None = None,
        strategy: str = "",
    ) -> None:
        """Run ``call`` on its account's queue, then ``done(result)`` on that thread.

        ``fence`` guards a call that changes something (see quantlab/exchange/signing.py); a call
        that needs one and has none is refused. ``strategy`` (the caller) decides which halts
        cover the call. A call refused before it is queued (an account not served, after
        close()) has ``done`` run at once on the caller's thread.
        """
        job = _Job(call, allowed, fence, self._clock() + CALL_DEADLINE, strategy)
        queue = self._queues.get(call.account)
        try:
            if queue is None:
                raise RuntimeError("no such account")  # _run refuses it with the permission message
            queue.submit(self._run_and_deliver, job, done)
        except RuntimeError:  # not served, or the queue is shut down
            _deliver(done, self._run(job))

    def close(self) -> None:
        """Let running calls finish, drop queued ones, end rate-limit waits, close every connection."""
        self._closed = True
        self._closing.set()
        for queue in self._queues.values():
            queue.shutdown(wait=False, cancel_futures=True)
        for queue in self._queues.values():
            queue.shutdown(wait=True)
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

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
            return ApiResult(call_id=call.call_id, ok=True, result=self._attempts(account, call, fence, job.deadline, gate))
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
            halt = found.covering(self._worker, job.strategy, [account.name])
            if halt is not None:
                why = problem or f"halted ({halt.label})"
                raise _Failure(f"{job.call.method}: {why}: calls that open exposure are refused", halts.HALTED, "halted")

        return gate

    def _attempts(
        self, account: Account, call: ApiCall, fence: Fence | None, deadline: float, gate: Callable[[], None] | None
    ) -> Any:
        """Send the call, again after a rate-limit pause, up to the account's max_retries, before its deadline."""
        limiter = self._limiters[account.name]
        attempts = max(1, account.max_retries)
        attempt = 1
        while True:
            self._check_open(fence)
            wait = deadline - self._clock()
            if wait <= 0 or not limiter.acquire(wait):
                raise _Failure(f"rate limit: no turn on {account.name!r} within its {CALL_DEADLINE:g} s deadline",
                               RATE_LIMITED, "api")
            self._check_open(fence)
            if gate is not None:
                gate()  # early, so a halted call does not spend a turn; again as it is signed
            try:
                return self._send(account, call.method, call.kwargs, fence, gate)
            except _Failure as failure:
                # A 10006 was refused before the exchange acted on it, so sending again is safe.
                if failure.ret_code != RATE_LIMITED or attempt >= attempts:
                    raise
            attempt += 1

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
            raise _Failure(f"{method}: {e.message} (retCode {e.status_code})", e.status_code, "api") from None
        except pybit_errors.FailedRequestError as e:
            # pybit gives the HTTP status for a non-200 reply (it has resp_headers then) and
            # made-up codes (400 "retries exceeded", 409 bad JSON) for its own failures.
            if e.resp_headers is None:
                raise _Failure(f"{method}: {e.message}", 0, "api") from None
            raise _Failure(f"{method}: {e.message} (HTTP {e.status_code})", e.status_code, "api") from None
        except network_errors() as e:
            log.warning("API call %s on %s: network error %s", method, account.name, type(e).__name__)
            raise _Failure(f"{method}: network error: {e}", 0, "network") from None
        except Exception as e:  # bad kwargs, a missing secret, pybit's own checks
            raise _Failure(f"{method}: {type(e).__name__}: {e}", 0, "api") from None
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
