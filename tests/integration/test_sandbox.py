"""A strategy in its sandbox: an attacker reaches neither the home, nor its neighbours, nor the processes that run it."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import pytest

from tests.conftest import Lab, js_missing, lacking, lacking_part, pid_alive, proc_state, wait_for

#: Each attack as "refused: why" or "DONE: what it did". Files and memory on the first
#: heartbeat, signals on the second: a stopped worker would never save what came after.
#: The memory attacks aim at the Node neighbour: an exec makes a process dumpable again,
#: while a Python child stays as the non-dumpable zygote made it.
ATTACKER = '''
import ctypes, os, signal, sys

libc = ctypes.CDLL(None, use_errno=True)

def attempt(action):
    try:
        return "DONE: " + str(action())
    except OSError as e:
        return f"refused: {e.strerror}"

def fail():
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err))

def read(path):
    with open(path, "rb") as f:
        return f"read {len(f.read())} bytes"

def append(path):
    with open(path, "a") as f:
        f.write("attacker was here\\n")
    return "wrote"

def seize(pid):
    if libc.ptrace(0x4206, pid, 0, 0) != 0:  # PTRACE_SEIZE: attached, the tracee left running
        fail()
    return "attached"

class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

def mapped(pid):
    """The start of its first readable mapping (any address when its maps cannot be read)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return next(int(line.split("-")[0], 16) for line in f if line.split()[1].startswith("r"))
    except OSError:
        return 0x10000

def vm_read(pid):
    buf = ctypes.create_string_buffer(64)
    local, remote = Iovec(ctypes.addressof(buf), 64), Iovec(mapped(pid), 64)
    if libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) < 0:
        fail()
    return "read its memory"

def proc_mem(pid):
    address = mapped(pid)
    with open(f"/proc/{pid}/mem", "rb") as f:
        f.seek(address)
        return f"read {len(f.read(64))} bytes of its memory"

def processes():
    """The machine's other processes, as /proc lists them."""
    others = [name for name in os.listdir("/proc") if name.isdigit() and int(name) != os.getpid()]
    if not others:
        raise OSError(3, "no other process to see")
    return f"saw {len(others)} other processes"

def new_namespace():
    """In a single-threaded fork of itself (a process with threads may make none)."""
    pid = os.fork()
    if pid == 0:  # CLONE_NEWUSER: every capability, inside it
        os._exit(0 if libc.unshare(0x10000000) == 0 else ctypes.get_errno())
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code:
        raise OSError(code, os.strerror(code))
    return "made a user namespace"

def st_init(ctx):
    pass

def st_heartbeat(ctx, tick):
    p = ctx.params
    if "files" not in ctx.state:
        ctx.state["files"] = {
            "read a store file": attempt(lambda: read(p["store_file"])),
            "list the store": attempt(lambda: os.listdir(p["store"])),
            "read the accounts file": attempt(lambda: read(p["accounts"])),
            "read the neighbour's log": attempt(lambda: read(p["victim_log"])),
            "write the neighbour's log": attempt(lambda: append(p["victim_log"])),
            "read the neighbour's file": attempt(lambda: read(p["victim_file"])),
            "swap the neighbour's file": attempt(lambda: append(p["victim_file"])),
            "write into the home": attempt(lambda: append(os.path.join(p["home"], "pwned"))),
            "write into the store": attempt(lambda: append(p["store_file"])),
            "ptrace a neighbour": attempt(lambda: seize(p["traced_pid"])),
            "process_vm_readv a neighbour": attempt(lambda: vm_read(p["traced_pid"])),
            "read a neighbour's /proc mem": attempt(lambda: proc_mem(p["traced_pid"])),
            "list the machine's processes": attempt(processes),
            "read the worker's command line": attempt(lambda: read(f"/proc/{p['worker_pid']}/cmdline")),
            "make a namespace of its own": attempt(new_namespace),
        }
    elif "signals" not in ctx.state:
        ctx.state["signals"] = {
            "SIGKILL the neighbour": attempt(lambda: os.kill(p["victim_pid"], signal.SIGKILL)),
            "SIGKILL the neighbour's group": attempt(lambda: os.killpg(p["victim_pid"], signal.SIGKILL)),
            "SIGSTOP the worker": attempt(lambda: os.kill(p["worker_pid"], signal.SIGSTOP)),
            "SIGKILL the director": attempt(lambda: os.kill(p["director_pid"], signal.SIGKILL)),
        }

def st_exit(ctx, reason):
    pass
'''

VICTIM = '''
def st_init(ctx):
    ctx.log.info("the victim's private line")
def st_heartbeat(ctx, tick):
    pass
def st_exit(ctx, reason):
    pass
