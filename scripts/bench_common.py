"""What every benchmark module shares: the table's rows, polling, and how `qlab` is run."""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Callable



def _qlab() -> str:
    """The ``qlab`` script installed beside this interpreter, else the one on PATH.

    On PATH it may be a version manager's shim (pyenv's costs ~50 ms a run): every CLI
    figure would measure the shim, not qlab.
    """
    beside = Path(sys.executable).parent / "qlab"
    return str(beside) if beside.exists() else shutil.which("qlab") or "qlab"


QLAB = _qlab()


def qlab_args(home: Path, url: str) -> list[str]:
    return [QLAB, "--home", str(home), *(["--store", url] if url else [])]


QUIET = '''
def st_init(ctx): pass
def st_heartbeat(ctx, tick): pass
def st_exit(ctx, reason): pass
'''


class Row:
    def __init__(self, name: str, samples: list[float], unit: str = "ms") -> None:
        self.name, self.samples, self.unit = name, samples, unit

    def cells(self) -> tuple[str, str, str, str]:
        scale = {"s": 1.0, "ms": 1e3, "us": 1e6}[self.unit]
        ordered = sorted(self.samples)
        p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
        return (self.name, f"{statistics.median(ordered) * scale:.3f} {self.unit}", f"{p95 * scale:.3f} {self.unit}", str(len(ordered)))


class Rate(Row):
    """One figure, not a distribution: a throughput, a duration, a share of a core."""

    def __init__(self, name: str, value: float, n: int, unit: str = "/s") -> None:
        super().__init__(name, [], unit=unit)
        self.value, self.n = value, n

    def cells(self) -> tuple[str, str, str, str]:
        shown = f"{self.value:.0f}" if self.unit in ("/s", "") else f"{self.value:.2f}"  # "": a count
        return (self.name, f"{shown} {self.unit}".rstrip(), "-", str(self.n))


def poll(check: Callable[[], object], timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(0.001)
    return value
