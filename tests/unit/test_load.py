"""The worker's load meter (src/quantlab/worker/load.py): memory reads within a budget, new processes first."""

from __future__ import annotations

from typing import Iterator

import pytest

from quantlab.worker import load, procfs
from quantlab.worker.load import LoadMeter


class Procs:
    """A family of fake processes: their CPU seconds, their PSS, and which PSS were read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.children: list[int] = []
        self.read: list[int] = []
        self.now = 1000.0
        monkeypatch.setattr(procfs, "descendants", lambda pid: list(self.children))
        monkeypatch.setattr(procfs, "cpu_seconds", lambda pid: 1.0)
        monkeypatch.setattr(procfs, "pss_bytes", self.pss)
        monkeypatch.setattr(load.time, "monotonic", lambda: self.now)

    def pss(self, pid: int) -> int:
        self.read.append(pid)
        return 2**20 * pid


@pytest.fixture
def meter(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LoadMeter, Procs]]:
    procs = Procs(monkeypatch)
    monkeypatch.setattr(load.LoadMeter, "_sample", lambda self: None)  # no thread: the test samples
    meter = LoadMeter()
    meter.me = 1
    yield meter, procs
    meter.close()


def test_memory_is_read_within_its_budget_new_processes_first_then_the_oldest(meter: tuple[LoadMeter, Procs]) -> None:
    m, procs = meter
    procs.children = [2, 3, 4]
    m.sample_once(reads=2)
    assert procs.read == [1, 2] and m.usage[3].memory is None
    procs.now += 5
    m.sample_once(reads=2)
    assert procs.read[2:] == [3, 4]  # the new ones before anything read already
    procs.now += load.MEMORY_EVERY
    procs.children = [2, 3, 4, 5]
    m.sample_once(reads=3)
    assert procs.read[4:] == [5, 1, 2]  # then those read longest ago
    assert m.memory_mib == 1 + 2 + 3 + 4 + 5 and m.usage[5].memory == 5


def test_an_unlimited_sample_reads_every_process_due(meter: tuple[LoadMeter, Procs]) -> None:
    m, procs = meter
    procs.children = list(range(2, 40))
    m.sample_once()
    assert sorted(procs.read) == list(range(1, 40))
    m.sample_once()
    assert len(procs.read) == 39  # none is due again before MEMORY_EVERY
