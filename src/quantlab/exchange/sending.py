"""Sending one call on one account: in its turn under the account's rate limit, to pybit or the paper exchange.

Every request, a strategy's or the pool's own (risk checks, lost-order
queries), goes out through ``Sender``. It waits for the account's rate limiter
(one per account, shared by every strategy on this worker), checks again just
before sending that the pool is open and that a fenced call's lease still
holds, and sends again after a 10006, which the exchange refused before acting
on it, up to the account's ``max_retries`` and before the call's deadline.
Bybit accounts go to their pybit clients (quantlab/exchange/bybit.py); paper
accounts to one ``PaperExchange`` per account (thread safe). The simulator
is where a paper order takes effect, so the fence and the halt gate are
checked there, inside the compare-and-swap that records a write
(quantlab/exchange/paper.py ``Guard``), with the caller's strategy and epoch.

An error text may quote a URL or a request, so every failure that leaves the
pool is scrubbed here of the account's secret and any proxy password.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

from quantlab.exchange import orders
from quantlab.exchange.accounts import Account
from quantlab.exchange.bybit import BybitClients
from quantlab.exchange.job import WORKER, Caller, Failure
from quantlab.exchange.ratelimit import RATE_LIMITED, AccountLimits
from quantlab.exchange.signing import Fence, Fenced, Stamp, time_left
from quantlab.protocol import ApiCall
from quantlab.store.store import Store

if TYPE_CHECKING:
    from quantlab.exchange.paper import PaperExchange

MIN_SCRUB = 6  # shorter "secrets" (tests, typos) occur in plain words: blanking them mangles messages

#: What runs once just before an order's first send: it may refuse the order (risk limits), and
#: gives the arguments, the fence and the stamp to send with (the order's intent is written there).
Prepare = Callable[[Fence | None], tuple[dict[str, Any], Fence | None, Stamp | None]]


class Sender:
    """Sends calls on the accounts a pool serves, each in its turn under its account's rate limit."""

    def __init__(
        self, accounts: list[Account], store: Store, clients: BybitClients, limits: AccountLimits,
        closing: threading.Event, *, proxy: str | None, clock: Callable[[], float], call_deadline: float,
    ) -> None:
        self._accounts = {account.name: account for account in accounts}
        self._papers = {a.name: _paper_exchange(a, store) for a in accounts if a.type == "paper"}  # thread safe
        self._clients = clients
        self._limits = limits
        self._closing = closing  #: set by the pool's close(): nothing is sent after it
        self._proxy = proxy
        self._clock = clock
        self._call_deadline = call_deadline  #: seconds a call may wait for its turn

    def attempts(
        self, account: Account, call: ApiCall, fence: Fence | None, deadline: float, gate: Callable[[], None] | None,
        prepare: Prepare | None = None, caller: Caller = WORKER,
    ) -> Any:
        """Send the call, again after a rate-limit pause, up to the account's max_retries, before its deadline.

        ``prepare`` runs once, just before the first send: it may refuse the call (risk limits),
        and gives the arguments, the fence and the stamp to send with (an order's intent is
        written there).
        """
        attempts = max(1, account.max_retries)
        attempt = 1
        kwargs = call.kwargs
        stamp: Stamp | None = None
        while True:
            self.check_open(fence)
            wait = deadline - self._clock()
            if wait <= 0 or not self._limits.acquire(account.name, wait):
                raise Failure(f"rate limit: no turn on {account.name!r} within its {self._call_deadline:g} s deadline",
                              RATE_LIMITED, "api")
            self.check_open(fence)
            if gate is not None:
                gate()  # early, so a halted call does not spend a turn; again as it is signed
            if prepare is not None:
                (kwargs, fence, stamp), prepare = prepare(fence), None
            try:
                return self._send(account, call.method, kwargs, fence, gate, caller, stamp)
            except Failure as failure:
                # A 10006 was refused before the exchange acted on it, so sending again is safe.
                if failure.ret_code != RATE_LIMITED or attempt >= attempts:
                    raise
            attempt += 1

    def read(self, account: Account, method: str, kwargs: dict[str, Any],
             on_turn: Callable[[], None] | None = None) -> dict[str, Any]:
        """A read on the account for the pool's own needs, in its turn under the account's rate limit
        (``on_turn``: told when the turn came, just before the request is sent)."""
        if not self._limits.acquire(account.name, self._call_deadline):
            raise Failure(f"rate limit: no turn on {account.name!r} for {method}", RATE_LIMITED, "api")
        if on_turn is not None:
            on_turn()
        body: dict[str, Any] = self._send(account, method, kwargs, None, None, WORKER)
        return body

    def reader(self, account: Account) -> orders.Read:
        return functools.partial(self.read, account)

    def check_open(self, fence: Fence | None) -> None:
        """Refuse a call once the pool is closed, or when its fence no longer holds."""
        if self._closing.is_set():
            raise Failure("the API pool is closed", 0, "api")
        if fence is not None:
            try:
                time_left(fence, self._clock())
            except Fenced as e:
                raise Failure(str(e), 0, "permission") from None

    def scrubbed(self, failure: Failure, account_name: str) -> Failure:
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
        return Failure(error, failure.ret_code, failure.kind)

    def seal(self, account: str, strategy: str, epoch: int) -> None:
        """Make a paper account take no more writes of ``strategy`` below ``epoch`` (an exchange
        checks no such token: there, the request's recv_window bounds a late copy instead)."""
        paper = self._papers.get(account)
        if paper is not None:
            paper.seal(strategy, epoch)

    def _send(
        self, account: Account, method: str, kwargs: dict[str, Any], fence: Fence | None,
        gate: Callable[[], None] | None, caller: Caller, stamp: Stamp | None = None,
    ) -> Any:
        if account.type == "paper":
            def check() -> None:
                self.check_open(fence)
                if gate is not None:
                    gate()

            guard = _paper_guard(caller.strategy, caller.epoch, check)
            return _paper_body(method, self._papers[account.name].call(method, kwargs, guard))
        return self._clients.send(account, method, kwargs, fence, gate, stamp)


def _paper_exchange(account: Account, store: Store) -> PaperExchange:
    from quantlab.exchange.paper import PaperExchange  # the simulator loads only where a paper account is served

    return PaperExchange(account, store)


def _paper_guard(strategy: str, epoch: int, check: Callable[[], None]) -> Any:
    from quantlab.exchange.paper import Guard

    return Guard(strategy, epoch, check)


def _paper_body(method: str, envelope: dict[str, Any]) -> dict[str, Any]:
    """The simulator answers with an envelope, errors included, like the exchange does."""
    code = envelope.get("retCode", 0)
    if code:
        raise Failure(f"{method}: {envelope.get('retMsg', '')} (retCode {code})", code, "api")
    return envelope


def _secret_or_empty(account: Account) -> str:
    try:
        return account.secret()
    except Exception:  # a secret that cannot be read cannot leak either
        return ""
