"""The real `qlab` on bad and good input: one `Error:` line, a non-zero exit, nothing changed.

Every test runs the installed console script in a subprocess with a private
--home (the `lab` fixture of tests/conftest.py); no director or worker runs.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import msgspec
import pytest

from quantlab.store.records import Assignment, Event, Resource, WorkerSpec, WorkerState
from tests.conftest import QLAB, Lab, wait_for

GOOD = """
def st_init(ctx): pass
def st_heartbeat(ctx, tick): pass
def st_exit(ctx, reason): pass
"""

#: What the issue promises `qlab status --json` shows of each strategy.
STRATEGY_FIELDS = set(
    "id file worker region desired status pid heartbeats last_heartbeat restarts error_count last_error reason".split()
)

# The store's lock files change on every write attempt (a worker takes its id's lock before it
# reads its accounts file); the records must not.
_NOT_RECORDS = {".lock", ".changes"}


def store_files(lab: Lab) -> dict[str, bytes]:
    root = lab.home / "store"
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in _NOT_RECORDS and not p.name.endswith(".lock")
    }


def assert_refused(lab: Lab, *args: str, says: str) -> None:
    """The command fails with one `Error:` line that contains ``says``, and leaves the store as it was."""
    before = store_files(lab)
    result = lab.run(*args, check=False)
    assert result.returncode == 1, result
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert store_files(lab) == before


@pytest.fixture
def good(lab: Lab) -> Path:
    return lab.strategy("good", GOOD)


def put_worker(lab: Lab, worker_id: str) -> None:
    spec = WorkerSpec(name=worker_id, region="JP", host=socket.gethostname(), pid=os.getpid())
    record = Resource(id=worker_id, spec=spec, state=WorkerState(lease_expires=time.time() + 60))
    lab.store.update_resource(worker_id, lambda current: record)


def start_qlab(lab: Lab, *args: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """A long-running `qlab` whose stdout and stderr go to files a test can poll."""
    out, err = lab.home / "cmd.out", lab.home / "cmd.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen([QLAB, "--home", str(lab.home), *args], stdout=stdout, stderr=stderr)
    return proc, out, err


# ---- bad input ----


def test_missing_strategy_file(lab: Lab) -> None:
    assert_refused(lab, "strategy", "assign", str(lab.home / "nope.py"), says="strategy file not found")


def test_strategy_file_that_does_not_parse(lab: Lab) -> None:
    broken = lab.strategy("broken", "def st_init(ctx:\n")
    assert_refused(lab, "strategy", "assign", str(broken), says="syntax error")


def test_strategy_file_without_the_hooks(lab: Lab) -> None:
    hookless = lab.strategy("hookless", "def st_init(ctx): pass\n")
    assert_refused(lab, "strategy", "assign", str(hookless), says="missing hook(s) st_heartbeat, st_exit")


@pytest.mark.parametrize(
    "args, says",
    [
        (["--params", "{not json"], "--params is not a JSON object"),
        (["--params", "[1, 2]"], "--params is not a JSON object: got an array"),
        (["--param", "qty"], "--param expects k=v, got 'qty'"),
        (["--param", "=1"], "--param expects k=v, got '=1'"),
        (["--interval", "0"], "--interval must be at least 0.001, got 0"),
        (["--interval", "-1"], "--interval must be at least 0.001, got -1"),
        (["--heartbeat-timeout", "0"], "--heartbeat-timeout must be at least 0.001, got 0"),
        (["--heartbeat-timeout=-5"], "--heartbeat-timeout must be at least 0.001, got -5"),
        (["--error-window", "0"], "--error-window must be at least 0.001, got 0"),
        (["--backoff", "-1"], "--backoff must be zero or more, got -1"),
        (["--max-errors", "0"], "--max-errors must be at least 1, got 0"),
        (["--id", "../x"], "strategy id '../x' is not valid"),
        (["--worker", "ghost"], "unknown worker 'ghost': known workers: w1"),
    ],
)
def test_assign_refuses_bad_options(lab: Lab, good: Path, args: list[str], says: str) -> None:
    put_worker(lab, "w1")
    assert_refused(lab, "strategy", "assign", str(good), *args, says=says)


def test_duplicate_id(lab: Lab, good: Path) -> None:
    lab.assign(good, "--id", "twin")
    assert_refused(lab, "strategy", "assign", str(good), "--id", "twin", says="strategy 'twin' already exists")


@pytest.mark.parametrize(
    "args",
    [
        ["strategy", "stop", "ghost"],
        ["strategy", "start", "ghost"],
        ["strategy", "restart", "ghost"],
        ["strategy", "remove", "ghost"],
        ["strategy", "send", "ghost", "{}"],
        ["strategy", "logs", "ghost"],
    ],
)
def test_unknown_strategy_id(lab: Lab, good: Path, args: list[str]) -> None:
    lab.assign(good)  # a store with something in it, which must stay as it is
    assert_refused(lab, *args, says="no strategy 'ghost'")


def test_send_refuses_a_message_that_is_not_json(lab: Lab, good: Path) -> None:
    lab.assign(good)
    assert_refused(lab, "strategy", "send", "good", "{oops", says="message is not JSON")


def test_worker_stop_of_an_unknown_worker(lab: Lab) -> None:
    assert_refused(lab, "worker", "stop", "ghost", says="no worker 'ghost'")


def test_click_usage_errors_keep_their_message_and_exit_2(lab: Lab) -> None:
    result = lab.run("strategy", "assign", check=False)
    assert result.returncode == 2
    assert result.stderr.rstrip().splitlines()[-1] == "Error: Missing argument 'FILE'."
    assert "Traceback" not in result.stderr


# ---- good input ----


def test_assign_writes_a_pending_work_and_returns_at_once(lab: Lab, good: Path) -> None:
    started = time.monotonic()
    result = lab.run("strategy", "assign", str(good), "--param", "symbol=BTCUSDT", "--params", '{"qty": 1}')
    assert time.monotonic() - started < 10  # no waiting for a director that is not there
    assert result.stdout.startswith("submitted good")

    (entry,) = json.loads(lab.run("strategy", "list", "--json").stdout)
    assert (entry["id"], entry["status"], entry["desired"]) == ("good", "pending", "running")
    assert entry["params"] == {"symbol": "BTCUSDT", "qty": 1}
    assert entry["file"] == str(good.resolve())

    view = lab.status()
    assert set(view) == {"directors", "leader", "workers", "strategies", "halts"}
    (strategy,) = view["strategies"]
    assert STRATEGY_FIELDS <= set(strategy), STRATEGY_FIELDS - set(strategy)
    assert strategy["reason"] == "waiting for the director to place it"


def test_stop_start_restart_remove(lab: Lab, good: Path) -> None:
    lab.assign(good)
    assert lab.run("strategy", "stop", "good").stdout == "stopped good\n"
    assert lab.work("good").result.status == "stopped"
    lab.run("strategy", "start", "good")
    assert (lab.work("good").desired, lab.work("good").result.status) == ("running", "pending")
    lab.run("strategy", "restart", "good")
    assert lab.work("good").spec.restart_seq == 1
    lab.run("strategy", "send", "good", '{"cmd": "ping"}')
    assert lab.store.take_messages("good") == [{"cmd": "ping"}]
    lab.run("strategy", "remove", "good")
    assert json.loads(lab.run("strategy", "list", "--json").stdout) == []
    kinds = [json.loads(line)["kind"] for line in lab.run("events", "--strategy", "good", "--json").stdout.splitlines()]
    assert kinds == ["submitted", "stop_requested", "start_requested", "restart_requested", "message_sent", "removed"]


def test_human_output_is_plain_tables(lab: Lab, good: Path) -> None:
    put_worker(lab, "w1")
    lab.assign(good, "--worker", "w1", "--params", '{"note": "[bold]x[/bold]"}')
    for args in (["status"], ["strategy", "list"], ["worker", "list"]):
        out = lab.run(*args).stdout
        assert "\x1b[" not in out  # no colour when not a terminal
    assert "waiting for the director to place it" in lab.run("strategy", "list").stdout
    (worker,) = json.loads(lab.run("worker", "list", "--json").stdout)
    assert (worker["id"], worker["alive"], worker["load"]["running_strategies"]) == ("w1", True, 0)


def test_qlab_home_from_the_environment(lab: Lab, good: Path) -> None:
    env = {**os.environ, "QLAB_HOME": str(lab.home)}
    subprocess.run([QLAB, "strategy", "assign", str(good)], env=env, check=True, capture_output=True, timeout=30)
    assert lab.store.find_work("good") is not None


def test_logs_follow_prints_new_lines_and_ends_quietly_on_ctrl_c(lab: Lab, good: Path) -> None:
    lab.assign(good)
    log = lab.home / "logs" / "strategies" / "good.log"
    log.parent.mkdir(parents=True)
    log.write_text("one\ntwo\nthree\n")
    assert lab.run("strategy", "logs", "good", "-n", "2").stdout == "two\nthree\n"

    proc, out, err = start_qlab(lab, "strategy", "logs", "good", "-f", "-n", "1")
    try:
        wait_for(lambda: out.read_text() == "three\n", what="the last line")
        with open(log, "a") as f:
            f.write("four\n")
        wait_for(lambda: out.read_text() == "three\nfour\n", what="the appended line")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
    assert "Traceback" not in err.read_text()


@pytest.mark.parametrize("args", [["status", "--watch"], ["events", "--follow"]])
def test_watching_ends_quietly_on_ctrl_c(lab: Lab, good: Path, args: list[str]) -> None:
    lab.assign(good)
    proc, out, err = start_qlab(lab, *args)
    try:
        wait_for(lambda: "good" in out.read_text(), what="the first screen")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
    assert "Traceback" not in err.read_text()


# ---- numbers: checked before anything is written or started ----


def refused(lab: Lab, *args: str, says: str, env: dict[str, str] | None = None) -> None:
    """`qlab ARGS` exits 1 with the one line ``Error: SAYS``, writes nothing, and starts nothing that stays.

    A daemon that takes a bad number keeps running: the timeout is what fails the test then.
    """
    before = store_files(lab)
    result = subprocess.run([QLAB, "--home", str(lab.home), *args], capture_output=True, text=True, timeout=20,
                            env={**os.environ, **(env or {})})
    assert (result.returncode, result.stderr) == (1, f"Error: {says}\n"), result
    assert store_files(lab) == before


def leading(lab: Lab) -> bool:
    return any(d.role == "leader" for d in lab.store.list_directors())


@pytest.mark.parametrize(
    "args, says",
    [
        (["--lease-ttl", "nan"], "--lease-ttl must be at least 0.001, got nan"),
        (["--lease-ttl", "inf"], "--lease-ttl must be at least 0.001, got inf"),
        (["--lease-ttl", "1e-300"], "--lease-ttl must be at least 0.001, got 1e-300"),
        (["--heartbeat", "nan"], "--heartbeat must be at least 0.001, got nan"),
        (["--tick", "nan"], "--tick must be at least 0.001, got nan"),
        (["--log-max-mb", "nan"], "--log-max-mb must be at least 0.001, got nan"),
        (["--log-keep", "0"], "--log-keep must be at least 1, got 0"),
        (["--heartbeat", "10"], "--lease-ttl (10s) must be longer than the director's --heartbeat (10s)"),
    ],
)
def test_a_director_refuses_a_bad_number_and_the_next_one_leads(lab: Lab, args: list[str], says: str) -> None:
    # The bad lease was written as null into the Leader record, which then stopped every later director.
    refused(lab, "director", "start", *args, says=says)
    lab.director()
    wait_for(lambda: leading(lab), what="the next director to lead")


@pytest.mark.parametrize(
    "args, says",
    [
        (["--lease-ttl", "inf"], "--lease-ttl must be at least 0.001, got inf"),
        (["--heartbeat", "nan"], "--heartbeat must be at least 0.001, got nan"),
        (["--heartbeat", "1e-300"], "--heartbeat must be at least 0.001, got 1e-300"),
        (["--drain-timeout", "nan"], "--drain-timeout must be at least 0.001, got nan"),
        (["--stop-timeout", "nan"], "--stop-timeout must be at least 0.001, got nan"),
        (["--log-keep", "0"], "--log-keep must be at least 1, got 0"),
    ],
)
def test_a_worker_refuses_a_bad_number_and_the_next_one_registers(lab: Lab, args: list[str], says: str) -> None:
    refused(lab, "worker", "start", "--region", "JP", "--id", "w1", *args, says=says)
    lab.worker("w1")
    (worker,) = lab.status()["workers"]
    assert (worker["id"], worker["lease_ttl"]) == ("w1", 15.0)


def test_a_bad_number_from_the_environment_names_its_variable(lab: Lab) -> None:
    refused(lab, "director", "start", env={"QLAB_DIRECTOR_START_LEASE_TTL": "nan"},
            says="--lease-ttl (from QLAB_DIRECTOR_START_LEASE_TTL) must be at least 0.001, got nan")


def test_a_bad_number_in_the_config_file_names_the_file_and_line(lab: Lab) -> None:
    config = lab.home / "quantlab.toml"
    config.write_text("[director]\nheartbeat = 1.0\nlease_ttl = nan\n")
    refused(lab, "director", "start", says=f"{config}:3: director.lease_ttl must be at least 0.001, got nan")
    refused(lab, "status", says=f"{config}:3: director.lease_ttl must be at least 0.001, got nan")


def test_a_bad_number_in_a_worker_profile_names_the_file_and_line(lab: Lab) -> None:
    profile = lab.home / "jp.toml"
    profile.write_text('region = "JP"\nid = "w1"\nlease_ttl = inf\n')
    refused(lab, "worker", "start", "--profile", str(profile), says=f"{profile}:3: lease_ttl must be at least 0.001, got inf")


@pytest.mark.parametrize(
    "field, says",
    [
        ('"timeout": 0', "timeout must be at least 0.001, got 0"),
        ('"rate_limit": -1', "rate_limit must be positive, got -1"),
        ('"max_retries": -1', "max_retries must be zero or more, got -1"),
        ('"balances": {"USDT": -5}', "balances.USDT must be zero or more, got -5"),
        ('"max_order_notional": 0', "max_order_notional must be positive, got 0"),
    ],
)
def test_a_bad_number_in_the_accounts_file_names_the_file_and_line(lab: Lab, field: str, says: str) -> None:
    accounts = lab.home / "env.jsonl"
    accounts.write_text('{"name": "paper", "type": "paper"}\n{"name": "paper2", "type": "paper", ' + field + "}\n")
    refused(lab, "worker", "start", "--region", "JP", "--id", "w1", "--accounts", str(accounts),
            says=f"{accounts}:2: {says}")


@pytest.mark.parametrize(
    "args, says",
    [
        (["--interval", "1e-300"], "--interval must be at least 0.001, got 1e-300"),
        (["--interval", "nan"], "--interval must be at least 0.001, got nan"),
        (["--stop-timeout", "inf"], "--stop-timeout must be at least 0.001, got inf"),
        (["--param", "qty=1e999"], "--param qty must be finite, got 1e999"),
        (["--params", '{"grid": [1, 1e999]}'], "--params: every number must be finite: Number out of range - at `$[...][1]`"),
    ],
)
def test_assign_refuses_numbers_the_store_could_not_keep(lab: Lab, good: Path, args: list[str], says: str) -> None:
    refused(lab, "strategy", "assign", str(good), *args, says=says)


# ---- the daemons' options under their names, and their former names ----


def test_the_directors_heartbeat_and_its_former_name_tick(lab: Lab) -> None:
    lab.start("director", "start", "--heartbeat", "0.2")
    wait_for(lambda: leading(lab), what="a director started with --heartbeat")
    help_text = lab.run("director", "start", "--help").stdout
    assert "--heartbeat" in help_text and "--tick" not in help_text
    lab.start("director", "start", "--tick", "0.2")  # hidden, deprecated: still taken
    wait_for(lambda: len(lab.store.list_directors()) == 2, what="a standby started with --tick")
    assert "warning: --tick is deprecated: use --heartbeat" in (lab.home / "proc-1.err").read_text()


def test_the_workers_drain_timeout_and_its_former_name_stop_timeout(lab: Lab) -> None:
    lab.worker("w1", "--drain-timeout", "1")
    lab.worker("w2", "--stop-timeout", "1")
    help_text = lab.run("worker", "start", "--help").stdout
    assert "--drain-timeout" in help_text and "--stop-timeout" not in help_text


def test_the_former_keys_of_the_config_file_are_still_read(lab: Lab) -> None:
    config = lab.home / "quantlab.toml"
    config.write_text("[director]\ntick = 0.3\n\n[worker]\nstop_timeout = 4.0\n")
    shown = lab.run("config", "show").stdout
    assert f"director.heartbeat = 0.3  (file {config})" in shown
    assert f"worker.drain_timeout = 4.0  (file {config})" in shown
    assert "director.tick" not in shown and "worker.stop_timeout" not in shown


# ---- the commands an operator reaches for ----


def test_version(lab: Lab) -> None:
    from importlib.metadata import version

    result = lab.run("--version")
    assert result.stdout == f"qlab {version('quantlab')}\n"


def test_stop_start_restart_remove_take_several_ids(lab: Lab, good: Path) -> None:
    for name in ("a", "b", "c"):
        lab.assign(good, "--id", name)
    assert lab.run("strategy", "stop", "a", "b").stdout == "stopped a\nstopped b\n"
    assert [lab.work(i).result.status for i in "abc"] == ["stopped", "stopped", "pending"]
    assert lab.run("strategy", "start", "a", "b").stdout == "start requested for a\nstart requested for b\n"
    assert lab.run("strategy", "restart", "b", "c").stdout == "restart requested for b\nrestart requested for c\n"
    assert [lab.work(i).spec.restart_seq for i in "abc"] == [0, 1, 1]
    assert_refused(lab, "strategy", "stop", "a", "ghost", says="no strategy 'ghost'")  # checked before any stops
    assert lab.run("strategy", "remove", "a", "c").stdout == "removed a\nremoved c\n"
    assert [w.id for w in lab.store.list_works()] == ["b"]


def test_all_needs_yes_without_a_terminal(lab: Lab, good: Path) -> None:
    for name in ("a", "b"):
        lab.assign(good, "--id", name)
    before = store_files(lab)
    result = subprocess.run([QLAB, "--home", str(lab.home), "strategy", "stop", "--all"], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stderr) == (
        1, "Error: --all would stop 2 strategies: add --yes to do it without a terminal to confirm on\n")
    assert store_files(lab) == before
    assert lab.run("strategy", "restart", "--all", "--yes").stdout == "restart requested for a\nrestart requested for b\n"
    usage = lab.run("strategy", "stop", "a", "--all", check=False)
    assert usage.returncode == 2 and "Give strategy IDs or --all, not both." in usage.stderr
    assert lab.run("strategy", "remove", "--all", "-y").stdout == "removed a\nremoved b\n"
    assert lab.run("strategy", "stop", "--all").stdout == "no strategies\n"


def test_all_asks_on_a_terminal(lab: Lab, good: Path) -> None:
    import pty

    for name in ("a", "b"):
        lab.assign(good, "--id", name)

    def answer(reply: bytes) -> str:
        main, secondary = pty.openpty()
        proc = subprocess.Popen([QLAB, "--home", str(lab.home), "strategy", "stop", "--all"],
                                stdin=secondary, stdout=secondary, stderr=secondary)
        os.close(secondary)
        said = b""
        try:
            while b"[y/N]" not in said:
                try:
                    said += os.read(main, 1024)
                except OSError:  # it exited without asking
                    raise AssertionError(f"no question asked: {said.decode()!r}") from None
            os.write(main, reply)
            proc.wait(timeout=30)
            while True:
                try:
                    chunk = os.read(main, 1024)
                except OSError:  # the terminal's other side is closed: all was read
                    break
                if not chunk:
                    break
                said += chunk
        finally:
            proc.kill()
            os.close(main)
        return said.decode().replace("\r\n", "\n")

    said = answer(b"n\n")
    assert "Stop 2 strategies (a, b)? [y/N]: " in said and "Error: nothing done: did not stop 2 strategies" in said
    assert [lab.work(i).result.status for i in "ab"] == ["pending", "pending"]
    said = answer(b"y\n")
    assert "stopped a\nstopped b\n" in said
    assert [lab.work(i).result.status for i in "ab"] == ["stopped", "stopped"]


def test_restart_refuses_a_file_that_no_longer_loads_and_the_child_runs_on(lab: Lab) -> None:
    lab.director()
    lab.worker("w1")
    file = lab.strategy("good", GOOD)
    lab.assign(file, "--interval", "0.05")
    pid = lab.wait_status("good", "running").result.pid
    file.write_text("def st_init(ctx:\n")  # saved with a syntax error
    for args in (["good"], ["--all", "--yes"]):
        result = lab.run("strategy", "restart", *args, check=False)
        assert (result.returncode, result.stdout, result.stderr) == (
            1, "", f"Error: good not restarted, it is left as it was: {file}:1: syntax error: '(' was never closed\n")
    beats = lab.work("good").result.heartbeats
    lab.wait_heartbeats("good", beats + 10)
    work = lab.work("good")
    assert (work.result.status, work.result.pid, work.spec.restart_seq) == ("running", pid, 0)
    assert not lab.events("restart_requested")


def test_logs_of_a_strategy_on_another_host_name_that_host(lab: Lab, good: Path) -> None:
    spec = WorkerSpec(name="w2", region="JP", host="far-away", pid=1)
    lab.store.update_resource("w2", lambda current: Resource(id="w2", spec=spec,
                                                             state=WorkerState(lease_expires=time.time() + 60)))
    lab.assign(good)
    lab.store.update_work("good", lambda w: msgspec.structs.replace(
        w, epoch=1, assignment=Assignment(worker="w2", epoch=1, adopted=True)))
    for args in (["strategy", "logs", "good"], ["strategy", "logs", "good", "-f"], ["logs", "good"]):
        assert_refused(lab, *args, says="good runs on worker w2 on host far-away: its log is on that host; "
                                         "read it there with `qlab strategy logs good`")
    assert lab.run("logs").stderr == "no strategy logs on this host\n"


def test_strategy_show(lab: Lab) -> None:
    lab.director()
    lab.worker("w1")
    file = lab.strategy("good", GOOD)
    lab.assign(file, "--interval", "0.1", "--max-order-notional", "100", "--param", "symbol=BTCUSDT")
    pid = lab.wait_status("good", "running").result.pid
    lines = lab.run("strategy", "show", "good").stdout.splitlines()
    assert lines[0] == "good: running"
    fields = {line[:15].strip(): line[15:] for line in lines[1:] if line.startswith("  ") and line[2] != " "}
    assert fields["file"] == str(file)
    assert fields["worker"] == f"w1 on host {socket.gethostname()}"
    assert fields["pid"] == str(pid)
    assert fields["uptime"].endswith("s  (running since " + fields["uptime"].split("since ")[1])
    assert fields["log"] == str(lab.home / "logs" / "strategies" / "good.log")
    assert "interval=0.1" in fields["settings"] and "max_errors=5" in fields["settings"]
    assert fields["risk limits"] == "max_order_notional=100.0  max_orders_per_minute=-  max_open_orders=-"
    assert fields["params"] == "{'symbol': 'BTCUSDT'}" and fields["last error"] == "-"
    events = lines[lines.index("recent events:") + 1:]
    assert [line.split("  ")[2] for line in events][:4] == ["submitted", "assigned", "accepted", "started"]
    shown = json.loads(lab.run("strategy", "show", "good", "--json", "-n", "1").stdout)
    assert (shown["host"], shown["pid"], shown["risk_limits"]["max_order_notional"]) == (socket.gethostname(), pid, 100.0)
    assert shown["uptime"] > 0 and len(shown["events"]) == 1
    missing = lab.run("strategy", "show", "ghost", check=False)
    assert (missing.returncode, missing.stderr) == (1, "Error: no strategy 'ghost'\n")


def test_events_last_n_and_since(lab: Lab, good: Path) -> None:
    old = time.time() - 3 * 3600
    lab.store.append_event(Event(ts=old, kind="submitted", strategy="ancient"))
    for name in ("a", "b", "c"):
        lab.assign(good, "--id", name)

    def strategies(*args: str) -> list[str]:
        return [json.loads(line)["strategy"] for line in lab.run("events", "--json", *args).stdout.splitlines()]

    assert strategies() == ["ancient", "a", "b", "c"]
    assert strategies("-n", "2") == ["b", "c"]
    assert strategies("-n", "9") == ["ancient", "a", "b", "c"]
    assert strategies("--since", "1h") == ["a", "b", "c"]
    assert strategies("--since", "4h") == ["ancient", "a", "b", "c"]
    assert strategies("--since", "2h", "-n", "1", "--strategy", "a") == ["a"]
    iso = datetime.datetime.fromtimestamp(old + 60).isoformat(timespec="seconds")
    assert strategies("--since", iso) == ["a", "b", "c"]
    assert_refused(lab, "events", "--since", "yesterday", says="--since 'yesterday': give a duration such as 30s")


def test_logs_tails_every_strategy_with_its_id(lab: Lab, good: Path) -> None:
    logs = lab.home / "logs" / "strategies"
    logs.mkdir(parents=True)
    for name in ("a", "bb"):
        lab.assign(good, "--id", name)
        (logs / f"{name}.log").write_text(f"{name} one\n{name} two\n")
    assert lab.run("logs", "-n", "1").stdout == "a  | a two\nbb | bb two\n"
    assert lab.run("logs", "bb").stdout == "bb | bb one\nbb | bb two\n"
    proc, out, err = start_qlab(lab, "logs", "-f", "-n", "1")
    try:
        wait_for(lambda: out.read_text() == "a  | a two\nbb | bb two\n", what="the last lines")
        with open(logs / "bb.log", "a") as f:
            f.write("bb three\n")
        wait_for(lambda: out.read_text().endswith("\nbb | bb three\n"), what="the new line")
        lab.assign(good, "--id", "ccc")  # joins at the next look for strategies
        (logs / "ccc.log").write_text("ccc first\n")
        wait_for(lambda: "ccc | ccc first\n" in out.read_text(), what="the new strategy's line")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
    assert err.read_text() == ""
