"""The Store contract: one suite, run against every store (file, memory, PostgreSQL)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import msgspec
import pytest

from quantlab.errors import Conflict, CorruptRecord, NotFound, StaleWriter
from quantlab.store import vfiles
from quantlab.store.filestore import FileStore
from quantlab.store.memstore import MemoryStore
from quantlab.store.records import Assignment, Director, Leader, Resource, StrategySpec, Work, WorkerSpec
from quantlab.store.statewrites import StateWrite
from quantlab.store.store import Store
from quantlab.store.tablestore import TableStore
from tests.conftest import proc_state, wait_for

STORES = ["file", "memory", "postgres"]
SHARED = ["file", "postgres"]  #: stores that several processes share


def open_at(where: str) -> TableStore:
    """A store by its place: a postgresql:// URL or a file store's directory (fresh in each process)."""
    if where.startswith("postgresql://"):
        from quantlab.store.pgstore import PostgresStore

        return PostgresStore(where)
    return FileStore(Path(where))


def _place(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return request.getfixturevalue("pg_url") if request.param == "postgres" else str(tmp_path / "store")


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TableStore]:
    made = MemoryStore() if request.param == "memory" else open_at(_place(request, tmp_path))
    yield made
    made.close()


@pytest.fixture(params=SHARED)
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where a store shared by processes lives (each process opens its own)."""
    yield _place(request, tmp_path)


def work(work_id: str = "s", **changes: object) -> Work:
    return Work(id=work_id, spec=StrategySpec(file="/s.py"), **changes)  # type: ignore[arg-type]


def resource(worker_id: str = "w1", instance: str = "i1") -> Resource:
    return Resource(id=worker_id, spec=WorkerSpec(name=worker_id, region="JP", host="h", pid=1, instance=instance))


def bump(field: str) -> Callable[[Work], Work]:
    def update(w: Work) -> Work:
        setattr(w.result, field, getattr(w.result, field) + 1)
        return w

    return update


# ---- records ----


def test_add_get_list_update_remove(store: Store) -> None:
    store.add_work(work("a"))
    store.add_work(work("b"))
    with pytest.raises(Conflict):
        store.add_work(work("a"))
    assert [w.id for w in store.list_works()] == ["a", "b"]
    updated = store.update_work("a", lambda w: setattr(w, "desired", "stopped") or w)
    assert updated.desired == "stopped" and store.get_work("a").desired == "stopped"
    assert store.update_work("a", lambda w: None).desired == "stopped"  # None: nothing written
    store.remove_work("a")
    assert store.find_work("a") is None and [w.id for w in store.list_works()] == ["b"]
    with pytest.raises(NotFound):
        store.get_work("a")
    with pytest.raises(NotFound):
        store.update_work("a", lambda w: w)
    with pytest.raises(NotFound):
        store.remove_work("a")


def test_a_refused_update_writes_nothing(store: Store) -> None:
    store.add_work(work())

    def refuse(w: Work) -> Work:
        w.desired = "stopped"
        raise StaleWriter("not yours")

    with pytest.raises(StaleWriter):
        store.update_work("s", refuse)
    assert store.get_work("s").desired == "running"


def test_concurrent_updates_from_threads_lose_nothing(store: Store) -> None:
    store.add_work(work())
    threads = [threading.Thread(target=lambda: [store.update_work("s", bump("restarts")) for _ in range(50)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get_work("s").result.restarts == 200


def test_epochs_are_never_reused_across_remove_and_recreate(store: Store) -> None:
    store.add_work(work())
    for _ in range(3):
        store.update_work("s", lambda w: setattr(w, "epoch", w.epoch + 1) or w)
    old_epoch = store.get_work("s").epoch
    store.remove_work("s")
    again = store.add_work(work())
    assert again.epoch >= old_epoch  # the next epoch handed out (epoch + 1) is new


def test_unknown_fields_are_ignored(store: Store) -> None:
    store.add_work(work())
    store.update_work("s", lambda w: w)
    assert store.get_work("s").spec.file == "/s.py"


# ---- resources and the leader lease ----


def test_resource_compare_and_swap_and_conditional_remove(store: Store) -> None:
    store.update_resource("w1", lambda current: resource())
    assert store.find_resource("w1") is not None
    taken = store.update_resource("w1", lambda current: None if current and current.spec.instance == "i1" else resource())
    assert taken is not None and taken.spec.instance == "i1"
    assert not store.remove_resource("w1", lambda r: r.spec.instance == "someone else")
    assert store.find_resource("w1") is not None
    assert store.remove_resource("w1", lambda r: r.spec.instance == "i1")
    assert store.find_resource("w1") is None and store.list_resources() == []
    assert not store.remove_resource("w1")


def test_leader_lease_is_one_record(store: Store) -> None:
    assert store.find_leader() is None
    store.update_leader(lambda current: Leader(director="d1", epoch=1) if current is None else None)
    store.update_leader(lambda current: Leader(director="d2", epoch=1) if current is None else None)
    leader = store.find_leader()
    assert leader is not None and leader.director == "d1"


# ---- state ----


def test_state_is_fenced_by_epoch(store: Store) -> None:
    store.save_state("s", 1, b'{"n":1}')
    store.save_state("s", 2, None)  # a new owner stamps it before its first tick
    with pytest.raises(StaleWriter):
        store.save_state("s", 1, b'{"n":0}')
    record = store.load_state("s")
    assert record is not None and record.epoch == 2 and bytes(record.state) == b'{"n":1}'
    store.save_state("s", 2, b'{"n":2}')
    record = store.load_state("s")
    assert record is not None and bytes(record.state) == b'{"n":2}'


def test_a_group_of_state_writes_is_fenced_one_by_one(store: Store) -> None:
    """One durable step for many states; a newer epoch refuses only its own write."""
    store.save_state("held", 3, b'{"theirs":1}')
    store.save_state("old", 1, b'{"n":0}')
    writes = [StateWrite("new", 1, b'{"n":1}'), StateWrite("held", 2, b'{"n":2}'), StateWrite("old", 1, b'{"n":3}')]
    outcomes = store.save_states(writes)
    assert outcomes[0] is None and isinstance(outcomes[1], StaleWriter) and outcomes[2] is None
    assert [bytes(r.state) for r in map(store.load_state, ["new", "held", "old"]) if r is not None] == [
        b'{"n":1}', b'{"theirs":1}', b'{"n":3}'
    ]
    assert store.save_states([StateWrite("new", 1, b'{"n":4}')]) == [None]
    record = store.load_state("new")
    assert record is not None and record.epoch == 1 and bytes(record.state) == b'{"n":4}'


def test_a_group_write_after_another_writer_claimed_the_state_is_refused(shared: str) -> None:
    """A worker's next group commit must see a claim made by another process meanwhile."""
    ours, theirs = open_at(shared), open_at(shared)
    try:
        assert ours.save_states([StateWrite("s", 1, b'{"n":1}')]) == [None]
        theirs.save_state("s", 2, None)  # the new owner claims it before its first tick
        assert theirs.save_states([StateWrite("s", 2, b'{"n":2}')]) == [None]
        outcome = ours.save_states([StateWrite("s", 1, b'{"n":3}')])[0]
        assert isinstance(outcome, StaleWriter)
        record = ours.load_state("s")
        assert record is not None and record.epoch == 2 and bytes(record.state) == b'{"n":2}'
    finally:
        ours.close()
        theirs.close()


