"""The worker's own load: CPU and memory of the worker, its zygote and its children (psutil).

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
import threading
import time

import psutil

from quantlab.pool.records import Load

#: Seconds between memory samples.
MEMORY_EVERY = 30.0
#: Seconds between CPU samples: finding the children scans every process on the host (/proc),
#: which at 200 strategies cost the loop a tenth of its time when done every heartbeat.
CPU_EVERY = 5.0


class LoadMeter:
    def __init__(self) -> None:
        self.me = psutil.Process()
        self.known: dict[int, psutil.Process] = {}
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
            family = self._family()
            self.cpu = self._cpu(family)
            if time.monotonic() >= memory_at + MEMORY_EVERY:
                memory_at = time.monotonic()
                self.memory_mib = self._memory(family) / 2**20
            if self._stop.wait(CPU_EVERY):
                return

    def _family(self) -> list[psutil.Process]:
        # cpu_percent() compares with the previous call on the same Process object: keep them.
        alive = {p.pid: self.known.get(p.pid, p) for p in [self.me, *self.me.children(recursive=True)]}
        self.known = alive
        return list(alive.values())

    @staticmethod
    def _cpu(family: list[psutil.Process]) -> float:
        cpu = 0.0
        for proc in family:
            try:
                cpu += proc.cpu_percent(None)
            except psutil.Error:
                continue  # exited meanwhile
        return cpu

    @staticmethod
    def _memory(family: list[psutil.Process]) -> int:
        total = 0
        for proc in family:
            try:
                total += proc.memory_full_info().pss
            except psutil.Error:
                continue
        return total
