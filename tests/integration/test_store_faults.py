"""The store under pauses, duplicates and full disks, with real qlab processes (issue: the store)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest

from quantlab.errors import CorruptRecord
from quantlab.store.records import Leader, Resource, Work, WorkerSpec
from quantlab.store.table import Change
from tests.conftest import QLAB, Lab, lacking, pid_alive, proc_state, wait_for

T = TypeVar("T")

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
    _log(ctx, f"beat {ctx.pid} {ctx.state['n']} {time.time()}")
def st_exit(ctx, reason):
    _log(ctx, f"exit {ctx.pid} {reason.type} {time.time()}")
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
    opts = ("--lease-ttl", str(LEASE), "--drain-timeout", "0.5")
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


def _mount(*args: str) -> None:
    """mount(8) with ``args``; without it (not root) the test skips, and fails under CI=true, which has it."""
    mounted = subprocess.run(["mount", *args], capture_output=True)
    if mounted.returncode != 0:
        lacking(f"the right to mount (mount {' '.join(args)}: {mounted.stderr.decode().strip()})")


@pytest.fixture
def small_home(tmp_path: Path):  # type: ignore[no-untyped-def]
    home = tmp_path / "tiny"
    home.mkdir(mode=0o700)
    _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(home))
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


PAGE = os.sysconf("SC_PAGESIZE")  #: tmpfs hands out space a page at a time


def _leave_the_feed_less_room_than_a_line(lab: Lab) -> None:
    """Pad the newest feed segment until its last page has room for a few bytes, not a whole line."""
    segment = sorted((lab.home / "store" / "changes").glob("*.log"))[-1]
    while not 0 < PAGE - segment.stat().st_size % PAGE < 12:
        lab.store.feed.append(Change(kind="pad", key="x", version=0))  # a kind no loop acts on


def _fill_all_but_one_page(lab: Lab) -> Path:
    """Fill the disk to the last byte, then free one page: room for one small record, nothing after it."""
    filler = lab.home / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    os.truncate(filler, filler.stat().st_size - PAGE)
    return filler


@pytest.mark.timeout(120)
def test_a_full_disk_after_the_commit_is_a_warning_and_the_torn_feed_line_stops_nothing(
    small_home: Lab, tmp_path: Path
) -> None:
    """The Work commits, then the full disk cuts its feed line short: the command must succeed
    with a warning (not `Error: No space left on device`, exit 1, for a Work that exists), and the
    torn bytes must stop neither the director nor the worker once space is back (their exit would
    take the strategy's child down with them)."""
    lab = small_home
    director, worker = lab.director(), lab.worker("w1")
    files = {name: tmp_path / f"{name}.py" for name in ("rec", "rec2", "rec3")}  # off the small disk
    for path in files.values():
        path.write_text(RECORDER)
    lab.assign(files["rec"], "--interval", "0.05")
    running = lab.wait_heartbeats("rec", 3)
    daemons = (worker, director)
    for proc in daemons:
        os.kill(proc.pid, signal.SIGSTOP)  # nothing but the command writes while the disk is full
    try:
        _leave_the_feed_less_room_than_a_line(lab)
        filler = _fill_all_but_one_page(lab)
        submitted = lab.run("strategy", "assign", str(files["rec2"]), "--interval", "0.05", check=False)
        filler.unlink()
    finally:
        for proc in daemons:
            os.kill(proc.pid, signal.SIGCONT)
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.startswith("submitted rec2")
    said = submitted.stderr.splitlines()
    assert said and all(line.startswith("warning: ") for line in said), submitted.stderr
    assert any("change-feed line" in line for line in said), submitted.stderr
    lab.assign(files["rec3"], "--interval", "0.05")  # the line after the torn one
    lab.wait_heartbeats("rec2", 3)
    lab.wait_heartbeats("rec3", 3)
    lab.wait_heartbeats("rec", running.result.heartbeats + 5)
    assert director.poll() is None and worker.poll() is None
    assert lab.work("rec").result.pid == running.result.pid  # its child never went down
    skipped = lab.wait_event("feed_line_skipped")
    assert "changes/00000001.log" in skipped[0].detail


# ---- records that do not decode ----


def _unreadable(lab: Lab, kind: str, key: str) -> int:
    """Commit a version of ``kind/key`` that does not decode (retrying while its owner writes); its version."""
    table = lab.store._table(kind)
    while True:
        head = table.head(key)
        if table.commit(key, head, b"{not json"):
            return head.version + 1


def _decoded(read: Callable[[], T]) -> T | None:
    try:
        return read()
    except CorruptRecord:
        return None


def test_remove_and_stop_get_rid_of_works_that_do_not_decode(lab: Lab) -> None:
    """Not `Error: works/good version N does not decode`: the operator gets rid of the record,
    and its worker of the child it ran."""
    lab.director()
    lab.worker("w1")
    file = lab.strategy("rec", RECORDER)
    pids = {}
    for work_id in ("good", "other"):
        lab.assign(file, "--id", work_id, "--interval", "0.05")
        pids[work_id] = lab.wait_heartbeats(work_id, 3).result.pid
    for work_id in pids:
        _unreadable(lab, "works", work_id)
    removed = lab.run("strategy", "remove", "good", check=False)
    assert removed.returncode == 0 and removed.stdout.strip() == "removed good", removed.stderr
    said = removed.stderr.splitlines()
    assert len(said) == 1 and said[0].startswith("warning: strategy 'good' does not decode"), removed.stderr
    stopped = lab.run("strategy", "stop", "other", check=False)
    assert stopped.returncode == 0, stopped.stderr
    said = stopped.stderr.splitlines()
    assert len(said) == 1 and "a stop cannot be written on it, so it was removed" in said[0], stopped.stderr
    for work_id, pid in pids.items():
        wait_for(lambda: not pid_alive(pid or 0), what=f"the child of {work_id} to stop")
    assert [s["id"] for s in lab.status()["strategies"]] == []
    lab.assign(file, "--id", "good", "--interval", "0.05")  # the id is free again, above every old epoch
    lab.wait_heartbeats("good", 3)


def test_a_director_leads_over_a_leader_record_that_does_not_decode(lab: Lab) -> None:
    lab.store.update_leader(lambda current: Leader(director="gone", epoch=1, ttl=1.0))
    version = _unreadable(lab, "leases", "director")
    director = lab.director("--lease-ttl", "1")
    leader = wait_for(lambda: (found := _decoded(lab.store.find_leader)) is not None and found.pid == director.pid
                      and found, what="the director to lead")
    assert leader.epoch == version + 1  # above every term handed out before
    assert any("leases/director" in e.detail for e in lab.events("quarantined"))
    lab.worker("w1")
    lab.assign(lab.strategy("rec", RECORDER), "--interval", "0.05")
    lab.wait_heartbeats("rec", 3)
    assert director.poll() is None


def test_a_worker_takes_over_a_registration_of_its_id_that_does_not_decode(lab: Lab) -> None:
    """Not an exit at start with `Error: resources/w1 version 2 does not decode`."""
    spec = WorkerSpec(name="w1", region="JP", host="elsewhere", pid=1, instance="old", lease_ttl=1.0)
    lab.store.update_resource("w1", lambda current: Resource(id="w1", spec=spec))
    _unreadable(lab, "resources", "w1")
    lab.director()
    worker = lab.start("worker", "start", "--region", "JP", "--id", "w1", "--heartbeat", "0.2", "--lease-ttl", "1",
                       "--drain-timeout", "0.5")
    wait_for(lambda: lab._exited(worker) or ((r := _decoded(lambda: lab.store.find_resource("w1"))) is not None
                                             and r.spec.pid == worker.pid), what="the worker to register")
    lab.assign(lab.strategy("rec", RECORDER), "--interval", "0.05")
    lab.wait_heartbeats("rec", 3)
    assert worker.poll() is None


# ---- a home this user cannot write ----


class Unwritable:
    """``lab.home`` as a command sees it once ``seal()`` made it unwritable, and the command's prefix."""

    def __init__(self, how: str, lab: Lab, tmp_path: Path) -> None:
        self.how, self.lab, self.view = how, lab, tmp_path / "read-only"
        self.mounted = False
        self.prefix: list[str] = []

    def seal(self) -> Path:
        if self.how == "read-only mount":  # stops root too
            self.view.mkdir()
            _mount("--bind", str(self.lab.home), str(self.view))
            self.mounted = True
            _mount("-o", "remount,bind,ro", str(self.view))
            return self.view
        # chmod -R a-w: the commands run without root's permission overrides, as any other user would
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            lacking("setpriv (util-linux)")
        self.prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"]
        for folder, _, names in os.walk(self.lab.home):
            for path in [folder, *(os.path.join(folder, name) for name in names)]:
                with contextlib.suppress(FileNotFoundError):  # pruned meanwhile by the running worker
                    os.chmod(path, os.stat(path).st_mode & ~0o222)
        return self.lab.home

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.view)], check=False)