def test_commits_made_durable_together_on_another_thread(store: Store) -> None:
    errors: list[BaseException] = []

    def add_two() -> None:
        try:
            with store.durable_together():
                store.add_work(work("a"))
                store.add_work(work("b"))
        except BaseException as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    thread = threading.Thread(target=add_two)
    thread.start()
    thread.join(10)
    assert errors == [] and [w.id for w in store.list_works()] == ["a", "b"]


def test_remove_forgets_the_state_and_refuses_every_old_epoch(store: Store) -> None:
    store.add_work(work())
    w = store.update_work("s", lambda w: setattr(w, "epoch", 5) or w)
    store.save_state("s", w.epoch, b'{"n":9}')
    store.remove_work("s")
    with pytest.raises(StaleWriter):
        store.save_state("s", w.epoch, b'{"n":10}')  # the old child's last write
    again = store.add_work(work())
    claimed = store.save_state("s", again.epoch + 1, None)
    assert claimed.empty


# ---- records that do not decode: quarantined, and replaced only by a write that names them ----


def _corrupt(store: TableStore, kind: str, key: str) -> int:
    """Commit a version of ``kind/key`` that does not decode; its version."""
    table = store._table(kind)
    head = table.head(key)
    assert table.commit(key, head, b"{not json")
    return head.version + 1


