"""The worker's sync thread (src/quantlab/worker/syncer.py): syncs shared by the writes of a window, at once for a waiting tick."""

from __future__ import annotations

import logging
import threading

import pytest

from quantlab.worker import syncer as syncer_module
from quantlab.worker.syncer import Syncer


class Disk:
    """Counts syncs; each makes durable what was written before it began."""

    def __init__(self) -> None:
        self.written = 0
        self.durable = 0
        self.syncs = 0
        self.lock = threading.Lock()

    def write(self) -> None:
        with self.lock:
            self.written += 1

    def sync(self) -> None:
        with self.lock:
            upto = self.written
        self.syncs += 1
        self.durable = max(self.durable, upto)


def test_writes_asked_for_within_a_window_share_one_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syncer_module, "WINDOW", 60.0)  # nobody waits: the second sync waits out the window
    disk = Disk()
    syncer = Syncer(disk.sync, logging.getLogger("test"))
    try:
        for _ in range(100):
            disk.write()
            last = syncer.ask()
        assert syncer.wait(last, timeout=10)  # a waiting tick cuts the window short
        assert disk.durable == 100 and disk.syncs <= 2
    finally:
        syncer.close()


def test_a_waiting_tick_gets_its_sync_at_once_and_every_write_before_it_is_durable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syncer_module, "WINDOW", 60.0)
    disk = Disk()
    syncer = Syncer(disk.sync, logging.getLogger("test"))
    try:
        for n in range(1, 6):
            disk.write()
            assert syncer.wait(syncer.ask(), timeout=10) and disk.durable >= n
    finally:
        syncer.close()


def test_a_failing_sync_is_retried_and_reported_until_it_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syncer_module, "RETRY", 0.01)
    failures = [OSError(5, "Input/output error")] * 3

    def sync() -> None:
        if failures:
            raise failures.pop()

    syncer = Syncer(sync, logging.getLogger("test"))
    try:
        generation = syncer.ask()
        assert not syncer.wait(generation, timeout=0.001) or not failures
        assert syncer.wait(generation, timeout=10) and syncer.error is None and not failures
    finally:
        syncer.close()


@pytest.mark.parametrize(("interval", "window"), [(None, 0.01), (0.02, 0.01), (0.2, 0.05), (1.0, 0.1), (60.0, 0.1)])
def test_syncs_are_paced_by_the_fastest_strategys_interval(interval: float | None, window: float) -> None:
    """A quarter of the shortest interval: its tick almost never waits, a slow fleet syncs seldom."""
    syncer = Syncer(Disk().sync, logging.getLogger("test"))
    syncer.pace(interval)
    assert syncer.window == pytest.approx(window)
