"""The fault trials (scripts/fault_trials.py), a few of each kind: paused workers at random moments, and no
order that should not exist (none of a stale epoch, none settled absent yet landed, none after `qlab halt`
returned)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))
from chaos_cluster import Cluster  # noqa: E402

TRIALS = 3
DEADLINE = 150  #: seconds for both fleets (about 40 s on a 2-core machine)


def run_trials(home: Path) -> tuple[dict[str, Any], str]:
    verdicts = home.parent / "verdicts.json"
    command = [sys.executable, str(SCRIPTS / "fault_trials.py"), "--trials", str(TRIALS), "--seed", "1", "--kind", "both",
               "--home", str(home), "--json", str(verdicts)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("QLAB_HOME", "QLAB_STORE")}
    trials = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        out, _ = trials.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        trials.send_signal(signal.SIGTERM)  # the script stops its fleet on its way out
        out, _ = trials.communicate(timeout=30)
        pytest.fail(f"the trials did not finish within {DEADLINE}s:\n{out[-6000:]}")
    finally:
        if trials.poll() is None:
            os.killpg(trials.pid, signal.SIGKILL)
            trials.wait()
        for kind in ("paper-fence", "halt"):  # whatever carries a fleet's marker, should the script have been killed
            Cluster(home / kind).sweep()
    assert verdicts.exists(), f"the trials wrote no verdicts (exit {trials.returncode}):\n{out[-6000:]}"
    return json.loads(verdicts.read_text()), out


@pytest.mark.timeout(DEADLINE + 60)
def test_paused_workers_leave_no_order_that_should_not_exist(tmp_path: Path) -> None:
    """A worker paused past its lease while its strategies trade on paper, and one paused around `qlab halt`:
    every trial does its fault, orders flow around it, and the ledger holds none that should not exist."""
    verdicts, out = run_trials(tmp_path / "homes")
    assert verdicts["passed"] and not verdicts["details"], out[-6000:]
    for kind in ("paper-fence", "halt"):
        row = verdicts["kinds"][kind]
        assert row["trials"] == TRIALS and row["problems"] == [], (kind, row, out[-4000:])
        assert row["violations"] == 0 and row["orders"] > 0, (kind, row)
        assert row["max_s"] is not None and row["median_s"] <= row["max_s"], (kind, row)
    assert verdicts["kinds"]["halt"]["refused"] >= 2 * 4 * TRIALS, verdicts["kinds"]["halt"]  # the halt met real orders
