"""The operator's operations (quantlab.control, fleet, strategylogs, workerstop) on a FileStore, fixed clock."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quantlab import control, fleet, strategylogs, workerstop
from quantlab.config import Paths
from quantlab.errors import BadInput, Conflict, NotFound, StrategyFileError
from quantlab.logs import Tails, last_lines
from quantlab.store import workmachine as wm
from quantlab.store.filestore import FileStore
from quantlab.store.records import (
    Assignment,
    Director,
    ErrorInfo,
    Load,
    Resource,
    StrategyResult,
    StrategySpec,
    WorkerSpec,
    WorkerState,
    Work,
)

NOW = 1_000.0

HOOKS = """
def st_init(ctx): pass
def st_heartbeat(ctx, tick): pass
def st_exit(ctx, reason): pass
"""


def clock() -> float:
    return NOW


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


def strategy_file(tmp_path: Path, name: str = "demo.py", source: str = HOOKS) -> Path:
    path = tmp_path / name
    path.write_text(source)
    return path


def assign(store: FileStore, file: Path, **fields: Any) -> Work:
    return control.assign(store, control.AssignRequest(file=str(file), **fields), clock=clock)


def register_worker(
    store: FileStore, worker_id: str, *, host: str = "h1", pid: int = 1, lease: float = NOW + 5
) -> None:
    spec = WorkerSpec(name=worker_id, region="JP", host=host, pid=pid, accounts=["paper"])
    state = WorkerState(status="busy", load=Load(cpu=12.5, memory=80.0, running_strategies=1), lease_expires=lease)
    store.update_resource(worker_id, lambda current: Resource(id=worker_id, spec=spec, state=state))


def kinds(store: FileStore) -> list[str]:
    return [e.kind for e in store.read_events()[0]]


def set_result(store: FileStore, work_id: str, **fields: Any) -> None:
    def update(work: Work) -> Work:
        return msgspec.structs.replace(work, result=msgspec.structs.replace(work.result, **fields))

    store.update_work(work_id, update)


def assign_placed(store: FileStore, tmp_path: Path, work_id: str = "demo", *, adopted: bool = True) -> Work:
    """A Work the director has placed on w1 at epoch 1 (and w1 took, when ``adopted``)."""
    assign(store, strategy_file(tmp_path), id=work_id)
    work = wm.apply(store, work_id, wm.place("w1", clock())).work
    if adopted:
        work = wm.apply(store, work_id, wm.adopt("w1", 1, clock())).work
    assert work is not None
    return work


def settle_on_w1(store: FileStore, outcome: wm.Outcome, **result: Any) -> None:
    """w1's child of "demo" is gone: w1 lets go of it, as its worker would."""
    wm.apply(store, "demo", wm.release("w1", 1, outcome, StrategyResult(**result), clock()))


# ---- assign ----


def test_assign_fills_every_default(store: FileStore, tmp_path: Path) -> None:
    file = strategy_file(tmp_path, "grid_bot-2.py", 'ACCOUNTS = ["paper-1"]\n' + HOOKS)

    work = assign(store, file)

    assert work.id == "grid_bot-2"  # the stem, underscores and dashes kept
    assert store.get_work("grid_bot-2") == work
    defaults = StrategySpec(file="")
    assert work.spec == msgspec.structs.replace(defaults, file=str(file.resolve()), accounts=["paper-1"])
    assert (work.desired, work.created, work.assignment) == ("running", NOW, None)
    assert (work.result.status, work.result.reason) == ("pending", control.WAITING)
    events = store.read_events()[0]
    assert [(e.kind, e.strategy, e.ts) for e in events] == [("submitted", "grid_bot-2", NOW)]


