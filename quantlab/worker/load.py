"""The worker's own load: CPU and memory of the worker, its zygote and its children (/proc).

CPU is cheap to read and is taken at every heartbeat. Memory is the
proportional set size (PSS): children forked from the zygote share most of
their pages, so adding up RSS would count those pages once per child (at 100
strategies, 3.3 GiB of RSS against 0.5 GiB of PSS). PSS costs about 1 ms per
process to read, so a background thread samples it every MEMORY_EVERY
seconds instead of stalling the worker's loop.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Callable

from quantlab.pool.records import Load
from quantlab.worker import procfs

#: Seconds between memory samples.
MEMORY_EVERY = 30.0
#: Seconds between CPU samples: finding the children scans every process on the host (/proc),
#: which at 200 strategies cost the loop a tenth of its time when done every heartbeat.
CPU_EVERY = 5.0


class LoadMeter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.me = os.getpid()
        self.known: dict[int, tuple[float, float]] = {}  #: pid -> (CPU seconds, monotonic time) at the last sample
        self.memory_mib = 0.0
        self.clock = clock
        self.cpu = 0.0  #: % of one core over the last CPU_EVERY seconds
        self.cpu_at = -math.inf
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_memory, name="load-memory", daemon=True)
        self._sampler.start()

    def measure(self, running_strategies: int) -> Load:
        now = self.clock()
        if now >= self.cpu_at + CPU_EVERY:
            self.cpu, self.cpu_at = self._cpu(), now
        return Load(cpu=round(self.cpu, 1), memory=round(self.memory_mib, 1), running_strategies=running_strategies)

    def _cpu(self) -> float:
        """% of one core the family used since the last sample; a process seen for the first time adds 0."""
        samples: dict[int, tuple[float, float]] = {}
        cpu = 0.0
        for pid in self._family():
            try:
                sample = (procfs.cpu_seconds(pid), time.monotonic())
            except OSError:
                continue  # exited meanwhile
            samples[pid] = sample
            last = self.known.get(pid)
            if last is not None and sample[1] > last[1]:
                cpu += 100.0 * (sample[0] - last[0]) / (sample[1] - last[1])
        self.known = samples
        return cpu

    def close(self) -> None:
        self._stop.set()
        self._sampler.join(timeout=5)

    def _family(self) -> list[int]:
        return [self.me, *procfs.descendants(self.me)]

    def _sample_memory(self) -> None:
        while True:
            total = 0
            for pid in self._family():
                try:
                    total += procfs.pss_bytes(pid)
                except OSError:
                    continue  # exited meanwhile
            self.memory_mib = total / 2**20
            if self._stop.wait(MEMORY_EVERY):
                return
