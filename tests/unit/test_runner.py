"""The strategy child's runner against an in-process ROUTER socket: the child's side of the protocol."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import zmq

from quantlab.errors import JsRuntimeError
from quantlab.store.records import ExitReason, TickInfo
from quantlab.protocol import (
    Error,
    Exited,
    Heartbeat,
    Hello,
    Init,
    Ready,
    Stop,
    Tick,
    TickExpired,
    ToChild,
    ToWorker,
    decode_to_worker,
    encode,
)
from quantlab.child import jsruntime
from quantlab.child.runner import run_child
from tests.conftest import lacking

TOKEN = b"0123456789abcdef"
#: The same strategy for each runner: Python, and JavaScript in the Node child.
STRATEGIES = {
    "python": ("s.py", '''
def st_init(ctx):
    ctx.state.setdefault("n", 0)
def st_heartbeat(ctx, tick):
    ctx.state["n"] += 1
    if ctx.params.get("bad") and ctx.state["n"] == 2:
        ctx.state["a"] = {(1, 2): "x"}
def st_exit(ctx, reason):
    ctx.state["exit"] = reason.type
'''),
    "node": ("s.mjs", """
export async function st_init(ctx) { ctx.state.n ??= 0; }
export async function st_heartbeat(ctx, tick) {
  ctx.state.n += 1;
  if (ctx.params.bad && ctx.state.n === 2) ctx.state.a = { f: undefined };
}
export async function st_exit(ctx, reason) { ctx.state.exit = reason.type; }
"""),
}
#: How each runner names the bad value the strategy above puts in its state.
NOT_JSON = {"python": "state['a'][(1, 2)]: key is not a string", "node": "state['a']['f']: undefined is not JSON"}


def node_runtime() -> Path:
    """The installed JavaScript runtime, or the test skips with one line saying why."""
    try:
        jsruntime.node()
        return jsruntime.runtime_dir()
    except JsRuntimeError as e:
        lacking(f"a JavaScript runtime: {e}")


class FakeWorker:
    """An in-process ROUTER socket, and a strategy child (the Python runner on a thread, or Node) on it."""

    def __init__(self, tmp_path: Path, kind: str = "python") -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.endpoint = f"ipc://{tmp_path}/ch"
        self.socket.bind(self.endpoint)
        self.kind = kind
        self.peer = b""  #: the routing id the child connected under, from its first message
        self.code: int | None = None
        self.thread = threading.Thread(target=self._child, daemon=True)
        self.thread.start()

    def _child(self) -> None:
        if self.kind == "python":
            self.code = run_child(self.endpoint, TOKEN)
            return
        command = jsruntime.child_command(STRATEGIES["node"][0], self.endpoint)
        self.code = subprocess.run(command, timeout=30, input=TOKEN).returncode  # the token on stdin, as the zygote gives it

    def send(self, msg: ToChild) -> None:
        self.socket.send_multipart([self.peer, encode(msg)])

    def recv(self) -> ToWorker:
        assert self.socket.poll(5000), "the child said nothing"
        rid, data = self.socket.recv_multipart()
        assert rid == (self.peer or rid)
        self.peer = rid
        return decode_to_worker(data)

    def close(self) -> None:
        self.thread.join(10)
        self.socket.close(linger=0)
        self.context.term()


@pytest.fixture(params=["python", "node"])
def worker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeWorker]:
    if request.param == "node":
        node_runtime()
    fake = FakeWorker(tmp_path, request.param)
    yield fake
    fake.close()


def _init(worker: FakeWorker, tmp_path: Path, **params: object) -> Init:
    name, source = STRATEGIES[worker.kind]
    file = tmp_path / name
    file.write_text(source)
    return Init(id="s", file=str(file), params=dict(params), state={}, accounts=[], log_path=str(tmp_path / "s.log"))


def _tick(seq: int, lease_until: float) -> Tick:
    return Tick(tick=TickInfo(seq=seq, ts=time.time(), interval=1.0), lease_until=lease_until)


def test_a_stop_before_init_is_answered_at_once(worker: FakeWorker) -> None:
    hello = worker.recv()
    assert isinstance(hello, Hello) and hello.token == TOKEN  # from memory (Python), from stdin (Node)
    assert len(worker.peer) > 16  # a routing id of its own, of 128 random bits: nobody can take it first
    worker.send(Stop(reason=ExitReason(type="reassigned", message="moved")))
    assert worker.recv() == Exited(reason=ExitReason(type="reassigned", message="moved"))  # and no state
    worker.thread.join(10)
    assert worker.code == 0


def test_an_expired_tick_does_not_run(worker: FakeWorker, tmp_path: Path) -> None:
    """A child that gets a tick after its lease_until does not run it, and answers TickExpired."""
    worker.recv()
    worker.send(_init(worker, tmp_path))
    assert isinstance(worker.recv(), Ready)
    worker.send(_tick(1, lease_until=time.monotonic() - 0.001))  # the worker's clock: CLOCK_MONOTONIC
    assert worker.recv() == TickExpired(seq=1)
    worker.send(_tick(2, lease_until=time.monotonic() + 60))
    beat = worker.recv()
    assert isinstance(beat, Heartbeat) and beat.seq == 2 and beat.state == b'{"n":1}'  # JSON, one tick ran
    assert beat.hook_seconds is not None and 0 <= beat.hook_seconds < 5  # st_heartbeat's own time
    worker.send(Stop(reason=ExitReason(type="manual")))
    exited = worker.recv()
    assert isinstance(exited, Exited) and exited.state == b'{"n":1,"exit":"manual"}'
    worker.thread.join(10)
    assert worker.code == 0


def test_a_state_that_is_not_json_is_an_error_naming_the_key_path(worker: FakeWorker, tmp_path: Path) -> None:
    worker.recv()
    worker.send(_init(worker, tmp_path, bad=True))
    worker.recv()
    worker.send(_tick(1, lease_until=time.monotonic() + 60))
    assert isinstance(worker.recv(), Heartbeat)
    worker.send(_tick(2, lease_until=time.monotonic() + 60))
    error = worker.recv()
    assert isinstance(error, Error)
    assert error.message == f"ctx.state after st_heartbeat: {NOT_JSON[worker.kind]}"
    worker.thread.join(10)
    assert worker.code == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": {(1, 2): "x"}}, "state['a'][(1, 2)]: key is not a string"),
        ({None: 1}, "state[None]: key is not a string"),
        ({True: 1}, "state[True]: key is not a string"),
        ({1: 1}, "state[1]: key is not a string"),
        ({"s": {1, 2}}, "state['s']: set is not JSON"),
        ({"f": float("nan")}, "state['f']: nan is not a JSON number"),
        ({"o": [object()]}, "state['o'][0]: object is not JSON"),
    ],
)
def test_what_is_not_json_is_named_by_its_path(value: object, message: str) -> None:
    from quantlab.child.jsoncheck import NotJson, to_json

    with pytest.raises(NotJson) as caught:
        to_json(value, "state")
    assert str(caught.value) == message


def test_json_passes_as_it_is() -> None:
    from quantlab.child.jsoncheck import to_json

    assert to_json({"a": [1, 2.5, "x", None, True, (3, 4)], "big": 2**70}, "state") == b'{"a":[1,2.5,"x",null,true,[3,4]],"big":1180591620717411303424}'
