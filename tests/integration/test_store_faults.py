"""The store under pauses, duplicates and full disks, with real qlab processes (issue: the store)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from quantlab.store.records import Work
from tests.conftest import Lab, pid_alive, proc_state, wait_for

#: Heartbeats and exits are appended to ID.beats beside the file: "beat PID N WALLTIME" / "exit PID TYPE WALLTIME".
RECORDER = '''
import os, time
def _log(ctx, line):
    with open(os.path.join(os.path.dirname(__file__), f"{ctx.id}.beats"), "a") as f:
        f.write(line + "\\n")
def st_init(ctx):
    ctx.state.setdefault("n", 0)
def st_heartbeat(ctx, tick):
    ctx.state["n"] += 1
    _log(ctx, f"beat {os.getpid()} {ctx.state['n']} {time.time()}")
def st_exit(ctx, reason):
    _log(ctx, f"exit {os.getpid()} {reason.type} {time.time()}")
'''


class Beat:
    def __init__(self, line: str) -> None:
        kind, pid, value, ts = line.split()
        self.kind, self.pid, self.value, self.ts = kind, int(pid), value, float(ts)


def beats(lab: Lab, work_id: str) -> list[Beat]:
    path = lab.home / f"{work_id}.beats"  # beside the strategy file
    if not path.exists():
        return []
    return [Beat(line) for line in path.read_text().splitlines() if line.count(" ") == 3]


# ---- one worker id, one process ----


def test_a_second_worker_with_a_live_id_is_refused(lab: Lab) -> None:
    lab.worker("w1")
    second = lab.run("worker", "start", "--region", "JP", "--id", "w1", check=False, timeout=20)
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: worker w1 is already running: pid "), second.stderr


def test_a_paused_worker_still_holds_its_id(lab: Lab) -> None:
    first = lab.worker("w1")
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = lab.run("worker", "start", "--region", "JP", "--id", "w1", check=False, timeout=20)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 1 and "already running" in second.stderr


def test_a_killed_worker_restarted_at_once_takes_over_without_waiting(lab: Lab) -> None:
    lab.director()
    first = lab.worker("w1")  # the default lease: 15 s
    file = lab.strategy("rec", RECORDER)
    lab.assign(file, "--interval", "0.05")
    before = lab.wait_heartbeats("rec", 3)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(5)
    began = time.monotonic()
    lab.worker("w1")
    resource = wait_for(lambda: (r := lab.store.find_resource("w1")) and r.spec.pid != first.pid and r)
    assert resource.spec.pid != first.pid
    lab.wait_heartbeats("rec", before.result.heartbeats + 3)
    assert time.monotonic() - began < 10  # well inside the 15 s lease: nothing was waited out
    joined = [e for e in lab.events("worker_joined") if "took over" in e.detail]
    assert joined and f"pid {first.pid}" in joined[-1].detail


# ---- fences survive remove and re-assign ----

SLOW_EXIT = RECORDER.replace(
    'def st_exit(ctx, reason):\n',
    'def st_exit(ctx, reason):\n    ctx.state["old"] = True\n    time.sleep(0.5)\n',
)


def test_remove_then_assign_again_starts_clean_and_the_old_child_lands_nothing(lab: Lab) -> None:
    lab.director()
    lab.worker("w1")
    file = lab.strategy("rec", SLOW_EXIT)
    lab.assign(file, "--interval", "0.05")
    lab.wait_heartbeats("rec", 5)
    old_pid = lab.work("rec").result.pid
    lab.run("strategy", "remove", "rec")
    lab.assign(file, "--interval", "0.05")  # same id, same worker, while the old child runs st_exit
    new = wait_for(lambda: (w := lab.store.find_work("rec")) and w.result.pid not in (None, old_pid) and w.result.heartbeats >= 5 and w)
    wait_for(lambda: not pid_alive(old_pid or 0), what="the old child to end")
    state = lab.state("rec")
    assert "old" not in state  # the old child's last state write was refused
    new_beats = [b for b in beats(lab, "rec") if b.pid == new.result.pid and b.kind == "beat"]
    assert new_beats[0].value == "1"  # started from empty state
    lab.wait_heartbeats("rec", new.result.heartbeats + 5)
    work = lab.work("rec")
    assert work.result.status == "running" and work.desired == "running"


# ---- a paused director is replaced ----


def test_a_paused_leader_is_replaced_and_steps_down_without_a_write(lab: Lab) -> None:
    first = lab.director("--lease-ttl", "1")
    wait_for(lambda: (leader := lab.store.find_leader()) is not None and leader.pid == first.pid, what="a leader")
    old_term = lab.store.find_leader().epoch  # type: ignore[union-attr]
    lab.director("--lease-ttl", "1")
    lab.worker("w1")
    os.kill(first.pid, signal.SIGSTOP)
    paused_at = time.monotonic()
    try:
        new = wait_for(lambda: (leader := lab.store.find_leader()) is not None and leader.pid != first.pid and leader,
                       timeout=5, what="the standby to lead")
        assert time.monotonic() - paused_at < 1.2 + 1.0  # a lease plus its margin, plus a tick or two
        file = lab.strategy("rec", RECORDER)
        lab.assign(file, "--interval", "0.1")
        placed = lab.wait_heartbeats("rec", 2)
        assert placed.leader_epoch == new.epoch > old_term
        before = {w.id: w for w in lab.store.list_works()}
    finally:
        os.kill(first.pid, signal.SIGCONT)
    wait_for(lambda: any(d.pid == first.pid and d.role == "standby" for d in lab.store.list_directors()),
             what="the old leader to stand by")
    assert all(w.leader_epoch != old_term for w in lab.store.list_works())
    after = lab.work("rec")
    assert after.assignment == before["rec"].assignment and after.leader_epoch == new.epoch
    leader = lab.store.find_leader()
    assert leader is not None and leader.pid != first.pid


# ---- a paused worker: its strategies move, and after it resumes nothing of it sticks ----

STRATEGIES = 4
TRIALS = 20
LEASE = 1.0


def _running_on(lab: Lab, worker_id: str, ids: list[str], since: float) -> bool:
    """Every strategy is assigned to ``worker_id`` and has heartbeated there after ``since`` (wall time)."""
    for work_id in ids:
        work = lab.store.find_work(work_id)
        if work is None or work.assignment is None or work.assignment.worker != worker_id:
            return False
        if not any(b.kind == "beat" and b.pid == work.result.pid and b.ts > since for b in beats(lab, work_id)):
            return False
    return True


def _inside_a_write(lab: Lab, pid: int, deadline: float) -> bool:
    """Stop ``pid`` while it holds a half-made record (its temporary file exists): True if caught."""
    folders = [p for p in (lab.home / "store" / "state").iterdir()] + [p for p in (lab.home / "store" / "works").iterdir()]
    prefix = f".tmp-{pid}-"
    while time.monotonic() < deadline:
        for folder in folders:
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                continue
            if any(n.startswith(prefix) for n in names):
                os.kill(pid, signal.SIGSTOP)
                if any(n.startswith(prefix) for n in os.listdir(folder)):
                    return True  # stopped with the write half done
                return False
    os.kill(pid, signal.SIGSTOP)
    return False


@pytest.mark.timeout(240)
def test_a_worker_paused_at_random_moments_never_runs_a_moved_strategy(lab: Lab) -> None:
    caught_in_write = pause_workers_at_random_moments(lab, TRIALS, in_writes=_inside_a_write)
    assert caught_in_write >= 1, "no trial stopped the worker inside a write"


def pause_workers_at_random_moments(lab: Lab, trials: int, in_writes: Callable[[Lab, int, float], bool] | None = None) -> int:
    """Two workers; the strategies' holder is paused past its lease ``trials`` times, every other
    time inside a write where ``in_writes`` can catch one: the strategies move, an assign is never
    blocked, and once resumed the worker runs nothing stale. How many pauses caught a write."""
    rng = random.Random(7)
    lab.director()
    opts = ("--lease-ttl", str(LEASE), "--stop-timeout", "0.5")
    workers = {"w1": lab.worker("w1", *opts), "w2": lab.worker("w2", *opts)}
    file = lab.strategy("rec", RECORDER)
    ids = [f"rec{i}" for i in range(STRATEGIES)]
    for work_id in ids:
        lab.assign(file, "--id", work_id, "--interval", "0.1", "--worker", "w1")
    wait_for(lambda: _running_on(lab, "w1", ids, 0), timeout=15, what="the strategies to run on w1")
    for work_id in ids:  # unpin, so that they may move
        lab.store.update_work(work_id, _unpinned)
    holder, spare = "w1", "w2"
    caught_in_write = 0
    for trial in range(trials):
        victim = workers[holder]
        _random_moment(lab, ids, rng)
        if trial % 2 and in_writes is not None and in_writes(lab, victim.pid, time.monotonic() + 2):
            caught_in_write += 1
        elif proc_state(victim.pid) != "T":
            os.kill(victim.pid, signal.SIGSTOP)
        paused_wall, paused = time.time(), time.monotonic()
        try:
            extra = lab.strategy(f"x{trial}", RECORDER)
            lab.run("strategy", "assign", str(extra), "--interval", "1", timeout=10)  # never blocked by the paused worker
            wait_for(lambda: _running_on(lab, spare, ids, paused_wall), timeout=10,
                     what=f"trial {trial}: the strategies to run on {spare}")
            moved_after = time.monotonic() - paused
            assert moved_after < LEASE * 1.2 + 3.0, moved_after  # lease + margin + ticks and a spawn
        finally:
            os.kill(victim.pid, signal.SIGCONT)
        resumed = time.time()
        # Let the resumed worker live a few heartbeats: whatever it would do wrong, it does by then.
        first = wait_for(lambda: (r := lab.store.find_resource(holder)) is not None and r.spec.pid == victim.pid and r,
                         what=f"trial {trial}: {holder} to register again")
        wait_for(lambda: (r := lab.store.find_resource(holder)) is not None and r.state.renewals >= first.state.renewals + 3,
                 what=f"trial {trial}: {holder} to renew")
        _check_no_stale_runner(lab, ids, resumed)
        holder, spare = spare, holder
    return caught_in_write


def _random_moment(lab: Lab, ids: list[str], rng: random.Random) -> None:
    """Let a random number of heartbeats (0 to 3 per strategy) of the 10 Hz load go by."""
    target = sum(len(beats(lab, w)) for w in ids) + rng.randint(0, 3 * len(ids))
    wait_for(lambda: sum(len(beats(lab, w)) for w in ids) >= target, what="the load to go on")


def _unpinned(work: Work) -> Work:
    work.spec.placement.worker = None
    return work


def _check_no_stale_runner(lab: Lab, ids: list[str], resumed: float) -> None:
    for work_id in ids:
        current = lab.work(work_id).result.pid
        lines = beats(lab, work_id)
        late = [b for b in lines if b.pid != current and b.ts > resumed + 0.05]
        assert not late, f"{work_id}: a hook ran in a stale child after the worker resumed: {late[0].kind} {late[0].pid}"
        _check_counter(work_id, [b for b in lines if b.kind == "beat"])


def _check_counter(work_id: str, lines: list[Beat]) -> None:
    """Within a runner the counter rises by one; a new runner goes on from the last saved value.

    The old runner's last heartbeat may not have been saved when its worker froze, so the
    next runner may repeat that one value (which is why orderLinkIds come from the state),
    never fall below it.
    """
    for a, b in zip(lines, lines[1:]):
        if a.pid == b.pid:
            assert int(b.value) == int(a.value) + 1, f"{work_id}: {a.value} then {b.value} in one runner"
        else:
            assert int(b.value) >= int(a.value), f"{work_id}: the counter went back from {a.value} to {b.value}"


# ---- a full disk ----


@pytest.fixture
def small_home(tmp_path: Path):  # type: ignore[no-untyped-def]
    home = tmp_path / "tiny"
    home.mkdir(mode=0o700)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(home)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    home.chmod(0o700)  # a fresh tmpfs is 1777
    lab = Lab(home)
    try:
        yield lab
    finally:
        lab.close()
        subprocess.run(["umount", "-l", str(home)], check=False)


@pytest.mark.timeout(120)
def test_a_full_disk_fails_writes_loudly_and_replaces_nothing(small_home: Lab, tmp_path: Path) -> None:
    lab = small_home
    lab.director()
    worker = lab.worker("w1")
    file = tmp_path / "rec.py"  # off the small disk: its heartbeat log must keep working
    file.write_text(RECORDER.replace('ctx.state["n"] += 1', 'ctx.state["n"] += 1\n    ctx.state["pad"] = "x" * 2000'))
    lab.assign(file, "--interval", "0.05")
    lab.wait_heartbeats("rec", 5)
    filler = lab.home / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the disk to the last byte (unbuffered: close has nothing to flush)
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    ticked = len((tmp_path / "rec.beats").read_text().splitlines())
    wait_for(lambda: len((tmp_path / "rec.beats").read_text().splitlines()) > ticked + 20,
             what="the strategy to keep ticking on a full disk")
    assert worker.poll() is None, "the worker died of a full disk"
    work, state = lab.store.find_work("rec"), lab.state("rec")
    assert work is not None and state.get("n", 0) >= 1  # still whole, still readable
    filler.unlink()
    before = state["n"]
    wait_for(lambda: lab.state("rec").get("n", 0) > before + 3, timeout=15, what="state writes to resume")
    assert not lab.events("quarantined")
    wait_for(lambda: not list((lab.home / "store").rglob(".tmp-*")), what="no temporary file left behind")
