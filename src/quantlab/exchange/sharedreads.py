"""Reconciliation's list reads, shared by the starts on one account: one read for many strategies.

A worker that starts many strategies on one account at once (its own start, a
mass `qlab apply`) reconciles each before its fork, and each lists the
account's open orders and positions. On an account allowed 2 calls a second,
twenty starts would wait ten seconds and more for their turns. So a list read
is shared by every reconciliation that asks for the same list while the read
waits for its turn or runs, or within SHARE_FOR seconds after, but only by
those that began (``since``: when the strategy was sealed and its intents
were settled) before the request was sent: no reconciliation is handed a
list older than the state it depends on. A live order placed after the list
was sent is one the strategy's intents know, and the list missing it makes
the start look again (reconcile.py's ``unlisted``). A cancel on the account
forgets its lists.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Protocol

from quantlab.exchange.orders import Read

#: Seconds after a list read ended that a reconciliation begun before it was sent may still take its answer.
SHARE_FOR = 1.0

Key = tuple[str, str, str]  #: account, method, the arguments


class TimedRead(Protocol):
    def __call__(self, account: str, method: str, kwargs: dict[str, Any],
                 on_turn: Callable[[], None] | None = None) -> dict[str, Any]: ...


class _Read:
    def __init__(self) -> None:
        self.sent = float("inf")  #: when the request went out (monotonic): inf until its turn came
        self.ended: float | None = None
        self.body: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


class SharedReads:
    def __init__(self, read: TimedRead, clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._clock = clock
        self._lock = threading.Lock()
        self._reads: dict[Key, _Read] = {}

    def reader(self, account: str, since: float) -> Read:
        """A ``Read`` on ``account`` that shares list reads sent at ``since`` or later."""
        return lambda method, kwargs: self.read(account, method, kwargs, since)

    def read(self, account: str, method: str, kwargs: dict[str, Any], since: float) -> dict[str, Any]:
        key = (account, method, repr(sorted(kwargs.items())))
        while True:
            with self._lock:
                shared = self._reads.get(key)
                if shared is None or not self._may_wait(shared, since):
                    shared = self._reads[key] = _Read()
                    break
            shared.done.wait()
            if shared.error is None and shared.sent >= since:
                assert shared.body is not None
                return shared.body
            # Sent before this start began, or failed: read it anew (or share a newer read).
        self._run(key, shared, account, method, kwargs)
        if shared.error is not None:
            raise shared.error
        assert shared.body is not None
        return shared.body

    def forget(self, account: str) -> None:
        """The account changed (a cancel): its lists are read again."""
        with self._lock:
            for key in [k for k in self._reads if k[0] == account]:
                del self._reads[key]

    def _may_wait(self, shared: _Read, since: float) -> bool:
        """Worth waiting for: not sent yet, or sent after ``since``, and not stale or failed."""
        if shared.error is not None or shared.sent < since:
            return False
        return shared.ended is None or self._clock() <= shared.ended + SHARE_FOR

    def _run(self, key: Key, shared: _Read, account: str, method: str, kwargs: dict[str, Any]) -> None:
        def sent() -> None:
            with self._lock:
                shared.sent = self._clock()

        try:
            shared.body = self._read(account, method, kwargs, sent)
        except BaseException as e:
            shared.error = e
            with self._lock:
                if self._reads.get(key) is shared:
                    del self._reads[key]
        finally:
            shared.ended = self._clock()
            shared.done.set()
