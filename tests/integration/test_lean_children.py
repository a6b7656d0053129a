"""Strategy children and the worker hold only what they use (real director, worker and zygote)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import Lab, wait_for

#: Reports in ctx.state what its zygote froze and whether it collects its own objects.
INTROSPECT = '''
import gc
def st_init(ctx):
    ctx.state.update(frozen=gc.get_freeze_count(), collects=gc.isenabled())
def st_heartbeat(ctx, tick):
    pass
def st_exit(ctx, reason):
    pass
'''

#: Worker hooks: which modules the worker's process holds once it runs, and its pid.
MODULES_HOOK = '''
import json, os, sys
def st_worker_init(wctx):
    path = os.path.join(os.path.dirname(__file__), "worker.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"pid": os.getpid(), "modules": sorted(sys.modules)}, f)
    os.rename(path + ".tmp", path)  # whole or not there: the test reads it as soon as it exists
'''

#: Reports in ctx.state whether its logger exists yet; prints at tick 2 and logs at tick 3.
LOGS_LATE = '''
import logging
def made(ctx):
    return f"strategy.{ctx.id}" in logging.Logger.manager.loggerDict
def st_init(ctx):
    ctx.state["logger_at_init"] = made(ctx)
def st_heartbeat(ctx, tick):
    if tick.seq == 2:
        print("printed at 2")
        ctx.state["logger_after_print"] = made(ctx)
    if tick.seq == 3:
        ctx.log.info("logged at 3")
        ctx.state["logger_after_log"] = made(ctx)
def st_exit(ctx, reason):
    pass
'''


def test_the_strategy_log_is_made_by_its_first_line_and_gets_every_line(lab: Lab) -> None:
    lab.director()
    lab.worker("w1")
    lab.assign(lab.strategy("late", LOGS_LATE), "--interval", "0.05")
    state = wait_for(lambda: "logger_after_log" in (s := lab.state("late")) and s, what="the third tick's state")
    assert state == {"logger_at_init": False, "logger_after_print": False, "logger_after_log": True}
    log = wait_for(lambda: "logged at 3" in (text := lab.log("late")) and text, what="the logged line")
    assert log.index("printed at 2") < log.index("logged at 3")


def test_an_idle_child_shares_the_zygotes_frozen_objects_and_runs_only_zeromqs_two_threads(lab: Lab) -> None:
    lab.director()
    lab.worker("w1")
    lab.assign(lab.strategy("idle", INTROSPECT), "--interval", "0.05")
    state = wait_for(lambda: "frozen" in (s := lab.state("idle")) and s, what="the child's report")
    # Everything the zygote imported is frozen (tens of thousands of objects): a collection in
    # the child never writes to the pages it shares with the zygote; its own objects are collected.
    assert state["frozen"] > 10_000 and state["collects"]
    # Its main thread and ZeroMQ's I/O thread and reaper: no event loop, no logging thread.
    pid = wait_for(lambda: lab.work("idle").result.pid, what="the child's pid")
    threads = [Path(f"/proc/{pid}/task/{task}/comm").read_text().strip() for task in os.listdir(f"/proc/{pid}/task")]
    assert len(threads) == 3 and {"ZMQbg/IO/0", "ZMQbg/Reaper"} <= set(threads), threads


def test_the_worker_process_holds_no_command_line_modules_and_keeps_its_pid(lab: Lab, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks.py"
    hooks.write_text(MODULES_HOOK)
    profile = tmp_path / "w1.toml"
    profile.write_text(f'region = "JP"\nhooks = "{hooks}"\n')
    worker = lab.worker("w1", "--profile", str(profile))
    report = wait_for(lambda: (tmp_path / "worker.json").exists() and json.loads((tmp_path / "worker.json").read_text()),
                      what="the worker's hook")
    # `qlab worker start` parsed its options, then became the worker: same process, without click
    # and the CLI (1.1 MB it would hold for its whole life), and without psutil (0.7 MB).
    assert report["pid"] == worker.pid == lab.store.find_resource("w1").spec.pid
    assert not {"click", "quantlab.cli", "psutil"} & set(report["modules"])


def test_every_process_says_what_it_is_in_ps(lab: Lab) -> None:
    def title(pid: int) -> str:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()

    director = lab.director()
    worker = lab.worker("jp-1")
    lab.assign(lab.strategy("grid-btc", INTROSPECT), "--interval", "0.05")
    pid = lab.wait_status("grid-btc", "running").result.pid
    assert pid
    assert title(director.pid) == "qlab director"
    assert title(worker.pid) == "qlab worker jp-1"
    assert title(pid) == "qlab strategy grid-btc [jp-1]"
    children = [int(p) for p in Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()]
    assert sorted(title(p) for p in children) == ["qlab strategy grid-btc [jp-1]", "qlab zygote jp-1"]
    os.kill(pid, 9)  # its restart is forked from the same zygote: the title comes with every fork
    restarted = wait_for(lambda: (w := lab.work("grid-btc")).result.status == "running" and w.result.pid != pid
                         and w.result.pid, what="the restarted child")
    assert title(restarted) == "qlab strategy grid-btc [jp-1]"
