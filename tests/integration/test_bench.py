"""`scripts/bench.py --quick` runs to the end, every figure a number (a smoke test: no timing asserts)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FIGURES = [
    "fork from zygote", "tick round trip worker -> child -> worker", "fresh interpreter + import",
    "assign -> first heartbeat", "child SIGKILL -> new child's first heartbeat", "API round trip strategy",
    "API calls/s", "API round trip through real pybit", "API call on an idle account", "idle worker with 100 strategies",
    "worker heartbeat (idle worker)", "failover: worker SIGKILL", "2000 Works on 100 workers: placed",
    "qlab status --json, 2000 Works", "idle director, 2000 Works", "gap between ticks, p99", "largest gap between ticks",
    "events the flooder wrote", "messages the worker dropped", "largest delay of another's tick", "zygote replaced after",
]


@pytest.mark.timeout(240)
def test_bench_quick_prints_every_figure(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=230)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    for name in FIGURES:
        assert any(name in row[0] for row in rows), f"no figure {name!r} in:\n{done.stdout}"
    for row in rows:
        median = float(row[1].split()[0])
        assert math.isfinite(median) and median >= 0, row
