"""A store outage as the worker reports it: one line at each end, and events kept in order within a bound."""

from __future__ import annotations

import logging

import pytest

from quantlab.errors import StoreUnavailable
from quantlab.store.records import Event, EventKind
from quantlab.worker.eventbacklog import EventBacklog
from quantlab.worker.outage import StoreOutage


class Events:
    """Just the event log of a store, which can be made to fail."""

    def __init__(self) -> None:
        self.written: list[Event] = []
        self.down = False

    def append_event(self, event: Event) -> None:
        if self.down:
            raise StoreUnavailable("the store at postgresql://db/q is unreachable")
        self.written.append(event)


def event(n: int) -> Event:
    return Event(ts=float(n), kind=EventKind.LEASE_LOST, detail=str(n))


def test_an_outage_is_one_line_when_it_starts_and_one_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    outage = StoreOutage(logging.getLogger("outage"), clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "outage"):
        outage.failed(StoreUnavailable("cannot reach the store: connection refused"), began=99.0)
        for _ in range(50):
            outage.failed(StoreUnavailable("the store is unreachable; retrying shortly"))
        now[0] = 130.0
        assert outage.describe() == "the store was unreachable for 31.0s: cannot reach the store: connection refused"
        outage.ended("3 kept event(s) written")
        outage.ended("nothing: no outage")
    assert [r.getMessage() for r in caplog.records] == [
        "store unreachable: cannot reach the store: connection refused; keeping this worker's events until it is "
        "back; its strategies stop if the lease runs out first",
        "store reachable again after 31.0s (51 failed call(s)); 3 kept event(s) written",
    ]
    assert outage.describe().startswith("the store was unreachable for 31.0s")  # the lease lost to it says so
    outage.renewed()
    assert outage.describe() == ""


def test_kept_events_are_written_in_order_and_the_oldest_beyond_the_bound_dropped_with_a_count() -> None:
    store = Events()
    backlog = EventBacklog(bound=3)
    for n in range(5):
        backlog.keep(event(n))
    store.down = True
    assert backlog.flush(store) == "0 kept event(s) written, 2 older one(s) dropped (at most 3 are kept), 3 still waiting"
    store.down = False
    assert backlog.flush(store) == "3 kept event(s) written"
    assert [e.detail for e in store.written] == ["2", "3", "4"] and [e.ts for e in store.written] == [2.0, 3.0, 4.0]
    assert not backlog
