"""A strategy touches nothing but its ctx: its helpers never outlive it, a paused zygote freezes nobody,
and no secret of the worker is within its reach."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from quantlab.worker.zygote import Forked, ForkRequest, Zygote
from tests.conftest import ONCE, ORDINARY_UID, Lab, pid_alive, wait_for

SECRET = "bybit-secret-4f1d9a"
PASSWORD = "store-password-77c3e"
#: A killed worker's strategies are placed again within seconds.
SHORT_LEASE = ("--lease-ttl", "3", "--drain-timeout", "1")


def _helper_strategy(marker: str) -> str:
    """A strategy that starts two helpers each st_init: one in a session of its own, one by a double fork;
    it writes their marker to helpers-N.txt, and crashes on its first start."""
    return ONCE + f'''
import subprocess
def st_init(ctx):
    n = len([f for f in os.listdir(os.path.dirname(__file__)) if f.startswith("helpers-")])
    subprocess.Popen(["sleep", "{marker}{{}}1".format(n)], start_new_session=True)
    subprocess.run(["sh", "-c", "sleep {marker}{{}}2 &".format(n)])  # sh exits: its sleep is an orphan
    open(os.path.join(os.path.dirname(__file__), f"helpers-{{n}}.txt"), "w").close()
    if once("crash"):
        os._exit(3)
def st_heartbeat(ctx, tick): pass
def st_exit(ctx, reason): pass
'''


def _helpers(marker: str) -> dict[int, str]:
    """The live helpers a strategy of ``marker`` started: pid -> their ``sleep`` argument."""
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if len(cmdline) == 2 and cmdline[0] == "sleep" and cmdline[1].startswith(marker) and pid_alive(proc.pid):
            found[proc.pid] = cmdline[1]
    return found


def _only_the_running_ones(lab: Lab, marker: str, both: bool) -> bool:
    """Alive: the helpers of the start that runs now, nothing else (those of earlier starts ended with
    them). In a PID namespace of its own its double-forked helper is re-parented to the strategy, PID 1
    there, and lives as long as it; without one, it is killed as it is re-parented to the worker."""
    start = _starts(lab) - 1
    return sorted(_helpers(marker).values()) == [f"{marker}{start}1", *([f"{marker}{start}2"] if both else [])]


def _starts(lab: Lab) -> int:
    return len(list(lab.home.glob("helpers-*.txt")))


def _zygote(worker: int) -> int | None:
    for child in psutil.Process(worker).children():
        try:
            if " ".join(child.cmdline()).startswith("qlab zygote"):
                return child.pid
        except psutil.NoSuchProcess:
            continue
    return None


def test_helpers_in_a_new_session_or_double_forked_never_outlive_their_strategy_or_worker(lab: Lab) -> None:
    marker = f"{os.getpid() % 1000}.{time.monotonic_ns() % 10**6:06d}"
    lab.director()
    worker = lab.worker("w1", *SHORT_LEASE)
    both = any(layer.startswith("pidns") for layer in lab.status()["workers"][0]["sandbox"].split())
    lab.assign(lab.strategy("helpers", _helper_strategy(marker)), "--interval", "0.1", "--backoff", "0")
    wait_for(lambda: _starts(lab) >= 2 and lab.work("helpers").result.status == "running", what="the restart after the crash")
    wait_for(lambda: _only_the_running_ones(lab, marker, both), what=f"only the running start's helper (now {_helpers(marker)})")
    lab.run("strategy", "restart", "helpers")
    wait_for(lambda: _starts(lab) >= 3 and lab.work("helpers").result.status == "running", what="the restart")
    wait_for(lambda: _only_the_running_ones(lab, marker, both), what=f"only the running start's helper (now {_helpers(marker)})")
    lab.run("strategy", "stop", "helpers")
    lab.wait_status("helpers", "stopped")
    wait_for(lambda: not _helpers(marker), what="no helper alive after the stop")

    lab.run("strategy", "start", "helpers")  # then the worker dies with no goodbye: its zygote cleans up
    wait_for(lambda: _starts(lab) >= 4 and _only_the_running_ones(lab, marker, both), what="the helper of a new start")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    wait_for(lambda: not _helpers(marker), what="no helper alive after the worker was SIGKILLed")

    worker = lab.worker("w1", *SHORT_LEASE)  # then the zygote dies, and the worker with no goodbye
    wait_for(lambda: _starts(lab) >= 5 and _only_the_running_ones(lab, marker, both), timeout=15, what="the next start's helper")
    old = list(_helpers(marker))
    zygote = _zygote(worker.pid)
    assert zygote is not None
    os.kill(zygote, signal.SIGKILL)
    wait_for(lambda: (z := _zygote(worker.pid)) is not None and z != zygote, what="a new zygote")
    os.killpg(worker.pid, signal.SIGKILL)  # the new zygote with it: only the worker's next start can clean up
    worker.wait()
    again = lab.worker("w1", *SHORT_LEASE)
    wait_for(lambda: not any(pid_alive(pid) for pid in old), what="the dead worker's helpers gone")
    wait_for(lambda: _starts(lab) >= 6 and _only_the_running_ones(lab, marker, both), timeout=15, what="the next start's helper")

    again.send_signal(signal.SIGTERM)  # a clean exit leaves nothing either
    again.wait(timeout=15)
    wait_for(lambda: not _helpers(marker), what="no helper alive after the worker's clean exit")


TICKER = '''
import time
def st_init(ctx): pass
def st_heartbeat(ctx, tick):
    with open(__file__ + ".ticks", "a") as f:
        f.write(f"{time.monotonic()}\\n")
def st_exit(ctx, reason): pass
'''


def test_a_paused_zygote_delays_no_other_strategys_tick_and_is_replaced(lab: Lab) -> None:
    lab.director()
    worker = lab.worker("w1", *SHORT_LEASE)
    ticker = lab.strategy("ticker", TICKER)
    lab.assign(ticker, "--interval", "0.05")
    lab.assign(lab.strategy("victim", TICKER), "--interval", "0.5", "--backoff", "0")
    lab.wait_heartbeats("ticker", 5)
    lab.wait_status("victim", "running")
    zygote = _zygote(worker.pid)
    assert zygote is not None
    os.kill(zygote, signal.SIGSTOP)
    try:
        paused = time.monotonic()
        lab.run("strategy", "restart", "victim")
        replaced = wait_for(lambda: (z := _zygote(worker.pid)) is not None and z != zygote and z, timeout=10,
                            what="the paused zygote replaced")
        print(f"\nzygote replaced after {time.monotonic() - paused:.1f} s")
        wait_for(lambda: lab.work("victim").result.status == "running" and lab.work("victim").result.restarts >= 1,
                 timeout=10, what="the victim restarted by the new zygote")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(zygote, signal.SIGCONT)
    assert replaced != zygote
    ticks = [float(line) for line in Path(f"{ticker}.ticks").read_text().split()]
    during = [t for t in ticks if t >= paused - 1.0]
    gap = max(b - a for a, b in zip(during, during[1:]))
    print(f"largest gap between the ticker's ticks while the zygote was paused: {gap * 1000:.0f} ms")
    assert gap < 1.0
    assert not lab.events("lease_lost")
    assert (r := lab.store.find_resource("w1")) is not None and r.spec.pid == worker.pid


PROBE = '''
import ctypes, json, os, re

def readable(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        return f"<{type(e).__name__}>".encode()

def memory(pid):
    """Every readable mapping of pid's memory, as far as /proc/PID/mem lets us."""
    try:
        maps = open(f"/proc/{pid}/maps").read().splitlines()
        mem = open(f"/proc/{pid}/mem", "rb")
    except OSError as e:
        return f"<{type(e).__name__}>".encode()
    chunks = []
    with mem:
        for line in maps:
            span, perms = line.split()[:2]
            if "r" not in perms:
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                chunks.append(mem.read(min(end - start, 64 << 20)))
            except (OSError, ValueError, OverflowError):
                continue
    return b"".join(chunks)

