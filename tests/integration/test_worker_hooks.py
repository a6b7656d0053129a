"""workers/hooks_example.py in a real worker: every public name of ``wctx`` (docs/worker-hooks.md)
used by a profile's hook file, with the effect the page promises.

The example logs lines that start with ``hooks:`` in the worker's log; a strategy here
records the messages the hooks send it in its state.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from quantlab.worker.context import PUBLIC
from tests.conftest import Lab, wait_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "workers" / "hooks_example.py"

#: Keeps every message its st_message hook gets, in order, in its state.
LISTENER = """
def st_init(ctx):
    ctx.state.setdefault("got", [])
def st_heartbeat(ctx, tick):
    pass
def st_message(ctx, msg):
    ctx.state["got"] = ctx.state["got"][-20:] + [msg]
def st_exit(ctx, reason):
    pass
"""


def test_the_example_uses_every_public_name_of_wctx() -> None:
    source = EXAMPLE.read_text()
    assert [name for name in PUBLIC if not re.search(rf"\bwctx\.{name}\b", source)] == []


def _hook_lines(lab: Lab, worker_id: str) -> list[str]:
    log = lab.home / "logs" / f"worker-{worker_id}.log"
    return [line.split("hooks: ", 1)[1] for line in (log.read_text() if log.exists() else "").splitlines()
            if "hooks: " in line]


@pytest.mark.timeout(90)
def test_the_example_hooks_run_in_a_real_worker(lab: Lab) -> None:
    profile = lab.home / "jp-9.toml"
    profile.write_text(f'id = "jp-9"\nregion = "JP"\nmax_strategies = 3\nhooks = "{EXAMPLE}"\n')
    lab.director()
    worker = lab.worker("jp-9", "--profile", str(profile))  # with --heartbeat 0.2, which wins over the profile
    listener = lab.strategy("listener", LISTENER)
    lab.assign(listener, "--id", "hello", "--param", "hello=true", "--interval", "0.2")
    lab.assign(listener, "--id", "quiet", "--interval", "0.2")

    # st_worker_init: wctx.worker, wctx.options, wctx.apis
    init = wait_for(lambda: [line for line in _hook_lines(lab, "jp-9") if line.startswith("init ")], 10, "init")
    assert re.match(r"init jp-9 \(jp-9\) in region JP on host \S+: heartbeat 0.2s, at most 3 strategies, "
                    r"accounts paper$", init[0]), init

    # st_worker_heartbeat: wctx.strategies, wctx.pool.get_work, wctx.send_to_strategy, to the one that asked
    wait_for(lambda: {"hello": "jp-9"} in lab.state("hello").get("got", []), 20, "the greeting")
    greeted = [line for line in _hook_lines(lab, "jp-9") if line.startswith("greeted ")]
    assert len(greeted) == 1 and re.match(r"greeted hello \(pid \d+\)$", greeted[0]), greeted
    assert {"hello": "jp-9"} not in lab.state("quiet").get("got", [])

    # every EVERY beats: wctx.state, wctx.pool.get_assigned_works, wctx.broadcast_to_all, to both
    def told_both() -> bool:
        return all(any("beat" in m for m in lab.state(s).get("got", [])) for s in ("hello", "quiet"))

    wait_for(told_both, 20, "the load broadcast to both strategies")
    beats = [line for line in _hook_lines(lab, "jp-9") if line.startswith("beat ")]
    assert re.match(r"beat \d+: (idle|busy), cpu [\d.]+%, memory [\d.]+ MiB, \d running, \d assigned; ", beats[-1])
    assert any("hello running (errors 0, last heartbeat " in line and "quiet running" in line for line in beats)
    assert any(line == "told 2 strategies the load" for line in _hook_lines(lab, "jp-9"))

    # st_worker_exit: the reason, after every strategy was drained
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert _hook_lines(lab, "jp-9")[-1] == "exit manual (signal SIGTERM), 0 strategies left"
    log = (lab.home / "logs" / "worker-jp-9.log").read_text()
    assert "user hook" not in log, log  # no hook raised