@pytest.fixture(params=["read-only mount", "chmod -R a-w"])
def unwritable(request: pytest.FixtureRequest, lab: Lab, tmp_path: Path) -> Iterator[Unwritable]:
    sealed = Unwritable(request.param, lab, tmp_path)
    try:
        yield sealed
    finally:
        sealed.close()


READS = [
    ("status",), ("status", "--json"), ("events",), ("events", "--json"), ("strategy", "list"),
    ("strategy", "list", "--json"), ("strategy", "logs", "rec"), ("config", "show"), ("worker", "list"),
    ("worker", "list", "--json"),
]


@pytest.mark.timeout(180)
def test_read_commands_work_on_a_home_that_cannot_be_written_and_writes_fail_in_one_line(
    lab: Lab, unwritable: Unwritable
) -> None:
    """Not `Error: Read-only file system: HOME/store` from every command, `qlab status` too."""
    lab.director()
    lab.worker("w1")
    file = lab.strategy("rec", RECORDER)
    lab.assign(file, "--interval", "0.05")
    lab.wait_heartbeats("rec", 3)
    lab.store.add_work(Work(id="broken", spec=lab.work("rec").spec))
    _unreadable(lab, "works", "broken")  # a reader that cannot record its quarantine still reads the rest
    home = unwritable.seal()

    def qlab(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*unwritable.prefix, QLAB, "--home", str(home), *args],
                              capture_output=True, text=True, timeout=30)

    for args in READS:
        done = qlab(*args)
        assert done.returncode == 0 and "Error" not in done.stderr, f"qlab {' '.join(args)}: {done.stderr}"
    status = qlab("status", "--json")
    assert "rec" in status.stdout and "w1" in status.stdout
    writes = [
        ("strategy", "assign", str(file), "--id", "new"), ("strategy", "stop", "rec"), ("strategy", "remove", "rec"),
        ("strategy", "send", "rec", "{}"), ("halt", "--all"),
        ("director", "start"), ("worker", "start", "--region", "JP", "--id", "w9"),
    ]
    for args in writes:
        done = qlab(*args)
        lines = done.stderr.splitlines()
        assert done.returncode != 0 and len(lines) == 1 and lines[0].startswith("Error: "), \
            f"qlab {' '.join(args)} ({done.returncode}): {done.stderr}"
    assert lab.work("rec").desired == "running"  # nothing was written through the home it could not write
    assert not os.stat(lab.home / "store").st_mode & 0o200 or unwritable.mounted  # no read made it writable
