"""`qlab top`'s screen, drawn from a memory store: the busiest strategies first, as many as fit."""

from __future__ import annotations

import io
import time

from rich.console import Console

from quantlab.store.memstore import MemoryStore
from quantlab.store.records import Event, EventKind, StrategyResult, StrategySpec, Work
from quantlab.top import EVENTS, Top, by_cpu


def _draw(top: Top, height: int) -> str:
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(top.screen(height))
    return console.export_text()


def test_strategies_by_cpu_with_unmeasured_ones_last() -> None:
    entries = [{"id": "b", "cpu": None}, {"id": "c", "cpu": 5.0}, {"id": "a", "cpu": 50.0}, {"id": "d", "cpu": 5.0}]
    assert [e["id"] for e in by_cpu(entries)] == ["a", "c", "d", "b"]


def test_the_screen_keeps_the_busiest_that_fit_and_the_latest_events() -> None:
    store = MemoryStore()
    now = time.time()
    for n in range(40):
        store.add_work(Work(id=f"s{n:02d}", spec=StrategySpec(file="/x.py"), created=now,
                            result=StrategyResult(status="running", cpu=float(n), since=now)))
    for n in range(EVENTS + 3):
        store.append_event(Event(ts=now, kind=EventKind.STARTED, strategy=f"s{n:02d}", detail=f"event {n}"))
    top = Top(store)
    store.append_event(Event(ts=now, kind=EventKind.CRASHED, strategy="s39", detail="the newest"))
    text = _draw(top, height=40)
    assert " s39 " in text and " s00 " not in text and "more (qlab status lists all)" in text
    assert text.index(" s39 ") < text.index(" s38 ")
    assert "the newest" in text and "event 0" not in text  # only the latest EVENTS