def files(home):
    """Every file under the quantlab home, as far as it can be listed."""
    found = []
    for folder, _, names in os.walk(home):
        found += [os.path.join(folder, name) for name in names]
    return found

def signal_worker():
    try:
        os.kill(WORKER, 0)
        return "sent"
    except OSError as e:
        return type(e).__name__

def st_init(ctx):
    found = {"environ": json.dumps(dict(os.environ)).encode()}
    # As the host numbers them: in a PID namespace of its own, neither has a pid the strategy could use.
    for who, pid in (("self", os.getpid()), ("worker", WORKER), ("zygote", ZYGOTE)):
        for part in ("environ", "cmdline"):
            found[f"{who}/{part}"] = readable(f"/proc/{pid}/{part}")
        if who != "self":  # its own memory holds what it searches for
            found[f"{who}/mem"] = memory(pid)
    stored = [path for path in files(HOME) if path != os.path.abspath(__file__)]  # its own file holds SECRETS
    for path in [ACCOUNTS, *stored]:
        found[path] = readable(path)
    libc = ctypes.CDLL(None)
    status = readable("/proc/self/status").decode()
    ctx.state["probe"] = {
        "reached": sorted(k for k, v in found.items() if SECRETS[0].encode() in v or SECRETS[1].encode() in v),
        "worker_mem_read": len(found["worker/mem"]) > 100,
        "store_url": os.environ.get("QLAB_STORE"),
        "no_new_privs": re.search(r"NoNewPrivs:\\s*(\\d)", status).group(1),
        "cap_eff": re.search(r"CapEff:\\s*(\\w+)", status).group(1),
        "dumpable": libc.prctl(3, 0, 0, 0, 0),
        "names": sorted(os.environ),
        "home_files_listed": len(stored),
        "accounts_file": found[ACCOUNTS][:40].decode(errors="replace"),
        "signal_worker": signal_worker(),
    }
