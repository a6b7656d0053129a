"""The worker's API pool: runs strategies' exchange calls with the worker's own clients.

Secrets never leave the worker: a strategy sends ``ApiCall(account, method,
kwargs)`` and gets an ``ApiResult`` back. The pool checks the strategy may use
that account and method before any client is touched, waits for the account's
rate limiter (one per account, shared by every strategy on this worker), runs
the call and turns every outcome into an ``ApiResult``; it never raises.

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
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Collection, Mapping
from urllib.parse import urlsplit

import requests
from pybit._http_manager import _V5HTTPManager
from pybit.exceptions import FailedRequestError, InvalidRequestError
from pybit.unified_trading import HTTP

from quantlab.pool.store import Store
from quantlab.protocol import ApiCall, ApiResult
from quantlab.worker.accounts import Account
from quantlab.worker.ratelimit import RateLimiter

if TYPE_CHECKING:
    from quantlab.worker.paper import PaperExchange

log = logging.getLogger(__name__)


def _request_methods() -> frozenset[str]:
    """pybit's endpoint methods: what the endpoint mixins add to the client, not its own helpers."""
    helpers = set(dir(_V5HTTPManager))  # prepare_payload and the like: they build, they do not send
    return frozenset(
        name for name in dir(HTTP) if not name.startswith("_") and name not in helpers and callable(getattr(HTTP, name))
    )


PUBLIC_METHODS: frozenset[str] = _request_methods()

ACQUIRE_TIMEOUT = 10.0  #: seconds a call waits for its account's rate limiter before failing with 10006
RETRY_DELAY = 0.2  #: seconds pybit waits before retrying a retried retCode (its default is 3)
DEFAULT_PAUSE = 1.0  #: seconds to pause an account after a 10006 that names no reset time
MAX_PAUSE = 60.0  #: seconds; a longer reset time from the exchange is taken as this
RATE_LIMITED = 10006  # Bybit's retCode for "too many visits"
MIN_SCRUB = 6  # shorter "secrets" (tests, typos) occur in plain words: blanking them mangles messages

NETWORK_ERRORS = (
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


class ApiPool:
    """Runs exchange calls for the accounts this worker serves."""

    def __init__(
        self,
        accounts: list[Account],
        store: Store,
        *,
        proxy: str | None = None,
        threads: int = 8,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._accounts = {account.name: account for account in accounts}
        self._proxy = proxy
        self._clock = clock
        self._limiters = {a.name: RateLimiter(a.rate_limit, clock=clock, sleep=sleep) for a in accounts}
        self._papers = {a.name: _paper_exchange(a, store) for a in accounts if a.type == "paper"}  # thread safe
        self._local = threading.local()  # .clients: account name -> this thread's HTTP
        self._sessions: list[requests.Session] = []  # every client's session, to close them all
        self._sessions_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="apipool")
        self._closed = False

    @property
    def names(self) -> list[str]:
        return list(self._accounts)

    def call(self, account: str, method: str, kwargs: dict[str, Any], allowed: Collection[str]) -> ApiResult:
        """Run one call on this thread and wait for it; never raises."""
        return self._run(ApiCall(call_id=0, account=account, method=method, kwargs=kwargs), allowed)

    def submit(self, call: ApiCall, allowed: Collection[str], done: Callable[[ApiResult], None]) -> None:
        """Run ``call`` on a pool thread, then ``done(result)`` on that thread.

        After close() the call is refused and ``done`` runs at once on the caller's thread.
        """
        try:
            self._executor.submit(self._run_and_deliver, call, allowed, done)
        except RuntimeError:  # the executor is shut down
            _deliver(done, _result(call.call_id, _Failure("the API pool is closed", 0, "api")))

    def close(self) -> None:
        """Let running calls finish, drop queued ones, close every connection."""
        self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    # ---- one call ----

    def _run_and_deliver(self, call: ApiCall, allowed: Collection[str], done: Callable[[ApiResult], None]) -> None:
        _deliver(done, self._run(call, allowed))

    def _run(self, call: ApiCall, allowed: Collection[str]) -> ApiResult:
        try:
            account = self._permitted(call, allowed)
            return ApiResult(call_id=call.call_id, ok=True, result=self._attempts(account, call))
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

    def _attempts(self, account: Account, call: ApiCall) -> Any:
        """Send the call, again after a rate-limit pause, up to the account's max_retries."""
        if self._closed:
            raise _Failure("the API pool is closed", 0, "api")
        limiter = self._limiters[account.name]
        attempts = max(1, account.max_retries)
        attempt = 1
        while True:
            if not limiter.acquire(ACQUIRE_TIMEOUT):
                raise _Failure(f"rate limit: no turn on {account.name!r} within {ACQUIRE_TIMEOUT:g} s", RATE_LIMITED, "api")
            try:
                return self._send(account, call.method, call.kwargs)
            except _Failure as failure:
                # A 10006 was refused before the exchange acted on it, so sending again is safe.
                if failure.ret_code != RATE_LIMITED or attempt >= attempts:
                    raise
            attempt += 1

    def _send(self, account: Account, method: str, kwargs: dict[str, Any]) -> Any:
        if account.type == "paper":
            return _paper_body(method, self._papers[account.name].call(method, kwargs))
        try:
            body, _elapsed, headers = getattr(self._client(account), method)(**kwargs)
        except InvalidRequestError as e:
            self._note_limits(account, e.resp_headers, rate_limited=e.status_code == RATE_LIMITED)
            raise _Failure(f"{method}: {e.message} (retCode {e.status_code})", e.status_code, "api") from None
        except FailedRequestError as e:
            # pybit gives the HTTP status for a non-200 reply (it has resp_headers then) and
            # made-up codes (400 "retries exceeded", 409 bad JSON) for its own failures.
            if e.resp_headers is None:
                raise _Failure(f"{method}: {e.message}", 0, "api") from None
            raise _Failure(f"{method}: {e.message} (HTTP {e.status_code})", e.status_code, "api") from None
        except NETWORK_ERRORS as e:
            log.warning("API call %s on %s: network error %s", method, account.name, type(e).__name__)
            raise _Failure(f"{method}: network error: {e}", 0, "network") from None
        except Exception as e:  # bad kwargs, a missing secret, pybit's own checks
            raise _Failure(f"{method}: {type(e).__name__}: {e}", 0, "api") from None
        self._note_limits(account, headers, rate_limited=False)
        return body

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
        client = HTTP(
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
    from quantlab.worker.paper import PaperExchange  # the simulator loads only where a paper account is served

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
