"""The Python side of JavaScript strategies: finding the runtime, the child's command, the wire format."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from quantlab.errors import JsRuntimeError
from quantlab.store.records import ExitReason, TickInfo
from quantlab.protocol import ApiResult, Error, Exited, Heartbeat, Init, Tick, decode_to_worker, encode
from quantlab.child import jsruntime
from tests.unit.test_runner import node_runtime


def test_python_files_run_the_python_runner() -> None:
    assert jsruntime.child_command("/s/grid.py", "ipc:///x") == []


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
    runtime = node_runtime()
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