def test_assign_takes_every_option(store: FileStore, tmp_path: Path) -> None:
    register_worker(store, "w1")
    file = strategy_file(tmp_path, source='ACCOUNTS = ["paper-1"]\n' + HOOKS)

    options = dict(interval=0.5, heartbeat_timeout=5, max_errors=2, error_window=30, backoff=0, stop_timeout=3,
                   max_memory_mb=200)
    work = assign(
        store, file, id="mine", params={"qty": 0.5}, accounts=["acct-2"], region="JP", worker="w1", **options
    )

    spec = work.spec
    assert work.id == "mine"
    assert (spec.params, spec.accounts) == ({"qty": 0.5}, ["acct-2"])
    assert (spec.placement.region, spec.placement.worker) == ("JP", "w1")
    assert {name: getattr(spec, name) for name in options} == options


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"interval": 0}, "--interval must be at least 0.001, got 0"),
        ({"interval": -1.5}, "--interval must be at least 0.001, got -1.5"),
        ({"interval": float("inf")}, "--interval must be at least 0.001, got inf"),
        ({"heartbeat_timeout": 0}, "--heartbeat-timeout must be at least 0.001, got 0"),
        ({"heartbeat_timeout": float("nan")}, "--heartbeat-timeout must be at least 0.001, got nan"),
        ({"error_window": -1}, "--error-window must be at least 0.001, got -1"),
        ({"backoff": -0.1}, "--backoff must be zero or more, got -0.1"),
        ({"max_errors": 0}, "--max-errors must be at least 1, got 0"),
        ({"stop_timeout": 0}, "--stop-timeout must be at least 0.001, got 0"),
        ({"id": "a/b"}, "strategy id 'a/b' is not valid"),
        ({"worker": "ghost"}, "unknown worker 'ghost': known workers: w1, w2"),
    ],
)
def test_assign_refuses_bad_options_and_writes_nothing(
    store: FileStore, tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    register_worker(store, "w1")
    register_worker(store, "w2")
    with pytest.raises(BadInput) as caught:
        assign(store, strategy_file(tmp_path), **fields)
    assert str(caught.value).startswith(message)
    assert store.list_works() == [] and kinds(store) == []


def test_unknown_worker_when_none_is_registered(store: FileStore, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="unknown worker 'w9': known workers: none registered"):
        assign(store, strategy_file(tmp_path), worker="w9")


def test_a_stem_that_is_no_id_asks_for_one(store: FileStore, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="name it with --id"):
        assign(store, strategy_file(tmp_path, "my strategy.py"))
    assert assign(store, strategy_file(tmp_path, "my strategy.py"), id="mine").id == "mine"


@pytest.mark.parametrize(
    "source, message",
    [
        (None, "strategy file not found"),
        ("def st_init(ctx):\n  return (\n", "syntax error"),
        ("def st_init(ctx): pass\n", r"missing hook\(s\) st_heartbeat, st_exit"),
    ],
)
def test_assign_refuses_a_bad_file(store: FileStore, tmp_path: Path, source: str | None, message: str) -> None:
    file = tmp_path / "bad.py" if source is None else strategy_file(tmp_path, "bad.py", source)
    with pytest.raises(StrategyFileError, match=message):
        assign(store, file)
    assert store.list_works() == [] and kinds(store) == []


def test_a_duplicate_id_is_a_conflict_and_keeps_the_first(store: FileStore, tmp_path: Path) -> None:
    first = assign(store, strategy_file(tmp_path), params={"a": 1})
    with pytest.raises(Conflict, match="strategy 'demo' already exists"):
        assign(store, strategy_file(tmp_path, "other.py"), id="demo", params={"a": 2})
    assert store.get_work("demo") == first
    assert kinds(store) == ["submitted"]


# ---- params ----


@pytest.mark.parametrize(
    "pairs, params_json, expected",
    [
        (["s=BTCUSDT", "q=0.5", "on=true", "l=[1,2]"], None, {"s": "BTCUSDT", "q": 0.5, "on": True, "l": [1, 2]}),
        (["note=a=b", "empty="], None, {"note": "a=b", "empty": ""}),
        (["qty=2"], '{"qty": 1, "side": "buy"}', {"qty": 2, "side": "buy"}),
        ([], '{"nested": {"x": null}}', {"nested": {"x": None}}),
        (["nan=NaN", "inf=Infinity"], None, {"nan": "NaN", "inf": "Infinity"}),  # not JSON: bare words
        ([], None, {}),
    ],
)
def test_parse_params(pairs: list[str], params_json: str | None, expected: dict[str, Any]) -> None:
    assert control.parse_params(pairs, params_json) == expected


@pytest.mark.parametrize(
    "pairs, params_json, message",
    [
        (["qty"], None, "--param expects k=v, got 'qty'"),
        (["=1"], None, "--param expects k=v, got '=1'"),
        ([], "{qty: 1}", "--params is not a JSON object: "),
        ([], "[1, 2]", "--params is not a JSON object: got an array"),
        ([], "null", "--params is not a JSON object: got null"),
        ([], '{"x": NaN}', "--params is not a JSON object: "),
        # a number out of a float's range is meant as a number, which the store cannot keep: refused
        (["big=1e400"], None, "--param big must be finite, got 1e400"),
        (["small=-1e999"], None, "--param small must be finite, got -1e999"),
        ([], '{"grid": {"step": 1e999}}', "--params: every number must be finite: "),
    ],
)
def test_parse_params_refuses(pairs: list[str], params_json: str | None, message: str) -> None:
    with pytest.raises(BadInput) as caught:
        control.parse_params(pairs, params_json)
    assert str(caught.value).startswith(message)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
keys = st.text(min_size=1).filter(lambda k: "=" not in k)


@given(key=keys, value=json_values)
def test_param_round_trips_any_json_value(key: str, value: Any) -> None:
    assert control.parse_params([f"{key}={json.dumps(value)}"], None) == {key: value}


@given(key=keys, text=st.text())
def test_param_that_is_not_json_stays_the_string(key: str, text: str) -> None:
    try:
        expected = msgspec.json.decode(text.encode())
    except msgspec.DecodeError:
        expected = text
    assert control.parse_params([f"{key}={text}"], None) == {key: expected}


# ---- stop, start, restart, remove, send ----


def test_stop_an_unplaced_strategy_stops_it_at_once(store: FileStore, tmp_path: Path) -> None:
    assign(store, strategy_file(tmp_path))
    work = control.stop(store, "demo", clock=clock)
    assert (work.desired, work.result.status, work.result.reason) == ("stopped", "stopped", "stopped by operator")
    assert store.get_work("demo") == work
    assert kinds(store) == ["submitted", "stop_requested"]


def test_stop_a_placed_strategy_leaves_the_status_to_its_worker(store: FileStore, tmp_path: Path) -> None:
    assign_placed(store, tmp_path)
    set_result(store, "demo", status="running", pid=42)
    work = control.stop(store, "demo", clock=clock)
    assert (work.desired, work.result.status, work.result.pid) == ("stopped", "running", 42)
    assert work.assignment == Assignment(worker="w1", epoch=1, adopted=True)


def test_stop_a_strategy_placed_but_not_yet_taken_stops_it_at_once_and_frees_its_place(
        store: FileStore, tmp_path: Path) -> None:
    assign_placed(store, tmp_path, adopted=False)
    work = control.stop(store, "demo", clock=clock)
    assert (work.desired, work.result.status, work.assignment, work.epoch) == ("stopped", "stopped", None, 2)
    with pytest.raises(wm.Refused):  # the worker's adoption, racing the stop, lost
        wm.apply(store, "demo", wm.adopt("w1", 1, clock()))


def test_start_a_failed_strategy_with_a_fresh_count(store: FileStore, tmp_path: Path) -> None:
    assign_placed(store, tmp_path)
    settle_on_w1(store, "failed", status="failed", error_count=6, last_error=ErrorInfo(message="boom"), reason="too many")

    work = control.start(store, "demo", clock=clock)

    assert (work.desired, work.assignment) == ("running", None)
    result = work.result
    assert (result.status, result.error_count, result.reason) == ("pending", 0, control.WAITING)
    assert result.last_error == ErrorInfo(message="boom")  # kept: why it failed last time
    assert kinds(store)[-1] == "start_requested"


def test_start_a_running_strategy_changes_nothing_else(store: FileStore, tmp_path: Path) -> None:
    before = assign_placed(store, tmp_path)
    assert control.start(store, "demo", clock=clock) == before


def test_restart_bumps_restart_seq(store: FileStore, tmp_path: Path) -> None:
    assign_placed(store, tmp_path)
    set_result(store, "demo", status="running", error_count=2)
    work = control.restart(store, "demo", clock=clock)
    assert (work.spec.restart_seq, work.result.status, work.result.error_count) == (1, "running", 2)
    assert work.assignment is not None  # the worker restarts it in place

    control.stop(store, "demo", clock=clock)
    settle_on_w1(store, "stopped", status="stopping", reason="stopped by operator")
    work = control.restart(store, "demo", clock=clock)
    assert (work.spec.restart_seq, work.result.status, work.assignment) == (2, "pending", None)
    assert kinds(store)[-4:] == ["restart_requested", "stop_requested", "stopped", "restart_requested"]


def test_remove_deletes_the_work_and_its_state(store: FileStore, tmp_path: Path) -> None:
    assign(store, strategy_file(tmp_path))
    store.save_state("demo", 1, b'{"n": 3}')
    control.remove(store, "demo", clock=clock)
    record = store.load_state("demo")
    assert store.find_work("demo") is None and record is not None and record.empty
    assert kinds(store) == ["submitted", "removed"]


@pytest.mark.parametrize("operation", [control.stop, control.start, control.restart, control.remove])
def test_unknown_ids_are_not_found_and_change_nothing(store: FileStore, operation: Any) -> None:
    with pytest.raises(NotFound, match="no strategy 'ghost'"):
        operation(store, "ghost", clock=clock)
    assert kinds(store) == []


def test_send_queues_a_message_for_the_worker(store: FileStore, tmp_path: Path) -> None:
    assign(store, strategy_file(tmp_path))
    control.send(store, "demo", {"cmd": "flatten"}, clock=clock)
    assert store.take_messages("demo") == [{"cmd": "flatten"}]
    with pytest.raises(NotFound):
        control.send(store, "ghost", 1, clock=clock)


def test_log_file(store: FileStore, tmp_path: Path) -> None:
    paths = Paths(tmp_path / "home")
    with pytest.raises(NotFound, match="no strategy 'demo'"):
        strategylogs.log_file(store, paths, "demo")
    assign(store, strategy_file(tmp_path))
    assert strategylogs.log_file(store, paths, "demo") == paths.strategy_log("demo")


def test_last_lines_reads_the_tail_of_a_long_file(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_text("".join(f"line {i}\n" for i in range(5000)))
    lines, end = last_lines(path, 3)
    assert lines == ["line 4997", "line 4998", "line 4999"] and end == path.stat().st_size
    assert last_lines(path, 0)[0] == []


# ---- snapshot ----


def test_snapshot_flattens_records_by_their_field_names(store: FileStore, tmp_path: Path) -> None:
    register_worker(store, "w1")
    register_worker(store, "w2", lease=NOW - 1)
    store.put_director(Director(id="d1", host="h1", pid=7, role="leader"))
    assign(store, strategy_file(tmp_path), region="JP", params={"a": 1}, accounts=["paper"])
    placed = Assignment(worker="w1", epoch=3)
    store.update_work("demo", lambda w: msgspec.structs.replace(w, epoch=3, assignment=placed))
    set_result(store, "demo", status="running", pid=42, heartbeats=7, last_heartbeat=NOW - 0.4)

    view = fleet.snapshot(store, NOW)

    assert set(view) == {"directors", "leader", "workers", "strategies", "halts"}
    assert view["halts"] == [] and view["leader"] is None  # no director ever took the lease
    assert view["directors"][0]["role"] == "leader"
    w1, w2 = view["workers"]
    assert (w1["id"], w1["region"], w1["host"], w1["status"]) == ("w1", "JP", "h1", "busy")
    assert (w1["alive"], w2["alive"]) == (True, False)
    assert w1["load"] == {"cpu": 12.5, "memory": 80.0, "running_strategies": 1}
    for field in ("name", "pid", "last_seen", "lease_expires", "max_strategies", "accounts"):
        assert field in w1
    (s,) = view["strategies"]
    expected = dict(
        id="demo", worker="w1", epoch=3, region="JP", desired="running", status="running", pid=42, heartbeats=7,
        last_heartbeat=NOW - 0.4, restarts=0, error_count=0, last_error=None, accounts=["paper"],
        params={"a": 1}, interval=1.0,
    )
    assert {k: s[k] for k in expected} == expected
    assert s["file"] == str((tmp_path / "demo.py").resolve()) and "reason" in s
    json.dumps(view)  # JSON-able as it is


# ---- workers ----


def test_stop_worker_checks_the_worker_and_its_host(store: FileStore) -> None:
    with pytest.raises(NotFound, match="no worker 'w1'"):
        workerstop.stop_worker(store, "w1", host=socket.gethostname(), clock=clock)
    register_worker(store, "w1", host="elsewhere")
    with pytest.raises(BadInput, match="worker w1 runs on host elsewhere: stop it there"):
        workerstop.stop_worker(store, "w1", host=socket.gethostname(), clock=clock)


def test_stop_worker_sends_sigterm_to_a_local_worker(store: FileStore) -> None:
    # The marker argument makes the command line look like a quantlab process.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "quantlab-worker"])
    try:
        register_worker(store, "w1", host=socket.gethostname(), pid=proc.pid)
        assert "is stopping" in workerstop.stop_worker(store, "w1", host=socket.gethostname(), clock=clock)
        assert proc.wait(timeout=10) == -15
        assert store.find_resource("w1") is not None  # the worker unregisters itself as it exits
        assert kinds(store) == ["worker_stop_requested"]
    finally:
        proc.kill()
        proc.wait()


def test_stop_worker_never_signals_a_reused_pid(store: FileStore) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        register_worker(store, "w1", host=socket.gethostname(), pid=stranger.pid)
        assert "removed its stale record" in workerstop.stop_worker(store, "w1", host=socket.gethostname(), clock=clock)
        assert stranger.poll() is None
        assert store.find_resource("w1") is None
    finally:
        stranger.kill()
        stranger.wait()


def test_a_stale_worker_record_is_removed_only_while_it_is_the_one_looked_at(store: FileStore) -> None:
    def register(instance: str, pid: int) -> Resource:
        spec = WorkerSpec(name="w1", region="JP", host=socket.gethostname(), pid=pid, instance=instance)
        written = store.update_resource("w1", lambda current: Resource(id="w1", spec=spec, state=WorkerState()))
        assert written is not None
        return written

    stale = register("w1-old", 4001)  # what `qlab worker stop w1` looked at: pid 4001 runs no quantlab
    register("w1-new", 4002)  # w1 restarts under the same id before the removal lands
    assert workerstop.remove_stale_worker(store, stale, clock=clock) == (
        "worker w1 (pid 4001) was not running, but it restarted meanwhile: nothing removed"
    )
    current = store.find_resource("w1")
    assert current is not None and current.spec.instance == "w1-new" and kinds(store) == []
    assert "removed its stale record" in workerstop.remove_stale_worker(store, current, clock=clock)
    assert store.find_resource("w1") is None and kinds(store) == ["worker_removed"]
    assert "its record was gone already" in workerstop.remove_stale_worker(store, stale, clock=clock)


def test_a_removal_whose_state_a_newer_epoch_holds_already_succeeds(store: FileStore, tmp_path: Path) -> None:
    """The removed holder let go and the id was placed anew before the removal forgot the state."""
    assign_placed(store, tmp_path)
    store.save_state("demo", 9, b'{"n": 1}')  # the new generation's runner claimed it meanwhile
    control.remove(store, "demo", clock=clock)
    assert store.get_work("demo").desired == "removed"
    assert store.load_state("demo").epoch == 9  # type: ignore[union-attr]


# ---- `qlab logs` ----


def test_tails_prefix_each_line_with_its_id_and_follow_rotation_and_newcomers(tmp_path: Path) -> None:
    a, b, c = (tmp_path / f"{name}.log" for name in ("a", "long-id", "c"))
    a.write_text("a1\na2\na3\n")
    b.write_text("b1\n")
    out: list[str] = []
    tails = Tails(2, out.append)
    tails.join({"a": a, "long-id": b})
    assert out == ["a       | a2", "a       | a3", "long-id | b1"]
    out.clear()
    with open(a, "a") as f:
        f.write("a4\nhalf")
    a_rotated = tmp_path / "a.log.1"
    b.rename(tmp_path / "long-id.log.1")
    b.write_text("b2\n")  # the writer's new file after a rotation
    assert tails.step() and out == ["a       | a4", "long-id | b2"]
    out.clear()
    a.rename(a_rotated)
    a.write_text("a5\n")  # the half line went with the old file; the new one starts clean
    c.write_text("c1\nc2\nc3\n")
    tails.join({"a": a, "c": c})  # long-id left, c joined with its last lines
    tails.step()
    assert out == ["c       | c2", "c       | c3", "a       | a5"]
    assert not tails.step()
