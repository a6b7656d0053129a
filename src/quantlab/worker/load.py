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
seen for the first time has its memory read in a CPU pass soon after, not up
to MEMORY_EVERY later; its CPU needs a second sample.

Reading a PSS walks the process's page tables in the kernel (1 to 3 ms each
here): a thousand children read every MEMORY_EVERY would cost the worker a
tenth of a core. So the reads are budgeted, PSS_PER_SECOND on average, the
new processes first, then those read longest ago; and a family of more than
SAMPLED_PER_SECOND × CPU_EVERY processes has its CPU sampled less often. With
many children each figure is older (at 1,000, memory up to 250 s and CPU up
to 20 s), never costlier.
"""

from __future__ import annotations

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
#: PSS reads a second on average at most.
PSS_PER_SECOND = 4
#: Processes whose CPU is read a second on average at most: a bigger family is sampled less often than CPU_EVERY.
SAMPLED_PER_SECOND = 50


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
        self._pss: dict[int, tuple[int, float]] = {}  #: pid -> (bytes, monotonic time) at its last memory sample
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="load-meter", daemon=True)
        self._sampler.start()

    def measure(self, running_strategies: int) -> Load:
        return Load(cpu=round(self.cpu, 1), memory=round(self.memory_mib, 1), running_strategies=running_strategies)

    def close(self) -> None:
        self._stop.set()
        self._sampler.join(timeout=5)

    def _sample(self) -> None:
        while True:
            every = max(CPU_EVERY, len(self.usage) / SAMPLED_PER_SECOND)
            self.sample_once(int(PSS_PER_SECOND * every))
            if self._stop.wait(every):
                return

    def sample_once(self, reads: int | None = None) -> None:
        """One CPU sample of the family, and up to ``reads`` memory samples (None: no limit): the
        processes new to it first, then those whose last one is older than MEMORY_EVERY, oldest first."""
        family = [self.me, *procfs.descendants(self.me)]
        cpu = self._cpu(family)
        self.cpu = sum(cpu.values())
        now = time.monotonic()
        known = {pid: self._pss[pid] for pid in family if pid in self._pss}
        stale = sorted((at, pid) for pid, (_, at) in known.items() if now - at >= MEMORY_EVERY)
        for pid in [*(pid for pid in family if pid not in known), *(pid for _, pid in stale)][:reads]:
            size = self._pss_of(pid)
            if size is None:
                known.pop(pid, None)
            else:
                known[pid] = (size, now)
        self._pss = known
        self.memory_mib = sum(size for size, _ in known.values()) / 2**20
        self.usage = {pid: Usage(cpu=cpu.get(pid), memory=known[pid][0] / 2**20 if pid in known else None)
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
