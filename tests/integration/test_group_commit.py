"""States are group-committed, and still durable before the next tick goes out.

The worker is killed with SIGKILL while five strategies tick fast; every tick a
child received proves the state of the heartbeat before it was committed, so
the saved state, and what each strategy restores on restart, can be at most
one tick behind the last tick it saw.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.conftest import Lab, pid_alive, wait_for

SEEN = '''
import os
def _note(ctx, text):
    with open(os.path.join(os.path.dirname(__file__), f"seen-{ctx.id}.txt"), "a") as f:
        f.write(text + "\\n")
def st_init(ctx):
    _note(ctx, f"init {ctx.state.get('n', 0)}")
def st_heartbeat(ctx, tick):
    _note(ctx, f"tick {tick.seq}")  # before the state: receiving tick N proves state N-1 durable
    ctx.state["n"] = tick.seq
def st_exit(ctx, reason):
    pass
'''

IDS = [f"g{i}" for i in range(5)]


def _lines(home: Path, work_id: str, kind: str) -> list[int]:
    path = home / f"seen-{work_id}.txt"
    text = path.read_text() if path.exists() else ""
    return [int(line.split()[1]) for line in text.splitlines() if line.startswith(kind + " ")]


@pytest.mark.parametrize("store", ["file", "postgres"])
def test_state_survives_a_worker_sigkill_at_most_one_tick_behind(store: str, request: pytest.FixtureRequest) -> None:
    lab: Lab = request.getfixturevalue("lab" if store == "file" else "pg_lab")
    lab.director()
    worker = lab.worker("w1")
    file = lab.strategy("seen", SEEN)
    for work_id in IDS:
        lab.assign(file, "--id", work_id, "--interval", "0.01")
    for work_id in IDS:
        lab.wait_heartbeats(work_id, 30, timeout=20)
    pids = [lab.work(w).result.pid for w in IDS]
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(10)
    wait_for(lambda: not any(pid and pid_alive(pid) for pid in pids), what="the children to die with their worker")
    for work_id in IDS:
        last_tick = max(_lines(lab.home, work_id, "tick"))
        assert lab.state(work_id)["n"] >= last_tick - 1, work_id
    lab.worker("w1")
    for work_id in IDS:
        last_tick = max(_lines(lab.home, work_id, "tick"))
        restored = wait_for(lambda: _lines(lab.home, work_id, "init")[1:], timeout=20, what=f"{work_id} to restart")
        assert restored[0] >= last_tick - 1, work_id
