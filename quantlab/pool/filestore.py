"""FileStore: the embedded store, a directory of msgspec-JSON files.

Layout under the root::

    works/ID.json  resources/ID.json  directors/ID.json  state/ID.json
    blobs/KIND/KEY.json  events.jsonl  quarantine/  .lock  .changes  leader.lock

Every write is atomic (temp file, fsync, rename, fsync of the directory), so a
reader without the lock sees the old or the new record, never half of one.
Read-modify-write happens under one store-wide file lock. A file that does not
decode is moved to quarantine/ with an event, never a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import filelock
import msgspec

from quantlab.errors import Conflict, NotFound
from quantlab.pool.records import Director, Event, Resource, Work
from quantlab.pool.store import WorkUpdate, check_id

T = TypeVar("T", bound=msgspec.Struct)

_encode = msgspec.json.Encoder().encode


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("works", "resources", "directors", "state", "blobs", "quarantine"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        self._lock = filelock.FileLock(root / ".lock")
        self._leader = filelock.FileLock(root / "leader.lock")
        self._changes = root / ".changes"
        if not self._changes.exists():
            self._changes.touch()  # create only: touching it would wake every loop on each `qlab status`
        self._events = root / "events.jsonl"
        self._decoders: dict[type, msgspec.json.Decoder[Any]] = {}

    # ---- generic record files ----

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{check_id(kind, key)}.json"

    def _read(self, kind: str, key: str, cls: type[T]) -> T | None:
        path = self._path(kind, key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return self._decode(path, data, cls)

    def _decode(self, path: Path, data: bytes, cls: type[T]) -> T | None:
        decoder = self._decoders.get(cls)
        if decoder is None:
            decoder = self._decoders[cls] = msgspec.json.Decoder(cls)
        try:
            return decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            self._quarantine(path, str(e))
            return None

    def _quarantine(self, path: Path, why: str) -> None:
        target = self.root / "quarantine" / f"{path.parent.name}-{path.name}.{time.time_ns()}"
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, target)
            self.append_event(
                Event(ts=time.time(), kind="quarantined", detail=f"{path.parent.name}/{path.name}: {why}")
            )

    def _list(self, kind: str, cls: type[T]) -> list[T]:
        out = []
        for path in sorted((self.root / kind).glob("*.json")):
            if path.name.startswith("."):
                continue
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # removed between listing and reading
            record = self._decode(path, data, cls)
            if record is not None:
                out.append(record)
        return out

    def _write(self, kind: str, key: str, record: msgspec.Struct, notify: bool = True) -> None:
        write_atomic(self._path(kind, key), _encode(record))
        if notify:
            self._notify()

    def _delete(self, kind: str, key: str) -> bool:
        try:
            self._path(kind, key).unlink()
        except FileNotFoundError:
            return False
        self._notify()
        return True

    def _notify(self) -> None:
        os.utime(self._changes)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store-wide write lock."""
        with self._lock:
            yield

    # ---- works ----

    def add_work(self, work: Work) -> None:
        with self._lock:
            if self._path("works", work.id).exists():
                raise Conflict(f"strategy {work.id!r} already exists")
            self._write("works", work.id, work)

    def find_work(self, work_id: str) -> Work | None:
        return self._read("works", work_id, Work)

    def get_work(self, work_id: str) -> Work:
        work = self.find_work(work_id)
        if work is None:
            raise NotFound(f"no strategy {work_id!r}")
        return work

    def list_works(self) -> list[Work]:
        return self._list("works", Work)

    def update_work(self, work_id: str, update: WorkUpdate, *, notify: bool = True) -> Work:
        with self._lock:
            current = self.get_work(work_id)
            new = update(current)
            if new is None:
                return current
            self._write("works", work_id, new, notify)
            return new

    def remove_work(self, work_id: str) -> None:
        with self._lock:
            if not self._delete("works", work_id):
                raise NotFound(f"no strategy {work_id!r}")
            with contextlib.suppress(FileNotFoundError):
                self._path("state", work_id).unlink()

    # ---- resources ----

    def put_resource(self, resource: Resource) -> None:
        with self._lock:
            self._write("resources", resource.id, resource)

    def find_resource(self, worker_id: str) -> Resource | None:
        return self._read("resources", worker_id, Resource)

    def list_resources(self) -> list[Resource]:
        return self._list("resources", Resource)

    def remove_resource(self, worker_id: str) -> None:
        with self._lock:
            self._delete("resources", worker_id)

    # ---- directors ----

    def put_director(self, director: Director) -> None:
        with self._lock:
            self._write("directors", director.id, director, notify=False)

    def list_directors(self) -> list[Director]:
        return self._list("directors", Director)

    def remove_director(self, director_id: str) -> None:
        with self._lock:
            self._delete("directors", director_id)

    def try_lead(self) -> bool:
        """Take the leader lock without waiting; it is held until release or death."""
        try:
            self._leader.acquire(timeout=0)
        except filelock.Timeout:
            return False
        return True

    def release_lead(self) -> None:
        self._leader.release(force=True)

    # ---- state and blobs ----

    def load_state(self, work_id: str) -> dict[str, Any]:
        path = self._path("state", work_id)
        try:
            value = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            self._quarantine(path, str(e))
            return {}
        return value if isinstance(value, dict) else {}

    def save_state(self, work_id: str, state_json: bytes) -> None:
        write_atomic(self._path("state", work_id), state_json)

    def get_blob(self, kind: str, key: str) -> bytes | None:
        try:
            return (self.root / "blobs" / check_id("blob", kind) / f"{check_id('blob', key)}.json").read_bytes()
        except FileNotFoundError:
            return None

    def put_blob(self, kind: str, key: str, data: bytes) -> None:
        folder = self.root / "blobs" / check_id("blob", kind)
        folder.mkdir(exist_ok=True)
        write_atomic(folder / f"{check_id('blob', key)}.json", data)

    def update_blob(self, kind: str, key: str, update: Callable[[bytes | None], bytes | None]) -> bytes | None:
        with self._lock:
            current = self.get_blob(kind, key)
            new = update(current)
            if new is None:
                return current
            self.put_blob(kind, key, new)
            return new

    # ---- messages ----

    def push_message(self, work_id: str, data: Any) -> None:
        folder = self.root / "inbox" / check_id("strategy", work_id)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / f"{time.time_ns()}-{os.getpid()}.json", _encode(data))
        self._notify()

    def take_messages(self, work_id: str) -> list[Any]:
        folder = self.root / "inbox" / check_id("strategy", work_id)
        if not folder.is_dir():
            return []
        out = []
        for path in sorted(folder.glob("*.json")):
            try:
                data = path.read_bytes()
                path.unlink()  # only the worker that owns the strategy takes its messages
            except FileNotFoundError:
                continue
            with contextlib.suppress(msgspec.DecodeError):
                out.append(msgspec.json.decode(data))
        return out

    # ---- events ----

    def append_event(self, event: Event) -> None:
        # One write() of one line on an O_APPEND descriptor: concurrent appenders never interleave.
        fd = os.open(self._events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, _encode(event) + b"\n")
        finally:
            os.close(fd)

    def read_events(self, offset: int = 0) -> tuple[list[Event], int]:
        """Events from byte ``offset`` on, and the offset after the last whole line."""
        try:
            with open(self._events, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return [], 0
        end = data.rfind(b"\n") + 1
        events = []
        decoder = msgspec.json.Decoder(Event)
        for line in data[:end].splitlines():
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                events.append(decoder.decode(line))
        return events, offset + end

    def change_token(self) -> int:
        return os.stat(self._changes).st_mtime_ns

    def close(self) -> None:
        if self._leader.is_locked:
            self.release_lead()
