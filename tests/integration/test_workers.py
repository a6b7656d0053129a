"""Worker lifecycle, failover and placement, with real qlab processes."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from pathlib import Path

from quantlab import control
from tests.conftest import QLAB, Lab, lacking, pid_alive, wait_for

#: Counts its heartbeats in ctx.state; writes the counter each st_init restored (init-ID.txt) and
#: each heartbeat left (beats-ID.txt), so a test can compare a handover with the last beat exactly.
COUNTER = '''
import os
def _note(name, text):
    with open(os.path.join(os.path.dirname(__file__), name), "a") as f:
        f.write(text + "\\n")
def st_init(ctx):
    ctx.state.setdefault("n", 0)
    _note(f"init-{ctx.id}.txt", str(ctx.state["n"]))
def st_heartbeat(ctx, tick):
    ctx.state["n"] += 1
    _note(f"beats-{ctx.id}.txt", str(ctx.state["n"]))
def st_exit(ctx, reason):
    _note(f"exit-{ctx.id}.txt", reason.type)
'''


def numbers(lab: Lab, name: str) -> list[int]:
    path = lab.home / name
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_worker_sigterm_stops_strategies_with_worker_exit(lab: Lab) -> None:
    lab.director()
    worker = lab.worker("w1")
    file = lab.strategy("a", COUNTER)
    lab.assign(file, "--interval", "0.05")
    lab.assign(file, "--id", "b", "--interval", "0.05")
    pids = [lab.wait_heartbeats(w, 1).result.pid for w in ("a", "b")]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    for work_id, pid in zip(("a", "b"), pids):
        assert (lab.home / f"exit-{work_id}.txt").read_text().split() == ["worker_exit"]
        assert pid and not pid_alive(pid)
        assert lab.state(work_id)["n"] == numbers(lab, f"beats-{work_id}.txt")[-1]  # a drain keeps the last beat's state
    assert lab.store.find_resource("w1") is None
    assert lab.events("worker_stopped")


def test_worker_sigkill_fails_over_with_state(lab: Lab) -> None:
    lab.director()
    first = lab.worker("w1", "--lease-ttl", "1", "--drain-timeout", "0.5")
    file = lab.strategy("mover", COUNTER)
    lab.assign(file, "--interval", "0.05", "--worker", "w1")
    work = lab.wait_heartbeats("mover", 5)
    # unpin so the director may place it elsewhere once w1 is gone
    lab.store.update_work("mover", lambda w: setattr(w.spec.placement, "worker", None) or w)
    lab.worker("w2", "--lease-ttl", "1", "--drain-timeout", "0.5")
    pid = work.result.pid
    assert pid
    first.send_signal(signal.SIGKILL)
    first.wait(5)
    wait_for(lambda: not pid_alive(pid), timeout=1.0, what="the orphaned strategy child to die with its worker")
    before = lab.state("mover")["n"]  # its child and worker are dead: nothing writes it any more
    assert before >= numbers(lab, "beats-mover.txt")[-1] - 1  # at most the heartbeat under way was lost
    moved = wait_for(
        lambda: (w := lab.work("mover")).assignment is not None and w.assignment.worker == "w2" and w,
        what="the strategy to move to w2",
    )
    assert moved.epoch > work.epoch
    lab.wait_status("mover", "running")
    restored = wait_for(lambda: numbers(lab, "init-mover.txt")[1:], what="the new runner's st_init")
    assert restored == [before]  # exactly what was stored, not a fresh start
    wait_for(lambda: lab.state("mover")["n"] > before, what="state to continue")
    assert lab.events("worker_lost") and lab.events("reassigned", "mover")


def test_placement_capacity_region_and_pins(lab: Lab) -> None:
    lab.director()
    lab.worker("small", "--max-strategies", "1")
    file = lab.strategy("p", COUNTER)
    lab.assign(file, "--id", "one", "--interval", "0.2")
    lab.wait_status("one", "running")
    lab.assign(file, "--id", "two", "--interval", "0.2")
    two = wait_for(lambda: "full" in (w := lab.work("two")).result.reason and w, what="a 'full' reason")
    assert two.result.status == "pending" and "small (1/1)" in two.result.reason
    lab.assign(file, "--id", "us", "--region", "US", "--interval", "0.2")
    us = wait_for(lambda: "region" in (w := lab.work("us")).result.reason and w, what="a region reason")
    assert us.result.status == "pending" and "'US'" in us.result.reason
    lab.worker("usw", region="US")
    lab.wait_status("us", "running")
    assert lab.work("us").assignment.worker == "usw"  # type: ignore[union-attr]
    assert lab.work("two").assignment.worker == "usw"  # type: ignore[union-attr]


def test_status_json_fields(lab: Lab) -> None:
    lab.director()
    lab.worker("w1")
    file = lab.strategy("s", COUNTER)
    lab.assign(file, "--interval", "0.05")
    lab.wait_heartbeats("s", 2)
    status = lab.status()
    assert set(status) == {"directors", "leader", "workers", "strategies", "halts"}
    assert status["leader"]["live"] and status["leader"]["director"] == status["directors"][0]["id"]
    strategy = status["strategies"][0]
    for field in ("id", "file", "worker", "region", "desired", "status", "pid", "heartbeats", "last_heartbeat",
                  "restarts", "error_count", "last_error", "reason", "since"):
        assert field in strategy, field
    worker = status["workers"][0]
    for field in ("id", "region", "host", "pid", "status", "last_seen", "max_strategies", "load"):
        assert field in worker, field
    assert set(worker["load"]) >= {"cpu", "memory", "running_strategies"}
    assert worker["load"]["running_strategies"] == 1 or wait_for(
        lambda: lab.status()["workers"][0]["load"]["running_strategies"] == 1
    )
    assert status["directors"] and status["directors"][0]["role"] == "leader"


def test_second_director_stands_by_and_takes_over(lab: Lab) -> None:
    first = lab.director("--lease-ttl", "1")
    wait_for(lambda: any(d.role == "leader" for d in lab.store.list_directors()), what="a leader")
    lab.director("--lease-ttl", "1")
    wait_for(lambda: len(lab.store.list_directors()) == 2, what="two directors")
    assert sorted(d.role for d in lab.store.list_directors()) == ["leader", "standby"]
    first.send_signal(signal.SIGKILL)
    first.wait(5)
    lab.worker("w1")
    file = lab.strategy("s", COUNTER)
    lab.assign(file, "--interval", "0.05")
    lab.wait_heartbeats("s", 1)


def _up(lab: Lab, file: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [QLAB, "--home", str(lab.home), "up", file],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_up_runs_and_stops_cleanly_on_sigint_and_sigterm(lab: Lab) -> None:
    file = lab.strategy("demo", COUNTER)
    for sig in (signal.SIGINT, signal.SIGTERM):
        up = _up(lab, str(file))
        lab.procs.append(up)  # type: ignore[arg-type]
        lab.wait_heartbeats("demo", 3 if sig == signal.SIGINT else 10, timeout=30)  # 1 s ticks, after 3 processes start
        pid = lab.work("demo").result.pid
        up.send_signal(sig)
        out, err = up.communicate(timeout=30)
        assert up.returncode == 0, err
        assert "Traceback" not in out + err
        assert "started" in out
        assert pid and not pid_alive(pid)
    assert (lab.home / "exit-demo.txt").read_text().split() == ["worker_exit", "worker_exit"]


def test_qlab_home_works_like_home(tmp_path: Path) -> None:
    home = str(tmp_path / "h")
    env = dict(os.environ, QLAB_HOME=home)
    result = subprocess.run([QLAB, "status", "--json"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert os.path.isdir(home + "/store")


HOOKS = '''
import json, os
HERE = os.path.dirname(__file__)
def _mark(name, text):
    with open(os.path.join(HERE, name), "a") as f:
        f.write(text + "\\n")
def st_worker_init(wctx):
    _mark("hooks.txt", "init " + wctx.worker.id + " " + wctx.worker.region)
def st_worker_heartbeat(wctx, tick):
    running = [s.id for s in wctx.strategies.values() if s.status == "running"]
    if running and not os.path.exists(os.path.join(HERE, "broadcast.txt")):
        _mark("broadcast.txt", str(wctx.broadcast_to_all({"from": "hook", "seq": tick.seq})))
def st_worker_exit(wctx, reason):
    _mark("hooks.txt", "exit " + reason.type)
'''

LISTENER = COUNTER + '''
def st_message(ctx, msg):
    with open(os.path.join(os.path.dirname(__file__), "heard.txt"), "a") as f:
        f.write(msg["from"] + "\\n")
'''


def test_profile_and_user_hooks_with_broadcast(lab: Lab) -> None:
    hooks = lab.strategy("hooks", HOOKS)
    profile = lab.home / "jp-9.toml"
    profile.write_text(f'id = "jp-9"\nregion = "JP"\nmax_strategies = 3\nheartbeat = 0.2\nhooks = "{hooks}"\n')
    lab.director()
    worker = lab.start("worker", "start", "--profile", str(profile))
    resource = wait_for(lambda: lab.store.find_resource("jp-9"), what="the profile's worker")
    assert resource.spec.max_strategies == 3 and resource.spec.region == "JP"
    lab.assign(lab.strategy("listener", LISTENER), "--interval", "0.05")
    heard = wait_for(lambda: (p := lab.home / "heard.txt").exists() and p.read_text(), timeout=30, what="the broadcast")
    assert heard.split() == ["hook"]
    assert (lab.home / "broadcast.txt").read_text().split() == ["1"]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert (lab.home / "hooks.txt").read_text().split("\n")[:2] == ["init jp-9 JP", "exit manual"]


def test_bad_profile_is_a_one_line_error(lab: Lab) -> None:
    profile = lab.home / "bad.toml"
    profile.write_text('region = "JP"\nmax_strategy = 3\n')
    result = lab.run("worker", "start", "--profile", str(profile), check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "max_strategy" in result.stderr


def test_the_workers_own_status_writes_do_not_renew_its_lease_each_time(lab: Lab) -> None:
    """A change in the store wakes the worker to follow it (assignments, stops), not to renew its lease.

    Each restart writes statuses, and each is a change: renewing on each one would put a lease
    write (two fsyncs) between a restarted child's Hello and its Init.
    """
    lab.director()
    lab.worker("w1", "--heartbeat", "1")
    lab.assign(lab.strategy("victim", COUNTER), "--interval", "60", "--backoff", "0", "--max-errors", "1000")
    work = lab.wait_heartbeats("victim", 1)
    resource = lab.store.find_resource("w1")
    assert resource is not None
    renewals, started = resource.state.renewals, time.monotonic()
    for _ in range(10):
        pid = work.result.pid
        assert pid
        os.kill(pid, signal.SIGKILL)
        work = wait_for(lambda: (w := lab.work("victim")).result.pid not in (None, pid) and w.result.heartbeats and w,
                        what="the restarted child's first heartbeat")
    resource = lab.store.find_resource("w1")
    assert resource is not None
    beats = time.monotonic() - started  # one renewal a second, and one to spare at either end
    assert resource.state.renewals - renewals <= beats + 2, (resource.state.renewals - renewals, beats)


def test_change_driven_heartbeats_never_expire_a_renewing_worker(lab: Lab) -> None:
    """The director reads the worker records on its 4 s timer, but beats on every change in between.

    A worker with a 2 s lease renews five times a second all along; a stream of messages keeps
    the director beating between its timer reads for longer than that lease plus its margin.
    """
    lab.start("director", "start", "--heartbeat", "4")
    lab.worker("w1", "--lease-ttl", "2", "--drain-timeout", "1")
    lab.assign(lab.strategy("listener", LISTENER), "--interval", "0.2")
    placed = lab.wait_status("listener", "running")
    deadline = time.monotonic() + 9  # two timer ticks and more, each past the lease plus its margin
    while time.monotonic() < deadline and not lab.events("reassigned"):  # a lost worker's works are reassigned
        control.send(lab.store, "listener", {"from": "test"})  # each message is a change the director wakes to
        time.sleep(0.1)
    assert lab.events("worker_lost") == [] and lab.events("reassigned") == []
    assert lab.work("listener").assignment == placed.assignment
    assert lab.store.find_resource("w1") is not None


def test_a_worker_started_with_systemds_few_descriptors_runs_as_many_strategies_as_it_may(lab: Lab) -> None:
    """systemd starts a service with a soft limit of 1,024 open files (the hard one far higher); a worker
    holds about three a strategy (its pidfd, its channel connection, its state log), so it raises its
    soft limit to the hard one at its start. Here the soft limit is 128 and 100 strategies run."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1024:
        lacking(f"a hard limit of at least 1,024 open files (this machine's is {hard})")
    lab.director()
    lab.worker("w1", "--max-strategies", "110",
               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard)))
    file = lab.strategy("counter", COUNTER)
    ids = [f"f{i:03d}" for i in range(100)]
    manifest = lab.home / "fleet.toml"
    manifest.write_text(f'[defaults]\nfile = "{file}"\ninterval = 0.5\n' + "".join(f"[strategies.{i}]\n" for i in ids))
    lab.run("apply", str(manifest))
    wait_for(lambda: all(lab.state(i).get("n", 0) >= 2 for i in ids), timeout=60, what="every strategy beating")
    assert all(lab.work(i).result.status == "running" for i in ids)