def test_a_work_that_does_not_decode_is_discarded_and_its_epochs_stay_fenced(store: TableStore) -> None:
    store.add_work(work("good"))
    store.add_work(work("bad"))
    held = store.update_work("bad", lambda w: setattr(w, "epoch", w.epoch + 7) or w)
    store.save_state("bad", held.epoch, b'{"n":1}')
    _corrupt(store, "works", "bad")
    with pytest.raises(CorruptRecord):
        store.remove_work("bad")
    assert not store.discard_work("good")  # it decodes: the Work machine removes it
    assert store.get_work("good").id == "good"
    assert store.discard_work("bad")
    assert store.find_work("bad") is None and [w.id for w in store.list_works()] == ["good"]
    with pytest.raises(StaleWriter):
        store.save_state("bad", held.epoch, b'{"n":2}')  # the old child's late write
    with pytest.raises(NotFound):
        store.discard_work("bad")
    with pytest.raises(NotFound):
        store.discard_work("never")
    again = store.add_work(work("bad"))
    assert again.epoch > held.epoch  # a re-created Work starts above every epoch it could have had
    assert store.save_state("bad", again.epoch + 1, None).empty


def test_a_leader_record_that_does_not_decode_is_replaced_only_over_its_version(store: TableStore) -> None:
    store.update_leader(lambda current: Leader(director="d1", epoch=1))
    version = _corrupt(store, "leases", "director")
    with pytest.raises(CorruptRecord) as caught:
        store.find_leader()
    assert caught.value.version == version
    claim = lambda current: Leader(director="d2", epoch=version + 1) if current is None else None  # noqa: E731
    with pytest.raises(CorruptRecord):
        store.update_leader(claim)
    with pytest.raises(CorruptRecord):
        store.update_leader(claim, over_corrupt=version + 1)  # not the version that does not decode
    assert store.update_leader(claim, over_corrupt=version) == Leader(director="d2", epoch=version + 1)
    assert store.find_leader() == Leader(director="d2", epoch=version + 1)
    assert [e.kind for e in store.read_events()[0]] == ["quarantined"]


def test_a_registration_that_does_not_decode_is_replaced_only_over_its_version(store: TableStore) -> None:
    store.update_resource("w1", lambda current: resource())
    version = _corrupt(store, "resources", "w1")
    assert store.list_resources() == []
    with pytest.raises(CorruptRecord):
        store.update_resource("w1", lambda current: resource(instance="i2"))
    taken = store.update_resource("w1", lambda current: resource(instance="i2") if current is None else None,
                                  over_corrupt=version)
    assert taken is not None and taken.spec.instance == "i2"
    found = store.find_resource("w1")
    assert found is not None and found.spec.instance == "i2"


def test_a_director_record_that_does_not_decode_is_written_over_by_its_director(store: TableStore) -> None:
    store.put_director(Director(id="d1", host="h", pid=1))
    _corrupt(store, "directors", "d1")
    assert store.list_directors() == []
    store.put_director(Director(id="d1", host="h", pid=2, last_seen=5.0))  # its one writer, writing it whole
    assert [(d.id, d.pid) for d in store.list_directors()] == [("d1", 2)]


# ---- the change feed ----


