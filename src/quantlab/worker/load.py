"""The worker's own load: CPU and memory of the worker, its zygote and its children (/proc).

Memory is the proportional set size (PSS): children forked from the zygote
share most of their pages, so adding up RSS would count those pages once per
child (at 100 strategies, 3.3 GiB of RSS against 0.5 GiB of PSS). PSS costs
about 1 ms per process to read, and finding the children for either figure
scans every process on the host (/proc): a thread of the meter's own samples
CPU every CPU_EVERY and memory every MEMORY_EVERY seconds, and a heartbeat
reads the last figures, so the worker's loop never stalls for them.
"""

from __future__ import annotations

import math
import os
import threading
import time

from quantlab.store.records import Load
from quantlab.worker import procfs

#: Seconds between memory samples.
MEMORY_EVERY = 30.0
#: Seconds between CPU samples: finding the children scans every process on the host (/proc).
CPU_EVERY = 5.0


class LoadMeter:
    def __init__(self) -> None:
        self.me = os.getpid()
        self.known: dict[int, tuple[float, float]] = {}  #: pid -> (CPU seconds, monotonic time) at the last sample
        self.memory_mib = 0.0
        self.cpu = 0.0  #: % of one core over the last CPU_EVERY seconds
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="load-meter", daemon=True)
        self._sampler.start()

    def measure(self, running_strategies: int) -> Load:
        return Load(cpu=round(self.cpu, 1), memory=round(self.memory_mib, 1), running_strategies=running_strategies)

    def close(self) -> None:
        self._stop.set()
        self._sampler.join(timeout=5)

    def _sample(self) -> None:
        memory_at = -math.inf
        while True:
            family = [self.me, *procfs.descendants(self.me)]
            self.cpu = self._cpu(family)
            if time.monotonic() >= memory_at + MEMORY_EVERY:
                memory_at = time.monotonic()
                self.memory_mib = self._pss(family) / 2**20
            if self._stop.wait(CPU_EVERY):
                return

    def _cpu(self, family: list[int]) -> float:
        """% of one core the family used since the last sample; a process seen for the first time adds 0."""
        samples: dict[int, tuple[float, float]] = {}
        cpu = 0.0
        for pid in family:
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

    @staticmethod
    def _pss(family: list[int]) -> int:
        total = 0
        for pid in family:
            try:
                total += procfs.pss_bytes(pid)
            except OSError:
                continue  # exited meanwhile
        return total
