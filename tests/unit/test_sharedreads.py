"""Reconciliation's shared list reads (src/quantlab/exchange/sharedreads.py): one read for the starts that
began before it was sent, never an older one, forgotten on a cancel."""

from __future__ import annotations

import threading
from typing import Any, Callable

import pytest

from quantlab.errors import ApiError
from quantlab.exchange import sharedreads
from quantlab.exchange.sharedreads import SharedReads
from tests.conftest import wait_for


class Exchange:
    """Counts reads; a read can be held open until the test lets it go."""

    def __init__(self) -> None:
        self.reads = 0
        self.hold = threading.Event()
        self.hold.set()
        self.fail = False

    def read(self, account: str, method: str, kwargs: dict[str, Any],
             on_turn: Callable[[], None] | None = None) -> dict[str, Any]:
        self.reads += 1
        n = self.reads
        if on_turn is not None:
            on_turn()  # sent now: its answer comes once the test lets it
        self.hold.wait(10)
        if self.fail:
            raise ApiError("exchange away")
        return {"result": {"list": [n]}}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts() -> tuple[Exchange, Clock, SharedReads]:
    exchange, clock = Exchange(), Clock()
    return exchange, clock, SharedReads(exchange.read, clock)


SCOPE = {"category": "linear", "settleCoin": "USDT"}


def test_starts_that_began_before_a_read_share_it_while_it_runs_and_a_moment_after(parts: tuple[Exchange, Clock, SharedReads]) -> None:
    exchange, clock, shared = parts
    exchange.hold.clear()
    answers: list[dict[str, Any]] = []
    first = threading.Thread(target=lambda: answers.append(shared.read("a", "get_open_orders", SCOPE, since=99.0)))
    first.start()
    wait_for(lambda: exchange.reads == 1, what="the first read under way")
    second = threading.Thread(target=lambda: answers.append(shared.read("a", "get_open_orders", dict(SCOPE), since=99.5)))
    second.start()
    exchange.hold.set()
    first.join(5)
    second.join(5)
    assert exchange.reads == 1 and answers == [{"result": {"list": [1]}}] * 2
    clock.now += sharedreads.SHARE_FOR / 2
    assert shared.read("a", "get_open_orders", SCOPE, since=99.0) == {"result": {"list": [1]}}
    clock.now += sharedreads.SHARE_FOR
    assert shared.read("a", "get_open_orders", SCOPE, since=99.0) == {"result": {"list": [2]}}


def test_a_start_never_takes_a_read_sent_before_it(parts: tuple[Exchange, Clock, SharedReads]) -> None:
    exchange, clock, shared = parts
    shared.read("a", "get_positions", SCOPE, since=99.0)
    assert shared.read("a", "get_positions", SCOPE, since=100.5) == {"result": {"list": [2]}}  # sealed after it
    assert shared.read("b", "get_positions", SCOPE, since=99.0) == {"result": {"list": [3]}}  # another account
    assert exchange.reads == 3


def test_a_cancel_forgets_the_accounts_lists_and_a_failed_read_is_not_shared(parts: tuple[Exchange, Clock, SharedReads]) -> None:
    exchange, _clock, shared = parts
    shared.read("a", "get_open_orders", SCOPE, since=99.0)
    shared.forget("a")
    assert shared.read("a", "get_open_orders", SCOPE, since=99.0) == {"result": {"list": [2]}}
    shared.forget("a")
    exchange.fail = True
    with pytest.raises(ApiError):
        shared.read("a", "get_open_orders", SCOPE, since=99.0)
    exchange.fail = False
    assert shared.read("a", "get_open_orders", SCOPE, since=99.0) == {"result": {"list": [4]}}
