"""The chaos soak (scripts/chaos.py), every fault kind: it must pass with no violation.

60 seconds on the file store; 30 seconds on PostgreSQL (a scratch database the soak makes and drops).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pgutil import require_postgres

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))
from chaos_cluster import Cluster  # noqa: E402

DURATION = 60
PG_DURATION = 30
#: Past the faults: setup (~5 s), settling (at most 15 s + twice the 5.2 s bound), the shutdown (~12 s at most).
OVERHEAD = 120


def run_soak(home: Path, duration: int, *extra: str) -> None:
    command = [sys.executable, str(SCRIPTS / "chaos.py"), "--duration", str(duration), "--seed", "1", "--home", str(home), *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("QLAB_HOME", "QLAB_STORE")}
    deadline = duration + OVERHEAD
    soak = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        out, _ = soak.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        soak.send_signal(signal.SIGTERM)  # the soak ends every process it started (and drops its database) on its way out
        out, _ = soak.communicate(timeout=30)
        pytest.fail(f"the soak did not finish within {deadline}s:\n{out[-6000:]}")
    finally:
        if soak.poll() is None:
            os.killpg(soak.pid, signal.SIGKILL)
            soak.wait()
        Cluster(home).sweep()  # whatever carries this home's marker, should the soak itself have been killed
    assert "violations (all must be 0)" in out and "chaos soak: seed 1" in out, out[-6000:]
    assert soak.returncode == 0, "the soak found violations:\n" + "\n".join(
        line for line in out.splitlines() if "VIOLATION" in line or "chaos:" in line
    )[-8000:]


@pytest.mark.timeout(DURATION + OVERHEAD + 60)
def test_chaos_soak_passes(tmp_path: Path) -> None:
    run_soak(tmp_path / "home", DURATION)


@pytest.mark.timeout(PG_DURATION + OVERHEAD + 60)
def test_chaos_soak_passes_on_postgres(tmp_path: Path) -> None:
    run_soak(tmp_path / "home", PG_DURATION, "--store", require_postgres())
