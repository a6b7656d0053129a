"""The store contract, on the FileStore."""

from __future__ import annotations

import threading
from pathlib import Path

import msgspec
import pytest

from quantlab.errors import BadInput, Conflict, NotFound
from quantlab.pool.filestore import FileStore
from quantlab.pool.records import Event, Resource, StrategySpec, Work, WorkerSpec


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


def new_work(work_id: str = "s1") -> Work:
    return Work(id=work_id, spec=StrategySpec(file="/tmp/s.py", params={"k": 1}))


def test_work_round_trip(store: FileStore) -> None:
    store.add_work(new_work())
    assert store.get_work("s1") == new_work()
    assert [w.id for w in store.list_works()] == ["s1"]


def test_duplicate_and_missing(store: FileStore) -> None:
    store.add_work(new_work())
    with pytest.raises(Conflict):
        store.add_work(new_work())
    with pytest.raises(NotFound):
        store.get_work("nope")
    with pytest.raises(NotFound):
        store.remove_work("nope")


def test_bad_ids_are_refused(store: FileStore) -> None:
    for bad in ("../etc", ".hidden", "a/b", ""):
        with pytest.raises(BadInput):
            store.add_work(new_work(bad))


def test_update_is_atomic_under_concurrency(store: FileStore) -> None:
    store.add_work(new_work())

    def bump(work: Work) -> Work:
        work.result.heartbeats += 1
        return work

    threads = [threading.Thread(target=lambda: [store.update_work("s1", bump) for _ in range(25)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get_work("s1").result.heartbeats == 100


def test_refused_update_writes_nothing(store: FileStore) -> None:
    store.add_work(new_work())

    def refuse(work: Work) -> Work:
        work.desired = "stopped"
        raise Conflict("no")

    with pytest.raises(Conflict):
        store.update_work("s1", refuse)
    assert store.get_work("s1").desired == "running"


def test_corrupt_file_is_quarantined_not_fatal(store: FileStore) -> None:
    store.add_work(new_work("good"))
    (store.root / "works" / "bad.json").write_text('{"id": "bad", "spec": ')
    assert [w.id for w in store.list_works()] == ["good"]
    assert list((store.root / "quarantine").iterdir())
    events, _ = store.read_events()
    assert events[-1].kind == "quarantined"


def test_unknown_fields_are_ignored(store: FileStore) -> None:
    data = msgspec.json.decode(msgspec.json.encode(new_work()))
    data["from_the_future"] = {"x": 1}
    data["version"] = 2
    (store.root / "works" / "s1.json").write_bytes(msgspec.json.encode(data))
    assert store.get_work("s1").spec.params == {"k": 1}


def test_change_token_moves_on_control_writes_only(store: FileStore) -> None:
    token = store.change_token()
    store.save_state("s1", b'{"n": 1}')
    assert store.change_token() == token
    store.add_work(new_work())
    assert store.change_token() != token


def test_state_messages_and_blobs(store: FileStore) -> None:
    assert store.load_state("s1") == {}
    store.save_state("s1", b'{"n": 1}')
    assert store.load_state("s1") == {"n": 1}
    store.push_message("s1", {"a": 1})
    store.push_message("s1", [2])
    assert store.take_messages("s1") == [{"a": 1}, [2]]
    assert store.take_messages("s1") == []
    store.update_blob("paper", "acct", lambda old: b"1" if old is None else old + b"1")
    store.update_blob("paper", "acct", lambda old: b"1" if old is None else old + b"1")
    assert store.get_blob("paper", "acct") == b"11"


def test_events_append_and_read_from_offset(store: FileStore) -> None:
    store.append_event(Event(ts=1.0, kind="a"))
    events, offset = store.read_events()
    store.append_event(Event(ts=2.0, kind="b"))
    more, _ = store.read_events(offset)
    assert [e.kind for e in events] == ["a"] and [e.kind for e in more] == ["b"]


def test_resources_and_leader_lock(store: FileStore, tmp_path: Path) -> None:
    store.put_resource(Resource(id="w1", spec=WorkerSpec(name="w1", region="JP", host="h", pid=1)))
    assert store.find_resource("w1") is not None
    store.remove_resource("w1")
    assert store.list_resources() == []
    other = FileStore(tmp_path / "store")
    assert store.try_lead()
    assert not other.try_lead()
    store.release_lead()
    assert other.try_lead()
