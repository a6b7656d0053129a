"""Bybit accounts' pybit clients: one per account per thread, each request signed under its call's fence.

requests does not promise that a session is thread safe, so every pool thread
gets its own pybit ``HTTP`` client per account, kept in a thread local; each
client's session is remembered so that close() can close them all.

pybit signs every attempt, its own retries too, through ``_prepare_headers``.
Each client gets that method wrapped, so that as each attempt is signed the
halt gate runs, a fenced call's lease is checked and its ``recv_window`` cut
(quantlab/exchange/signing.py), the request is signed with the exchange's time
(ours plus the measured offset; an order with the ``Stamp`` its intent
recorded), and the end of the request's window is noted for the order path,
which looks for a lost order only once no copy of it can be taken. The offset
to the exchange is measured here with the unsigned /v5/market/time before a
fenced call whenever the last measurement is old or a 10002 said it is wrong.

pybit is left to retry what it retries well (10002, a stale timestamp). A 10006
is taken out of its retry codes: the pool pauses the whole account for it
(quantlab/exchange/ratelimit.py), not just the thread that hit it. Every pybit
and requests error becomes a ``Failure`` (quantlab/exchange/job.py) that says
whether the exchange may have acted on the request.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from quantlab.exchange.accounts import Account
from quantlab.exchange.job import Failure
from quantlab.exchange.ratelimit import RATE_LIMITED, AccountLimits
from quantlab.exchange.signing import WINDOW_SLACK, ClockOffset, Fence, Fenced, Stamp, recv_window_ms

# pybit and requests cost a worker about 12 MB: imported only by a pool that serves a bybit
# account, so a worker that serves paper accounts only never holds them.
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


log = logging.getLogger(__name__)

RETRY_DELAY = 0.2  #: seconds pybit waits before retrying a retried retCode (its default is 3)
STALE_TIMESTAMP = 10002  # Bybit's retCode for a timestamp outside the recv_window
DUPLICATE_LINK_ID = 110072  # Bybit: "OrderLinkedID is duplicate": an earlier copy may have been taken


def network_errors() -> tuple[type[Exception], ...]:
    return (
        requests.exceptions.Timeout,
        requests.exceptions.ConnectionError,  # also refused, reset, proxy and TLS failures
        requests.exceptions.ChunkedEncodingError,
        requests.exceptions.ContentDecodingError,
    )


class BybitClients:
    """The pybit clients of the bybit accounts a pool serves, and each account's clock offset."""

    def __init__(
        self, accounts: list[Account], limits: AccountLimits, *, proxy: str | None, clock: Callable[[], float]
    ) -> None:
        if any(account.type == "bybit" for account in accounts):
            _import_pybit()
        self._limits = limits
        self._proxy = proxy  #: the worker's, for accounts that name none
        self._clock = clock
        self._offsets = {a.name: ClockOffset() for a in accounts}
        self._local = threading.local()  # .clients: account name -> this thread's HTTP; .fence, .gate: the call's
        self._sessions: list[requests.Session] = []  # every client's session, to close them all
        self._sessions_lock = threading.Lock()

    def send(
        self, account: Account, method: str, kwargs: dict[str, Any], fence: Fence | None, gate: Callable[[], None] | None,
        stamp: Stamp | None = None,
    ) -> Any:
        """One request with this thread's client: the exchange's body, or a Failure.

        ``stamp``: an order's, as its intent recorded it: every attempt is signed with it.
        """
        self._local.window_end = None
        self._local.signed = 0  # attempts pybit signed for this send (its own retries sign again)
        try:
            client = self._client(account)
            offset = self._offsets[account.name]
            if (fence is not None and offset.stale(self._clock())) or offset.suspect:
                self._measure_offset(account, client)
            self._local.fence, self._local.gate, self._local.stamp = fence, gate, stamp  # read by the signer
            try:
                body, _elapsed, headers = getattr(client, method)(**kwargs)
            finally:
                self._local.fence = self._local.gate = self._local.stamp = None
        except Fenced as e:
            raise Failure(f"{method}: {e}", 0, "permission") from None
        except Failure:
            raise
        except pybit_errors.InvalidRequestError as e:
            self._limits.note(account.name, e.resp_headers, rate_limited=e.status_code == RATE_LIMITED)
            if e.status_code == STALE_TIMESTAMP:
                self._offsets[account.name].invalidate()  # our idea of the exchange's clock may be wrong
            # A duplicate orderLinkId is the exchange refusing an id it already has: the strategy's
            # mistake, answered as such, unless pybit sent this very request more than once, when the
            # id may be an earlier copy's: then the order is looked for, and taken only if it matches.
            own_copy = e.status_code == DUPLICATE_LINK_ID and getattr(self._local, "signed", 0) > 1
            raise Failure(f"{method}: {e.message} (retCode {e.status_code})", e.status_code, "api",
                          sure=not own_copy) from None
        except pybit_errors.FailedRequestError as e:
            # pybit gives the HTTP status for a non-200 reply (it has resp_headers then) and
            # made-up codes (400 "retries exceeded", 409 bad JSON) for its own failures.
            if e.resp_headers is None:
                raise Failure(f"{method}: {e.message}", 0, "api", sure=False) from None
            raise Failure(f"{method}: {e.message} (HTTP {e.status_code})", e.status_code, "api", sure=False) from None
        except network_errors() as e:
            log.warning("API call %s on %s: network error %s", method, account.name, type(e).__name__)
            raise Failure(f"{method}: network error: {e}", 0, "network", sure=False) from None
        except Exception as e:  # bad kwargs, a missing secret, pybit's own checks
            raise Failure(f"{method}: {type(e).__name__}: {e}", 0, "api", sure=False) from None
        self._limits.note(account.name, headers, rate_limited=False)
        return body

    def window_end(self) -> float | None:
        """The last moment (Unix time, our clock) the exchange could still take the request this thread
        sent last; None when that send signed nothing."""
        end: float | None = getattr(self._local, "window_end", None)
        return end

    def stamp(self, account: Account, fence: Fence | None) -> Stamp:
        """The timestamp (the exchange's time now) and recv_window to sign an order with; a Failure
        when the clock offset cannot be measured or the lease is too short to send."""
        try:
            client = self._client(account)
            offset = self._offsets[account.name]
            if offset.stale(self._clock()):
                self._measure_offset(account, client)
            window = client.recv_window
            if fence is not None:
                window = recv_window_ms(fence, self._clock(), offset.slack(), window)
            return Stamp(offset.exchange_ms(time.time()), window)
        except Fenced as e:
            raise Failure(str(e), 0, "permission") from None
        except Failure:
            raise
        except Exception as e:  # a missing secret, a bad endpoint: nothing was sent
            raise Failure(f"{type(e).__name__}: {e}", 0, "api") from None

    def exchange_passed_ms(self, account: Account) -> int:
        """A time (ms) the exchange's clock has surely passed now, by a fresh enough measurement."""
        try:
            client = self._client(account)
            offset = self._offsets[account.name]
            if offset.stale(self._clock()):
                self._measure_offset(account, client)
            return offset.exchange_passed_ms(time.time())
        except Failure:
            raise
        except Exception as e:
            raise Failure(f"cannot read the exchange's time: {type(e).__name__}: {e}", 0, "api") from None

    def slack(self, account: str) -> float:
        """Seconds our idea of ``account``'s exchange clock may be wrong (the offset's uncertainty)."""
        return self._offsets[account].slack()

    def close(self) -> None:
        """Close every client's connections."""
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def _measure_offset(self, account: Account, client: HTTP) -> None:
        """The exchange's clock against ours, from /v5/market/time (public, unsigned)."""
        try:
            before = time.time()
            body, _elapsed, _headers = client.get_server_time()
            after = time.time()
            server = int(body["result"]["timeNano"]) / 1e9
        except network_errors() as e:
            raise Failure(f"cannot read the exchange's time to sign the call: {e}", 0, "network") from None
        except Exception as e:  # a fenced call does not leave on a guess
            raise Failure(f"cannot read the exchange's time to sign the call: {type(e).__name__}: {e}", 0, "api") from None
        offset, error = server - (before + after) / 2, (after - before) / 2
        self._offsets[account.name].update(offset, error, self._clock())
        if abs(offset) > 1.0:
            log.warning("clock offset to the exchange for %s: %.3f s (requests are signed with the exchange's time)",
                        account.name, offset)

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
            stamp: Stamp | None = getattr(self._local, "stamp", None)
            if gate is not None:
                gate()  # raises Failure through pybit, which catches only network and JSON errors
            if fence is not None:
                recv_window = recv_window_ms(fence, self._clock(), offset.slack(), recv_window)
            if stamp is not None:  # never a longer window than the intent recorded (pybit widens it on a 10002)
                recv_window = min(recv_window, stamp.recv_window)
            signed = stamp.signed if stamp is not None else offset.exchange_ms(time.time())
            # The last moment (our clock) the exchange could still take this request: a lost
            # order is looked for only after it.
            self._local.window_end = time.time() + recv_window / 1000 + offset.slack() + WINDOW_SLACK
            self._local.signed = getattr(self._local, "signed", 0) + 1
            return _signed_at(client, original(payload, recv_window, *args, **kwargs), payload, recv_window, signed)

        client._prepare_headers = prepare_headers

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


def _signed_at(client: HTTP, headers: dict[str, str], payload: Any, recv_window: int, signed: int) -> dict[str, str]:
    """pybit's headers, signed with ``signed`` (the exchange's time, ms) in place of pybit's own clock."""
    auth = client._auth_binary if isinstance(payload, bytes) else client._auth
    signature = auth(payload=payload, recv_window=recv_window, timestamp=signed)
    return {**headers, "X-BAPI-TIMESTAMP": str(signed), "X-BAPI-SIGN": signature}
