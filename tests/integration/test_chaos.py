"""The chaos soak (scripts/chaos.py), every fault kind: it must pass with no violation.

60 seconds on the file store, with the isolation faults, the attacker strategy and two strategies
trading through pybit on the untidy fake Bybit too; 30 seconds on PostgreSQL (a scratch database the
soak makes and drops), on the paper account.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.pgutil import require_postgres

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))
from chaos_cluster import Cluster  # noqa: E402

DURATION = 60
#: A seed that plans every fault kind, the isolation ones included, in the first 50 of the 60 seconds.
SEED = 1282
PG_DURATION = 30
#: Past the faults: setup (~5 s), settling (at most 15 s + twice the 5.2 s bound), the shutdown (~12 s at most).
OVERHEAD = 120


def run_soak(home: Path, duration: int, *extra: str, seed: int = 1) -> dict[str, Any]:
    """Run the soak; its verdicts (scripts/chaos_report.py's summary), checked to be a pass."""
    verdicts = home.parent / "verdicts.json"
    command = [sys.executable, str(SCRIPTS / "chaos.py"), "--duration", str(duration), "--seed", str(seed), "--home", str(home),
               "--json", str(verdicts), *extra]  # fmt: skip
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
    assert verdicts.exists(), f"the soak wrote no verdicts (exit {soak.returncode}):\n{out[-6000:]}"
    summary: dict[str, Any] = json.loads(verdicts.read_text())
    found = {kind: n for kind, n in summary["violations"].items() if n}
    assert not found and summary["passed"], f"violations {found}:\n" + "\n".join(
        f"{d['kind']} {d['strategy'] or ''}: {d['detail']}" for d in summary["details"]
    )[-8000:]
    assert soak.returncode == 0, out[-6000:]
    faults = summary["faults"]
    assert sum(row["injected"] for row in faults.values()) >= duration / 4, faults  # one every 2 s on average
    orders = summary["orders"]
    assert orders["accepted"] >= orders["sent"] / 2 > 0, orders
    return summary


@pytest.mark.timeout(DURATION + OVERHEAD + 60)
def test_chaos_soak_passes(tmp_path: Path) -> None:
    """Every fault kind the seed plans is injected, the kill switch and the isolation faults among them: no order
    lands under a halt, no process is left, and the attacker beside the fleet tried every attack to no effect."""
    summary = run_soak(tmp_path / "home", DURATION, "--faults", "all,isolation", "--attacker", seed=SEED)
    faults = summary["faults"]
    missing = [kind for kind, row in faults.items() if row["planned"] > row["late"] and not row["injected"]]
    assert not missing, f"tried but never injected: {missing}"
    assert faults["halt"]["injected"] >= 1 and summary["orders"]["halts"] == faults["halt"]["injected"], summary
    # A paused zygote holds every other fault for its 10 s, so some planned late in the run do not come.
    assert sum(faults[kind]["injected"] for kind in ("flood", "zygote-stop", "zygote-kill", "escape")) >= 3, faults
    assert summary["orders"]["live"] > 0, summary["orders"]  # through pybit, on the untidy fake Bybit
    attacker = summary["attacker"]
    assert attacker["rounds"] >= 5 and len(attacker["attacks"]) >= 20, attacker
    assert all(row["tries"] >= 5 and row["done"] == 0 for row in attacker["attacks"].values()), attacker


@pytest.mark.timeout(PG_DURATION + OVERHEAD + 60)
def test_chaos_soak_passes_on_postgres(tmp_path: Path) -> None:
    # Paper only: what the live account adds is the exchange's, not the store's, and its slower
    # failovers would hold back the faults this short run is to inject (the file-store soak has it).
    run_soak(tmp_path / "home", PG_DURATION, "--store", require_postgres(), "--live", "0")