def st_heartbeat(ctx, tick): pass
def st_exit(ctx, reason): pass
'''


def probe(lab: Lab, accounts: Path) -> str:
    """The probe strategy, told where the home and the accounts file are and its worker's and zygote's pids
    (it could guess as much)."""
    worker = psutil.Process(lab.status()["workers"][0]["pid"])
    zygote = wait_for(lambda: [p.pid for p in worker.children() if "zygote" in " ".join(p.cmdline())],
                      what="the worker's zygote")[0]
    return (PROBE.replace("SECRETS", repr([SECRET, PASSWORD])).replace("HOME", repr(str(lab.home)))
            .replace("ACCOUNTS", repr(str(accounts))).replace("WORKER", str(worker.pid)).replace("ZYGOTE", str(zygote)))


def test_a_strategy_reaches_no_secret_of_its_worker(pg_lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the worker as root, its store URL (with a password) and an account's secret in its environment."""
    lab = pg_lab
    url = lab.store_url.replace("@", f":{PASSWORD}@", 1)
    lab.store_url = ""  # the URL only in the environment, as the systemd units give it
    monkeypatch.setenv("QLAB_STORE", url)
    accounts = lab.home / "env.jsonl"
    accounts.write_text(json.dumps({"name": "live", "type": "bybit", "api_key": "k", "api_secret_env": "QLAB_PROBE_SECRET",
                                    "endpoint": "http://127.0.0.1:9"}) + "\n")
    lab.director()
    lab.worker("w1", "--accounts", str(accounts), env={"QLAB_PROBE_SECRET": SECRET, "LC_PROBE": "kept",
                                                        "NODE_PROBE": "kept", "OTHER_PROBE": "dropped"})
    lab.assign(lab.strategy("probe", probe(lab, accounts)))
    report = wait_for(lambda: lab.state("probe").get("probe"), what="the probe")
    print(f"\nprobe: {report}")
    assert report["reached"] == []
    assert report["store_url"] is None and not report["worker_mem_read"]
    assert (report["no_new_privs"], report["cap_eff"], report["dumpable"]) == ("1", "0000000000000000", 0)
    assert {"LC_PROBE", "NODE_PROBE"} <= set(report["names"]) and "OTHER_PROBE" not in report["names"]


def test_a_strategy_of_an_ordinary_users_worker_reaches_no_secret_file_or_process(ordinary_lab: Lab) -> None:
    """The worker and its director run as an ordinary user with no capability (as a desk member's
    `qlab up` does), the strategy in a folder of its own: though it runs as that same user, it reads
    nothing of the home, the accounts file or its worker's and zygote's /proc, and cannot signal its worker."""
    lab = ordinary_lab
    accounts = lab.home / "env.jsonl"
    accounts.write_text(json.dumps({"name": "live", "type": "bybit", "api_key": "k",
                                    "api_secret_env": "QLAB_PROBE_SECRET", "endpoint": "http://127.0.0.1:9"}) + "\n")
    strategy = lab.home.parent / "strategies" / "probe.py"
    lab.director()
    lab.worker("w1", "--accounts", str(accounts), env={"QLAB_PROBE_SECRET": SECRET})
    strategy.write_text(probe(lab, accounts))
    lab.assign(strategy)
    report = wait_for(lambda: lab.state("probe").get("probe"), timeout=20, what="the probe")
    print(f"\nprobe: {report}")
    assert {psutil.Process(p.pid).uids().real for p in lab.procs} == {ORDINARY_UID}
    assert report["reached"] == [] and report["home_files_listed"] == 0, report
    assert report["accounts_file"] == "<PermissionError>" and not report["worker_mem_read"], report
    assert (report["no_new_privs"], report["cap_eff"], report["dumpable"]) == ("1", "0000000000000000", 0)
    assert report["signal_worker"] in ("PermissionError", "ProcessLookupError"), report


def test_a_fork_that_fails_in_the_zygotes_intermediate_is_answered_once_and_leaves_one_zygote(tmp_path: Path) -> None:
    """The intermediate opens the child's log and makes its namespaces: when that fails it must end,
    not go on serving the worker's socket as a second zygote, whose answers would then be doubled."""
    zygote = Zygote(pid_namespace=True)
    pids: list[int] = []
    try:
        def ask(log: Path) -> list[Forked]:
            zygote.send(ForkRequest(endpoint=f"ipc://{tmp_path}/none.sock", token=os.urandom(16), log_path=str(log)))
            return wait_for(lambda: zygote.answers(), what="the zygote's answer")

        failed = ask(tmp_path / "no-such-folder" / "child.log")
        assert len(failed) == 1 and failed[0].error and not failed[0].pid, failed
        forked = ask(tmp_path / "child.log")
        assert len(forked) == 1 and forked[0].pid and not forked[0].error, forked
        pids.append(forked[0].pid)
        zygotes = [p for p in psutil.Process().children(recursive=True)
                   if p.pid not in pids and "zygote" in " ".join(p.cmdline())]
        assert [p.pid for p in zygotes] == [zygote.proc.pid]
        assert zygote.answers() == []  # nothing more for either request
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        zygote.close()
