"""The worker's own load: CPU and memory of the worker and its children (psutil)."""

from __future__ import annotations

import psutil

from quantlab.pool.records import Load


class LoadMeter:
    def __init__(self) -> None:
        self.me = psutil.Process()
        self.known: dict[int, psutil.Process] = {}

    def measure(self, running_strategies: int) -> Load:
        # cpu_percent() compares with the previous call on the same Process object: keep them.
        procs = [self.me, *self.me.children(recursive=True)]
        alive = {p.pid: self.known.get(p.pid, p) for p in procs}
        self.known = alive
        cpu = memory = 0.0
        for proc in alive.values():
            try:
                cpu += proc.cpu_percent(None)
                memory += proc.memory_info().rss
            except psutil.Error:
                continue  # exited meanwhile
        return Load(cpu=round(cpu, 1), memory=round(memory / 2**20, 1), running_strategies=running_strategies)
