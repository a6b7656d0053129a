"""Logs that rotate by size, `strategy logs -f` across a rotation, and JSON process logs."""

from __future__ import annotations

import json
import subprocess
import threading

from tests.conftest import QLAB, Lab, wait_for

CHATTY = '''
def st_init(ctx):
    ctx.state.setdefault("n", 0)
def st_heartbeat(ctx, tick):
    ctx.state["n"] += 1
    print(f"line {ctx.state['n']:06d} " + "x" * 100)
    ctx.log.info("logged %d", ctx.state["n"])
def st_exit(ctx, reason):
    pass
'''


def test_a_strategy_log_rotates_by_size_and_logs_f_follows_it(lab: Lab) -> None:
    lab.director()
    lab.worker("w1", "--log-max-mb", "0.002", "--log-keep", "2")  # 2,000 bytes a file
    lab.assign(lab.strategy("chatty", CHATTY), "--interval", "0.02")
    lab.wait_heartbeats("chatty", 1)
    follower = subprocess.Popen([QLAB, "--home", str(lab.home), "strategy", "logs", "chatty", "-f", "-n", "0"],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(follower.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        logs = lab.home / "logs" / "strategies"
        wait_for(lambda: (logs / "chatty.log.2").exists(), what="two rotations")
        rotated_at = max(int(line.split()[1]) for line in (logs / "chatty.log.1").read_text().splitlines() if line.startswith("line "))
        wait_for(lambda: any(line.startswith("line ") and int(line.split()[1]) > rotated_at + 5 for line in list(seen)),
                 what="`logs -f` to go on past the rotation")
        assert not (logs / "chatty.log.3").exists()  # --log-keep 2
        assert (logs / "chatty.log").stat().st_size < 4000
    finally:
        follower.terminate()
        follower.wait(10)


def test_json_process_logs_are_one_object_a_line(lab: Lab) -> None:
    lab.director()
    lab.worker("w1", "--log-format", "json")
    lab.assign(lab.strategy("quiet", CHATTY), "--interval", "0.5")
    lab.wait_heartbeats("quiet", 1)
    lines = (lab.home / "logs" / "worker-w1.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert entries and all({"ts", "level", "logger", "message"} <= set(e) for e in entries)
    assert any("starting" in e["message"] for e in entries)
