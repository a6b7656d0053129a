"""The worker's own load, and each strategy child's: CPU and memory, read from /proc.

Memory is the proportional set size (PSS): children forked from the zygote
share most of their pages, so adding up RSS would count those pages once per
child (at 100 strategies, 3.3 GiB of RSS against 0.5 GiB of PSS). PSS costs
about 1 ms per process to read, and finding the children for either figure
scans every process on the host (/proc): a thread of the meter's own samples
CPU every CPU_EVERY and memory every MEMORY_EVERY seconds, and a heartbeat
reads the last figures, so the worker's loop never stalls for them.

The same samples give each child's own figures (``usage``, by pid), which the
worker writes with its strategies' heartbeat counts for `qlab status`. A child
seen for the first time has its memory read in that CPU pass, not up to
MEMORY_EVERY later; its CPU needs a second sample.
"""

from __future__ import annotations

import math
import os
import threading
import time

import msgspec

from quantlab.store.records import Load
from quantlab.worker import procfs

#: Seconds between memory samples.
MEMORY_EVERY = 30.0
#: Seconds between CPU samples: finding the children scans every process on the host (/proc).
CPU_EVERY = 5.0


class Usage(msgspec.Struct, frozen=True):
    """One process's figures at the last samples."""

    cpu: float | None  #: % of one core since the CPU sample before; None: seen once so far
    memory: float | None  #: MiB, proportional set size; None: not read yet


class LoadMeter:
    def __init__(self) -> None:
        self.me = os.getpid()
        self.known: dict[int, tuple[float, float]] = {}  #: pid -> (CPU seconds, monotonic time) at the last sample
        self.memory_mib = 0.0
        self.cpu = 0.0  #: % of one core over the last CPU_EVERY seconds
        #: Every process of the family by pid, as of the last samples: replaced whole by the sampler
        #: thread, so the loop reads one consistent dict.
        self.usage: dict[int, Usage] = {}
        self._pss: dict[int, int] = {}  #: pid -> bytes at its last memory sample
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
            memory = time.monotonic() >= memory_at + MEMORY_EVERY
            if memory:
                memory_at = time.monotonic()
            self.sample_once(memory)
            if self._stop.wait(CPU_EVERY):
                return

    def sample_once(self, memory: bool) -> None:
        """One CPU sample of the family, and its memory when ``memory`` (else only of processes new to it)."""
        family = [self.me, *procfs.descendants(self.me)]
        cpu = self._cpu(family)
        self.cpu = sum(cpu.values())
        pss: dict[int, int] = {}
        for pid in family:
            size = self._pss_of(pid) if memory or pid not in self._pss else self._pss[pid]
            if size is not None:
                pss[pid] = size
        self._pss = pss
        if memory:
            self.memory_mib = sum(self._pss.values()) / 2**20
        self.usage = {pid: Usage(cpu=cpu.get(pid), memory=self._pss[pid] / 2**20 if pid in self._pss else None)
                      for pid in family}

    def _cpu(self, family: list[int]) -> dict[int, float]:
        """% of one core each process used since the last sample; a process seen for the first time has none."""
        samples: dict[int, tuple[float, float]] = {}
        cpu: dict[int, float] = {}
        for pid in family:
            try:
                sample = (procfs.cpu_seconds(pid), time.monotonic())
            except OSError:
                continue  # exited meanwhile
            samples[pid] = sample
            last = self.known.get(pid)
            if last is not None and sample[1] > last[1]:
                cpu[pid] = 100.0 * (sample[0] - last[0]) / (sample[1] - last[1])
        self.known = samples
        return cpu

    @staticmethod
    def _pss_of(pid: int) -> int | None:
        try:
            return procfs.pss_bytes(pid)
        except PermissionError:
            pass  # a strategy child is not dumpable: without CAP_SYS_PTRACE only its RSS is readable
        except OSError:
            return None  # exited meanwhile
        try:
            return procfs.rss_bytes(pid)
        except OSError:
            return None
