"""The Python side of JavaScript strategies: finding the runtime, the child's command, the wire format."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from quantlab.errors import JsRuntimeError
from quantlab.pool.records import ExitReason, TickInfo
from quantlab.protocol import (
    ApiResult,
    Error,
    Exited,
    Heartbeat,
    Hello,
    Init,
    Ready,
    Stop,
    Tick,
    TickExpired,
    decode_to_worker,
    encode,
)
from quantlab.strategy import jsruntime
from tests.unit.test_runner import RID, FakeWorker, _tick


def test_python_files_run_the_python_runner() -> None:
    assert jsruntime.child_command("/s/grid.py", "ipc:///x", b"grid#1") == []


def test_without_an_installed_runtime_the_error_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsruntime, "PACKAGE_DIR", tmp_path / "pkg")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    (tmp_path / "pkg").mkdir()
    shutil.copyfile(Path(jsruntime.__file__).parent / "js" / "package.json", tmp_path / "pkg" / "package.json")
    with pytest.raises(JsRuntimeError, match="run `qlab js install`"):
        jsruntime.runtime_dir()
    for name in ("zeromq", "@msgpack/msgpack"):  # installed under the user's data directory instead
        (tmp_path / "data" / "quantlab" / "js" / "node_modules" / name).mkdir(parents=True)
        (tmp_path / "data" / "quantlab" / "js" / "node_modules" / name / "package.json").write_text("{}")
    assert jsruntime.runtime_dir() == tmp_path / "data" / "quantlab" / "js"


def _runtime() -> Path:
    try:
        jsruntime.node()
        return jsruntime.runtime_dir()
    except JsRuntimeError as e:
        pytest.skip(f"JavaScript: {e}")


#: Decodes the worker's frames (hex in argv) to JSON, and encodes the child's messages as the runner does.
WIRE = """
import { loadRuntime } from "CHANNEL";
const { msgpack } = loadRuntime(process.argv[1]);
const decoded = process.argv.slice(2).map((hex) => msgpack.decode(Buffer.from(hex, "hex")));
const sent = [
  { type: "heartbeat", seq: 7, state: new TextEncoder().encode('{"n":1}'), hook_seconds: 0.25 },
  { type: "heartbeat", seq: 8, state: null, hook_seconds: 1 },
  { type: "error", hook: "st_init", message: "st_init: Error: x", traceback: "Error: x\\n    at st_init" },
  { type: "exited", reason: { type: "manual", message: "bye" }, state: null },
];
console.log(JSON.stringify({ decoded, sent: sent.map((m) => Buffer.from(msgpack.encode(m)).toString("hex")) }));
"""


def test_the_node_side_speaks_msgspec_tagged_structs() -> None:
    runtime = _runtime()
    to_child = [
        Tick(tick=TickInfo(seq=3, ts=1.5, interval=0.5), lease_until=123.25, halted=True),
        Init(id="g", file="/g.js", params={"k": [1, "a"]}, state={}, accounts=["paper"], log_path="/l"),
        ApiResult(call_id=2, ok=False, error="no", ret_code=110072, kind="risk"),
    ]
    script = WIRE.replace("CHANNEL", (jsruntime.PACKAGE_DIR / "channel.mjs").as_uri())
    done = subprocess.run([jsruntime.node(), "--input-type=module", "-e", script, str(runtime), *(encode(m).hex() for m in to_child)],
                          capture_output=True, text=True, timeout=30, check=True)
    out = json.loads(done.stdout)
    assert out["decoded"][0] == {"type": "tick", "tick": {"seq": 3, "ts": 1.5, "interval": 0.5, "overruns": 0},
                                 "lease_until": 123.25, "halted": True}
    assert out["decoded"][1]["params"] == {"k": [1, "a"]} and out["decoded"][1]["log_keep"] == 5
    assert out["decoded"][2]["kind"] == "risk" and out["decoded"][2]["ret_code"] == 110072
    sent = [decode_to_worker(bytes.fromhex(hex_)) for hex_ in out["sent"]]
    assert sent == [
        Heartbeat(seq=7, state=b'{"n":1}', hook_seconds=0.25),
        Heartbeat(seq=8, hook_seconds=1.0),
        Error(hook="st_init", message="st_init: Error: x", traceback="Error: x\n    at st_init"),
        Exited(reason=ExitReason(type="manual", message="bye")),
    ]


STRATEGY = """
export async function st_init(ctx) { ctx.state.n ??= 0; }
export async function st_heartbeat(ctx, tick) {
  ctx.state.n += 1;
  if (ctx.params.bad && ctx.state.n === 2) ctx.state.a = { f: undefined };
}
export async function st_exit(ctx, reason) { ctx.state.exit = reason.type; }
"""


class NodeWorker(FakeWorker):
    """test_runner's in-process ROUTER, talking to a real Node runner instead of the Python one."""

    def _child(self) -> None:
        command = jsruntime.child_command("s.mjs", self.endpoint, RID)
        self.code = subprocess.run(command, timeout=30, stdin=subprocess.DEVNULL).returncode


@pytest.fixture
def node_worker(tmp_path: Path) -> Iterator[NodeWorker]:
    _runtime()
    fake = NodeWorker(tmp_path)
    yield fake
    fake.close()


def _js_init(tmp_path: Path, **params: object) -> Init:
    file = tmp_path / "s.mjs"
    file.write_text(STRATEGY)
    return Init(id="s", file=str(file), params=dict(params), state={}, accounts=[], log_path=str(tmp_path / "s.log"))


def test_node_answers_a_stop_before_init_at_once(node_worker: NodeWorker) -> None:
    assert isinstance(node_worker.recv(), Hello)
    node_worker.send(Stop(reason=ExitReason(type="reassigned", message="moved")))
    assert node_worker.recv() == Exited(reason=ExitReason(type="reassigned", message="moved"))
    node_worker.thread.join(10)
    assert node_worker.code == 0


def test_node_refuses_an_expired_tick_and_sends_state_only_when_it_changed(node_worker: NodeWorker, tmp_path: Path) -> None:
    node_worker.recv()
    node_worker.send(_js_init(tmp_path))
    assert isinstance(node_worker.recv(), Ready)
    node_worker.send(_tick(1, lease_until=time.monotonic() - 0.001))  # the worker's clock: CLOCK_MONOTONIC
    assert node_worker.recv() == TickExpired(seq=1)
    node_worker.send(_tick(2, lease_until=time.monotonic() + 60))
    beat = node_worker.recv()
    assert isinstance(beat, Heartbeat) and beat.seq == 2 and beat.state == b'{"n":1}'
    assert beat.hook_seconds is not None and 0 <= beat.hook_seconds < 5
    node_worker.send(Stop(reason=ExitReason(type="manual")))
    exited = node_worker.recv()
    assert isinstance(exited, Exited) and exited.state == b'{"n":1,"exit":"manual"}'
    node_worker.thread.join(10)
    assert node_worker.code == 0


def test_node_names_the_key_path_of_a_state_that_is_not_json(node_worker: NodeWorker, tmp_path: Path) -> None:
    node_worker.recv()
    node_worker.send(_js_init(tmp_path, bad=True))
    node_worker.recv()
    node_worker.send(_tick(1, lease_until=time.monotonic() + 60))
    assert isinstance(node_worker.recv(), Heartbeat)
    node_worker.send(_tick(2, lease_until=time.monotonic() + 60))
    error = node_worker.recv()
    assert isinstance(error, Error)
    assert error.message == "ctx.state after st_heartbeat: state['a']['f']: undefined is not JSON"
    node_worker.thread.join(10)
    assert node_worker.code == 1
