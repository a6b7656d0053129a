"""Running docs/operations.md: its shell blocks, in order, as an operator would on a host.

A block is a fenced ```sh block; its title (```sh title="root"```, which the site shows
above the block) says how it runs:

- (none): each command through bash (``set -euo pipefail``): all must exit 0. Exported
  variables and the working directory carry over to the next block, as in one terminal.
- ``root``: the service user's setup. ``useradd`` and ``chown`` are left out (the test has
  no user to create); ``install``'s ``-o``/``-g`` are dropped and the rest runs.
- ``systemd``: ``systemctl`` and ``journalctl`` lines, done by `Systemd` below.
- ``follow``: commands that print until Ctrl-C: each must print, then end 0 on SIGINT.
- ``postgres``: run against a scratch PostgreSQL database (a test of its own).

The guide's fixed paths and ports are replaced by temporary ones (`Guide.subs`) in every
block and in the units `Systemd` starts.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import lacking_part, wait_for

TAGS = ("", "root", "systemd", "follow", "postgres")
_FENCE = re.compile(r'^```sh(?: title="(?P<tag>[^"\n]*)")?(?P<rest>[^\n]*)\n(?P<body>.*?)^```$', re.M | re.S)
#: Variables of the shell itself, not the operator's: not carried from one block to the next.
_SHELL_OWN = {"PWD", "OLDPWD", "SHLVL", "_"}
#: What systemd gives a service besides its unit's Environment= and EnvironmentFile=.
_SERVICE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Block:
    tag: str
    body: str
    line: int  #: where it starts in the file, for messages

    def commands(self) -> list[str]:
        return [line for line in self.body.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def blocks(text: str) -> list[Block]:
    found = []
    for match in _FENCE.finditer(text):
        tag = match["tag"] or ""
        line = text.count("\n", 0, match.start()) + 1
        if tag not in TAGS or match["rest"].strip():
            raise AssertionError(f"docs/operations.md:{line}: unknown block title {tag!r}{match['rest']} (known: {TAGS})")
        found.append(Block(tag, match["body"], line))
    return found


class Guide:
    """One operator's terminal: environment and directory carried from block to block."""

    def __init__(self, tmp: Path, cwd: Path, subs: dict[str, str], env: dict[str, str]) -> None:
        self.tmp = tmp
        self.cwd = cwd
        self.subs = subs
        self.env = env

    def sub(self, text: str) -> str:
        for old, new in self.subs.items():
            text = text.replace(old, new)
        return text

    def shell(self, block: Block, body: str | None = None, timeout: float = 300) -> str:
        """Run ``body`` (the block's, substituted); its stdout. Fails with the block and what it said."""
        state = self.tmp / "shell-state"
        script = f"set -euo pipefail\n{self.sub(block.body if body is None else body)}\nenv -0 > {state}\npwd > {state}.cwd\n"
        result = subprocess.run(["bash", "-c", script], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"docs/operations.md:{block.line}: block failed ({result.returncode}):\n"
                                 f"{block.body}\nstdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}")
        pairs = (item.split("=", 1) for item in state.read_text().split("\0") if "=" in item)
        self.env = {k: v for k, v in pairs if k not in _SHELL_OWN}
        self.cwd = Path(Path(f"{state}.cwd").read_text().strip())
        return result.stdout

    def root(self, block: Block) -> None:
        kept = []
        for command in block.commands():
            words = shlex.split(command)
            if words[0] in ("useradd", "chown"):
                continue  # no service user here: everything runs as the test's user
            if words[0] == "install":
                words = _without_owner(words)
            kept.append(shlex.join(words))
        self.shell(block, "\n".join(kept))

    def follow(self, block: Block) -> None:
        for command in block.commands():
            out = self.tmp / "follow.out"
            with open(out, "wb") as sink:
                proc = subprocess.Popen(["bash", "-c", f"exec {self.sub(command)}"], cwd=self.cwd, env=self.env,
                                        stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                wait_for(lambda: proc.poll() is not None or out.read_bytes().strip(), what=f"{command!r} to print")
                assert proc.poll() is None, f"{command!r} ended by itself ({proc.returncode}): {out.read_text()}"
                os.killpg(proc.pid, signal.SIGINT)
                assert proc.wait(10) == 0, f"{command!r} ended {proc.returncode} on Ctrl-C: {out.read_text()}"
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def _without_owner(words: list[str]) -> list[str]:
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in ("-o", "-g"):
            skip = True
        else:
            out.append(word)
    return out


class Systemd:
    """What the guide's ``systemctl`` lines ask of systemd, done with the rendered units.

    A start runs the unit's ExecStart with its Environment= and EnvironmentFile= (and nothing
    else of the caller's), and returns once the process has sent READY=1 to its NOTIFY_SOCKET,
    as ``systemctl start`` of a Type=notify unit does; a stop sends SIGTERM to the main process
    (KillMode=mixed) and expects exit 0. daemon-reload runs ``systemd-analyze verify``.
    """

    def __init__(self, guide: Guide, units: Path, guide_blocks: list[Block]) -> None:
        self.guide = guide
        self.units = units
        self.blocks = guide_blocks
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def run(self, block: Block) -> None:
        for command in block.commands():
            words = shlex.split(command)
            if words[0] == "journalctl":
                self._unit_file(words[words.index("-u") + 1])  # the unit must exist; the journal is systemd's
                continue
            assert words[0] == "systemctl", f"docs/operations.md:{block.line}: not a systemd command: {command}"
            verb, names = words[1], [w for w in words[2:] if not w.startswith("-")]
            if verb == "daemon-reload":
                self.verify()
            elif verb in ("enable", "start"):
                assert verb == "start" or "--now" in words, f"{command}: enable without --now starts nothing"
                for name in names:
                    self.start(name)
            elif verb == "stop":
                for name in names:
                    self.stop(name)
            elif verb == "restart":
                for name in names:
                    self.stop(name)
                    self.start(name)
            elif verb == "status":
                for name in names:
                    assert self._alive(name), f"{name} is not running"
            else:
                raise AssertionError(f"docs/operations.md:{block.line}: systemctl {verb} is not known to this test")

    def verify(self) -> None:
        """systemd-analyze verify on every unit the guide starts (an instance of the template each)."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:  # the other checks still run: the units start and answer as systemd expects
            lacking_part("systemd-analyze (systemd), to verify the guide's units")
            return
        check = self.guide.tmp / "verify"
        check.mkdir(exist_ok=True)
        for name in self._names_in_guide():
            path = check / _service(name)
            path.write_text(self._unit_file(name).read_text())
            result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True)
            complaints = [line for line in result.stderr.splitlines() if path.name.split("@")[0].split(".")[0] in line]
            assert result.returncode == 0 and not complaints, f"{path.name}: {result.stderr}"

    def start(self, name: str) -> None:
        assert not self._alive(name), f"{name} is already running"
        unit = self._unit(name)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = self.guide.tmp / f"notify-{name}"
        path.unlink(missing_ok=True)
        notify.bind(str(path))
        notify.settimeout(0.05)
        env = {"PATH": _SERVICE_PATH, "NOTIFY_SOCKET": str(path), **unit.env}
        with open(self.guide.tmp / f"{name}.out", "ab") as log:
            proc = subprocess.Popen(shlex.split(unit.exec_start), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.running[name] = proc
        try:
            wait_for(lambda: proc.poll() is not None or _received(notify, "READY=1"), timeout=30,
                     what=f"{name} to send READY=1")
        finally:
            notify.close()  # what it sends later (STATUS, STOPPING) meets no socket, which it ignores
            path.unlink()
        assert proc.poll() is None, f"{name} exited {proc.returncode}: {self.output(name)}"

    def stop(self, name: str) -> None:
        proc = self.running.pop(name, None)
        assert proc is not None and proc.poll() is None, f"{name} is not running"
        proc.terminate()  # KillMode=mixed: SIGTERM to the main process alone
        try:
            code = proc.wait(30)  # TimeoutStopSec
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"{name} did not stop within TimeoutStopSec: {self.output(name)}")
        assert code == 0, f"{name} exited {code} on SIGTERM: {self.output(name)}"

    def output(self, name: str) -> str:
        return (self.guide.tmp / f"{name}.out").read_text()[-3000:]

    def close(self) -> None:
        for proc in self.running.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                proc.wait()

    def _alive(self, name: str) -> bool:
        proc = self.running.get(name)
        return proc is not None and proc.poll() is None

    def _names_in_guide(self) -> set[str]:
        names: set[str] = set()
        for block in self.blocks:
            for command in block.commands() if block.tag == "systemd" else []:
                words = shlex.split(command)
                if words[0] == "systemctl" and words[1] != "daemon-reload":
                    names.update(w for w in words[2:] if not w.startswith("-"))
        return names

    def _unit_file(self, name: str) -> Path:
        service = _service(name)
        template = re.sub(r"@[^.]+\.service$", "@.service", service)
        path = self.units / template
        assert path.is_file(), f"no unit {service} in {self.units}"
        return path

    def _unit(self, name: str) -> "_Unit":
        instance = name.split("@", 1)[1] if "@" in name else ""
        text = self._unit_file(name).read_text().replace("%i", instance)
        return _Unit.parse(self.guide.sub(text))


def _service(name: str) -> str:
    return name if name.endswith(".service") else f"{name}.service"


def _received(sock: socket.socket, line: str) -> bool:
    try:
        return line in sock.recv(4096).decode().splitlines()
    except (TimeoutError, BlockingIOError):
        return False


@dataclass
class _Unit:
    exec_start: str
    env: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> "_Unit":
        exec_start, env = "", {}
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key == "ExecStart":
                exec_start = value
            elif key == "Environment":
                name, _, setting = value.partition("=")
                env[name] = setting
            elif key == "EnvironmentFile":
                path = Path(value.removeprefix("-"))
                if path.exists() or not value.startswith("-"):
                    env.update(_env_file(path))
        assert exec_start, "the unit has no ExecStart"
        return cls(exec_start, env)


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}
