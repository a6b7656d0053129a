"""The chaos soak (scripts/chaos.py) for 60 seconds, every fault kind: it must pass with no violation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))
from chaos_cluster import Cluster  # noqa: E402

DURATION = 60
#: Setup (~5 s), the faults, settling (at most 15 s + twice the 5.2 s bound), the shutdown (~12 s at most).
DEADLINE = DURATION + 120


@pytest.mark.timeout(DEADLINE + 60)
def test_chaos_soak_passes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    command = [sys.executable, str(SCRIPTS / "chaos.py"), "--duration", str(DURATION), "--seed", "1", "--home", str(home)]
    env = {k: v for k, v in os.environ.items() if k != "QLAB_HOME"}
    soak = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        out, _ = soak.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        soak.send_signal(signal.SIGTERM)  # the soak ends every process it started on its way out
        out, _ = soak.communicate(timeout=30)
        pytest.fail(f"the soak did not finish within {DEADLINE}s:\n{out[-6000:]}")
    finally:
        if soak.poll() is None:
            os.killpg(soak.pid, signal.SIGKILL)
            soak.wait()
        Cluster(home).sweep()  # whatever carries this home's marker, should the soak itself have been killed
    assert "violations (all must be 0)" in out and "chaos soak: seed 1" in out, out[-6000:]
    assert soak.returncode == 0, "the soak found violations:\n" + "\n".join(
        line for line in out.splitlines() if "VIOLATION" in line or "chaos:" in line
    )[-8000:]
