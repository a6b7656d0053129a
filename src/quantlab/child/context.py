"""What a strategy sees: ``ctx`` and ``ctx.api``.

``ctx.api.bybit["acct"].get_positions(category="linear", symbol="BTCUSDT")``
does not talk to Bybit: it sends an ApiCall to the worker, which runs it with
its own pybit client and answers with the response dict or an error. So the
strategy process never holds a key or a secret. Only the accounts named by the
strategy's Work and only public pybit request methods are reachable; anything
else raises ApiPermissionError here, naming the nearest method names, before a
message is sent.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any, Callable, Generator, Iterator, Mapping

from quantlab.errors import ApiPermissionError
from quantlab.child.jsoncheck import to_json

ApiCaller = Callable[[str, str, dict[str, Any]], Any]


class ApiResponse(dict[str, Any]):
    """pybit's response dict; also awaitable, so async hooks may ``await`` a call.

    The call itself completes before it returns (the strategy waits for the
    worker's answer); awaiting it just yields the same dict.
    """

    def __await__(self) -> Generator[Any, None, "ApiResponse"]:
        yield from ()
        return self


class AccountApi:
    """One exchange account as the strategy sees it: pybit's method names."""

    def __init__(self, name: str, caller: ApiCaller, methods: frozenset[str]) -> None:
        self._name = name
        self._caller = caller
        self._methods = methods

    def __getattr__(self, method: str) -> Callable[..., ApiResponse]:
        if method.startswith("_"):
            raise AttributeError(method)
        if method not in self._methods:
            near = difflib.get_close_matches(method, self._methods)  # the same hint as the JavaScript runner's
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ApiPermissionError(f"{method!r} is not a public pybit HTTP method{hint}", 0)

        def call(**kwargs: Any) -> ApiResponse:
            return ApiResponse(self._caller(self._name, method, kwargs))

        call.__name__ = method
        return call

    def __repr__(self) -> str:
        return f"<account {self._name}>"


class Accounts(Mapping[str, AccountApi]):
    """``ctx.api.bybit``: the accounts this strategy's Work names, by name."""

    def __init__(self, names: list[str], caller: ApiCaller, methods: frozenset[str]) -> None:
        self._accounts = {name: AccountApi(name, caller, methods) for name in names}

    def __getitem__(self, name: str) -> AccountApi:
        try:
            return self._accounts[name]
        except KeyError:
            allowed = ", ".join(self._accounts) or "none"
            raise ApiPermissionError(
                f"account {name!r} is not named by this strategy's Work (allowed: {allowed}); assign it with --account",
                0,
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._accounts)

    def __len__(self) -> int:
        return len(self._accounts)


class Api:
    def __init__(self, accounts: list[str], caller: ApiCaller, methods: frozenset[str]) -> None:
        self.bybit = Accounts(accounts, caller, methods)


class StrategyContext:
    """``ctx``: passed to every hook of one strategy incarnation."""

    def __init__(
        self,
        *,
        id: str,
        params: dict[str, Any],
        state: dict[str, Any],
        log: Callable[[], logging.Logger],
        api: Api,
        send: Callable[[Any], None],
        open_orders: list[dict[str, Any]] | None = None,
        positions: list[dict[str, Any]] | None = None,
        pid: int = 0,
        worker_pid: int = 0,
    ) -> None:
        self.id = id
        #: This process's pid and its worker's as the machine numbers them (``qlab status``, ``ps``):
        #: inside its PID namespace ``os.getpid()`` says 1, and neither pid names a process there.
        self.pid = pid
        self.worker_pid = worker_pid
        self.params = params
        self.state = state  #: persisted after every heartbeat, restored on restart
        self._log = log
        self.api = api
        self._send = send
        self.stop_reason: str | None = None
        #: A halt (`qlab halt`) covers this strategy: calls that open exposure are refused, reduce-only
        #: orders and cancels pass. Updated with every tick.
        self.halted = False
        #: Found by the worker before this start (reconciliation): the strategy's open orders (by
        #: their orderLinkId: made by quantlab for it, or ones its order intents remember) and the
        #: open positions of its accounts, each a Bybit row with the "account" it is on.
        self.open_orders: list[dict[str, Any]] = open_orders or []
        self.positions: list[dict[str, Any]] = positions or []

    @property
    def log(self) -> logging.Logger:
        """The strategy's own logger (its file is `qlab strategy logs ID`); made on first use."""
        return self._log()

    def send(self, data: Any) -> None:
        """Report something to the worker; it is recorded as an event.

        ``data`` must be JSON (NotJson, naming the key path, otherwise): it is
        checked here so the strategy's mistake raises in the strategy.
        """
        to_json(data, "data")
        self._send(data)

    def stop(self, reason: str = "") -> None:
        """Ask to stop after the current hook: st_exit runs with reason type 'manual'."""
        self.stop_reason = reason or "stopped by the strategy"