'''

JS_NEIGHBOUR = '''
module.exports = {
  st_init(ctx) { ctx.log.info("node runs in its sandbox"); },
  st_heartbeat(ctx, tick) {},
  st_exit(ctx, reason) {},
};
'''


def landlock_abi() -> int:
    """This kernel's Landlock ABI (0: none), asked of the kernel itself, not of the code under test."""
    return max(ctypes.CDLL(None).syscall(444, None, 0, 1), 0)  # landlock_create_ruleset(VERSION)


def _in_folder(root: Path, name: str, source: str, suffix: str = ".py") -> Path:
    """A strategy in a folder of its own, outside the home: the sandbox grants that folder."""
    folder = root / name
    folder.mkdir()
    path = folder / f"{name}{suffix}"
    path.write_text(source)
    return path


@pytest.fixture(params=["root", "ordinary user"])
def attacked(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Lab, Path]:
    """A Lab whose processes run as root or as an ordinary user, and a folder for strategies outside its home."""
    if request.param == "root":
        return request.getfixturevalue("lab"), tmp_path
    lab = request.getfixturevalue("ordinary_lab")
    return lab, lab.home.parent / "strategies"


def test_an_attacker_strategy_reaches_nothing_but_its_own(attacked: tuple[Lab, Path]) -> None:
    lab, tmp_path = attacked
    accounts = lab.home / "etc" / "env.jsonl"
    accounts.parent.mkdir()
    accounts.write_text(json.dumps({"name": "live", "type": "bybit", "api_key": "k", "api_secret": "the-secret",
                                    "endpoint": "http://127.0.0.1:9"}) + "\n")
    if landlock_abi() < 6:
        lacking("Landlock with signal scoping (ABI 6)")
    lab.director()
    lab.worker("w1")
    status = lab.status()["workers"][0]
    victim_file = _in_folder(tmp_path, "victim", VICTIM)
    lab.assign(victim_file)
    victim = lab.wait_heartbeats("victim", 1)
    traced = victim
    if js_missing():
        lacking_part(f"a JavaScript runtime ({js_missing()}): Node under the sandbox is not checked")
    else:
        lab.assign(_in_folder(tmp_path, "node", JS_NEIGHBOUR, ".js"))
        traced = lab.wait_heartbeats("node", 1)
    worker_pid = status["pid"]
    director_pid = wait_for(lambda: [d.pid for d in lab.store.list_directors()], what="the director's record")[0]
    store_file = next(p for p in sorted((lab.home / "store").rglob("*")) if p.is_file())
    params = {"home": str(lab.home), "store": str(lab.home / "store"), "store_file": str(store_file),
              "accounts": str(accounts), "victim_log": str(lab.home / "logs" / "strategies" / "victim.log"),
              "victim_file": str(victim_file), "victim_pid": victim.result.pid, "traced_pid": traced.result.pid,
              "worker_pid": worker_pid, "director_pid": director_pid}
    lab.assign(_in_folder(tmp_path, "attacker", ATTACKER), "--interval", "0.2", "--params", json.dumps(params))

    def signalled() -> list[str]:
        seen = [f"{w.id} was killed, stopped or traced" for w in {victim.id: victim, traced.id: traced}.values()
                if not pid_alive(w.result.pid or 0) or proc_state(w.result.pid or 0) in ("t", "T")]
        if proc_state(worker_pid) == "T":
            seen.append("the worker was stopped")
        if not pid_alive(director_pid):
            seen.append("the director was killed")
        return seen

    def effects() -> list[str]:
        """What the attacks did to the others, seen from outside."""
        seen = signalled()
        if victim_file.read_text() != VICTIM:
            seen.append("the neighbour's file was changed")
        if (lab.home / "pwned").exists():
            seen.append("a file was written into the home")
        return seen

    wait_for(lambda: "signals" in lab.state("attacker") or signalled(), timeout=20, what="the attacker's signals")
    tried = lab.state("attacker")
    print(f"\nattacks: {json.dumps(tried, indent=1)}")
    done = [f"{attack}: {result}" for part in tried.values() for attack, result in part.items()
            if not result.startswith("refused")]
    seen = effects()
    assert (done, seen) == ([], []), "\n".join(["the attacker could:", *done, "and the others saw:", *seen])
    lab.wait_heartbeats("attacker", 3)  # the worker still serves it after the signals
    assert b"attacker was here" not in store_file.read_bytes()
    assert "the victim's private line" in lab.log("victim") and "attacker was here" not in lab.log("victim")
    if not js_missing():
        assert "node runs in its sandbox" in lab.log("node")
    lab.wait_heartbeats("victim", victim.result.heartbeats + 3)
    assert status.get("sandbox") == f"landlock-{landlock_abi()} seccomp pidns"
    assert status["sandbox"] in lab.run("status").stdout