def test_the_feed_names_control_changes_not_heartbeat_counts(store: Store) -> None:
    cursor = store.changes_end()
    store.add_work(work())
    store.update_work("s", lambda w: setattr(w, "assignment", Assignment(worker="w1", epoch=1)) or w)
    store.update_work("s", bump("heartbeats"))  # a worker's routine report: wakes nobody
    changes, cursor, lost = store.changes(cursor)
    assert not lost
    assert [(c.kind, c.key, c.worker) for c in changes] == [("works", "s", ""), ("works", "s", "w1")]
    assert store.changes(cursor)[0] == []


# ---- file store only: processes, pauses, disks ----


@pytest.fixture
def files(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


def _hammer(place: str, n: int) -> None:
    s = open_at(place)
    for _ in range(n):
        s.update_work("s", bump("restarts"))


def test_concurrent_updates_from_processes_lose_nothing(shared: str) -> None:
    store = open_at(shared)
    store.add_work(work())
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(shared, 40)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert store.get_work("s").result.restarts == 160
    store.close()


def _stop_inside(place: str, where: str) -> None:
    """Update the Work, stopping ourselves (SIGSTOP) at ``where`` in the middle of the commit."""
    s = open_at(place)
    stops = [where]

    def stop_once(at: str) -> None:
        if at in stops:  # the first time only: the retry after losing the race goes through
            stops.remove(at)
            os.kill(os.getpid(), signal.SIGSTOP)

    real = vfiles.write_durable

    def write_then_stop(path: Path, data: bytes, **options: bool) -> None:
        real(path, data, **options)
        stop_once("after-tmp")

    vfiles.write_durable = write_then_stop  # type: ignore[assignment]
    commit = s._commit

    def commit_then_stop(*args: Any) -> bool:
        won = commit(*args)  # PostgreSQL: the statement has committed; the client stops before going on
        stop_once("after-commit")
        return won

    s._commit = commit_then_stop  # type: ignore[method-assign]

    def update(w: Work) -> Work:
        stop_once("after-read")
        w.result.restarts += 1000
        return w

    s.update_work("s", update)


# Where a writer stops: after reading the record; the file store after writing its temporary file
# (before the link); after the commit returned (PostgreSQL: the statement has committed, so the
# server holds nothing for the stopped client; it has no open transaction).
PAUSES = [
    ("file", "after-read"), ("file", "after-tmp"), ("file", "after-commit"),
    ("postgres", "after-read"), ("postgres", "after-commit"),
]


@pytest.mark.parametrize("shared, where", PAUSES, indirect=["shared"])
def test_a_writer_stopped_mid_commit_delays_nobody_and_loses_nothing(shared: str, where: str) -> None:
    store = open_at(shared)
    store.add_work(work())
    ctx = multiprocessing.get_context("fork")
    paused = ctx.Process(target=_stop_inside, args=(shared, where))
    paused.start()
    try:
        _wait_stopped(paused.pid or 0)
        began = time.monotonic()
        for _ in range(20):
            store.update_work("s", bump("restarts"))  # nobody waits for the stopped writer
        other = open_at(shared)
        other.add_work(work("t"))
        other.close()
        assert time.monotonic() - began < 5
    finally:
        os.kill(paused.pid or 0, signal.SIGCONT)
        paused.join(30)
    assert paused.exitcode == 0
    assert store.get_work("s").result.restarts == 1020  # its update landed first or re-applied on top: none lost
    store.close()


def _wait_stopped(pid: int) -> None:
    wait_for(lambda: proc_state(pid) == "T", what="the writer to stop")


def test_a_stale_writer_cannot_commit_under_a_pruned_history(files: FileStore) -> None:
    files.add_work(work())
    table = files._table("works")
    stale = table.head("s")
    for _ in range(vfiles.KEEP + 2):
        files.update_work("s", bump("restarts"))  # prunes the version after `stale`
    assert not table.commit("s", stale, msgspec.json.encode(work()))
    assert files.get_work("s").result.restarts == vfiles.KEEP + 2


def test_a_full_disk_fails_loudly_and_keeps_the_record(files: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    files.add_work(work())
    files.save_state("s", 1, b'{"n":1}')
    real_write = os.write

    def short_then_enospc(fd: int, data: bytes) -> int:
        if len(data) > 20:
            return real_write(fd, bytes(data)[:10])  # a short write, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_enospc)
    with pytest.raises(OSError):
        files.update_work("s", bump("restarts"))
    with pytest.raises(OSError):
        files.save_state("s", 1, b'{"n":2}')
    monkeypatch.undo()
    assert files.get_work("s").result.restarts == 0
    record = files.load_state("s")
    assert record is not None and bytes(record.state) == b'{"n":1}'
    leftovers = [p for p in files.root.rglob(".tmp-*")]
    assert leftovers == []
    assert not [e for e in files.read_events()[0] if e.kind == "quarantined"]


def test_a_record_that_does_not_decode_is_reported_never_replaced(shared: str) -> None:
    files = open_at(shared)
    files.add_work(work("good"))
    files.add_work(work("bad"))
    head = files._table("works").head("bad")
    files._table("works").commit("bad", head, b"{not json")
    assert [w.id for w in files.list_works()] == ["good"]
    assert [e.detail.split(":")[0] for e in files.read_events()[0] if e.kind == "quarantined"] == ["works/bad"]
    with pytest.raises(CorruptRecord):
        files.get_work("bad")
    files.save_state("s", 1, b'{"n":1}')
    files._table("state").commit("s", files._table("state").head("s"), b'{"epoch": "x"}')
    with pytest.raises(CorruptRecord):
        files.load_state("s")


def test_a_commit_whose_feed_line_cannot_be_written_stands_with_a_warning(
    files: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durable or an error: the record committed, so the call must not fail (the feed is a hint)."""
    warnings: list[str] = []
    files.on_warning = warnings.append

    def full(change: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.feed, "append", full)
    added = files.add_work(work("s"))
    assert files.get_work("s") == added
    assert len(warnings) == 1 and "works/s version 1 is written" in warnings[0] and "No space" in warnings[0]


def test_old_flat_stores_are_migrated(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "works").mkdir(parents=True)
    (root / "state").mkdir()
    (root / "works" / "s.json").write_bytes(msgspec.json.encode(work()))
    (root / "state" / "s.json").write_bytes(b'{"n": 3}')
    store = FileStore(root)
    assert store.get_work("s").spec.file == "/s.py"
    record = store.load_state("s")
    assert record is not None and msgspec.json.decode(record.state) == {"n": 3}


def test_a_writer_slow_between_its_link_and_its_check_is_not_applied_twice(
    files: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Others commit (and prune) on top of a version before its writer checks it: still exactly once."""
    files.add_work(work())
    table = files._table("works")
    real_check = vfiles.VersionedDir._in_history
    others = {"left": 1}

    def slow_check(self: vfiles.VersionedDir, key: str, version: int, nonce: str) -> bool:
        if others["left"]:
            others["left"] = 0
            other = FileStore(files.root)
            for _ in range(vfiles.KEEP + 6):  # enough to prune the version right after ours
                other.update_work("s", bump("heartbeats"))
        return real_check(self, key, version, nonce)

    monkeypatch.setattr(vfiles.VersionedDir, "_in_history", slow_check)
    files.update_work("s", bump("restarts"))
    result = files.get_work("s").result
    assert (result.restarts, result.heartbeats) == (1, vfiles.KEEP + 6)
    assert table.head("s").version == 2 + vfiles.KEEP + 6


def test_a_durable_block_syncs_only_when_it_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch of worker messages is such a block: an empty one synced the whole filesystem anyway
    (one syncfs per API call and per heartbeat, doubling their round trips)."""
    from quantlab.store import filestore

    syncs: list[Path] = []
    monkeypatch.setattr(filestore, "sync_filesystem", syncs.append)
    store = FileStore(tmp_path / "store")
    with store.durable_together():
        store.get_blob("k", "read-only")
    assert syncs == []
    with store.durable_together():
        store.update_blob("k", "written", lambda old: b"1")
    assert syncs == [store.root]
