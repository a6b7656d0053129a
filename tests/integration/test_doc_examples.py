"""The code blocks of README.md and docs/ that need real processes, run as docs/development.md says.

- ``sh``: bash from the repository's root, in a temporary home; a line ending in ``&``
  starts a director or worker in the background, which must come up, and every strategy
  the block assigned must heartbeat, before the test stops them with SIGTERM.
- ``js``: a strategy in JavaScript, assigned to a real worker until it has heartbeat.
- ``python`` worker hook files: loaded by a real worker from its profile.

The Python strategies, manifests, profiles and YAML run in tests/unit/test_doc_examples.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Lab, needs_js, wait_for
from tests.docblocks import REPO, Block, of

#: Seconds a block's foreground commands may take, and the daemons to come up and run what it assigned.
BLOCK_TIMEOUT = 120
UP_TIMEOUT = 30


def _ids(blocks: list[Block]) -> list[str]:
    return [b.where for b in blocks]


class Shell:
    """One block in bash, in a home of its own; its background daemons in its process group."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = {**os.environ, "HOME": str(tmp), "QLAB_HOME": str(tmp / "home"),
                    "XDG_CACHE_HOME": str(tmp / ".cache")}
        for name in ("QLAB_STORE", "QLAB_CONFIG", "QLAB_HOST"):
            self.env.pop(name, None)
        self.output = tmp / "block.out"
        self.group: int | None = None

    def run(self, block: Block) -> None:
        script = f"set -euo pipefail\n{block.body}"
        with open(self.output, "wb") as out:
            # Files, not pipes: the background daemons keep their output open after bash ends.
            proc = subprocess.Popen(["bash", "-c", script], cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.group = proc.pid
        code = proc.wait(BLOCK_TIMEOUT)
        assert code == 0, f"{block.where}: exited {code}:\n{self.said()}"

    def said(self) -> str:
        return self.output.read_text(errors="replace")

    def qlab_json(self, *args: str) -> Any:
        done = subprocess.run(["qlab", *args, "--json"], env=self.env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def stop(self) -> None:
        """SIGTERM to everything the block left running, then SIGKILL what outlives the drain."""
        if self.group is None:
            return
        for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.group, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                try:
                    os.killpg(self.group, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.05)


def _background(block: Block) -> tuple[int, list[str]]:
    """How many directors the block starts with ``&``, and the ids of its workers."""
    directors, workers = 0, []
    for line in block.commands():
        command = line.split("  #")[0].strip()
        if not command.endswith("&"):
            continue
        words = shlex.split(command.rstrip("&"))
        assert words[:1] == ["qlab"] and ("director" in words or "worker" in words), \
            f"{block.where}: only a qlab director or worker may start in the background: {command}"
        if "director" in words:
            directors += 1
        else:
            assert "--id" in words, f"{block.where}: a background worker needs --id, to be waited for"
            workers.append(words[words.index("--id") + 1])
    return directors, workers


@pytest.mark.timeout(BLOCK_TIMEOUT + 2 * UP_TIMEOUT + 60)
@pytest.mark.parametrize("block", of("sh"), ids=_ids(of("sh")))
def test_a_shell_example_runs_in_a_temporary_home(block: Block, tmp_path: Path) -> None:
    shell = Shell(tmp_path)
    try:
        shell.run(block)
        directors, workers = _background(block)
        if not directors and not workers:
            return
        wait_for(lambda: len([d for d in shell.qlab_json("status")["directors"]]) >= directors
                 and {w["id"] for w in shell.qlab_json("status")["workers"] if w["alive"]} >= set(workers),
                 UP_TIMEOUT, f"{block.where}: the block's director and workers to come up:\n{shell.said()}")
        assigned = len(re.findall(r"^qlab strategy assign ", block.body, re.M))

        def running() -> bool:
            strategies = shell.qlab_json("status")["strategies"]
            return len(strategies) >= assigned and all(s["status"] == "running" and s["heartbeats"] >= 1
                                                       for s in strategies)

        wait_for(running, UP_TIMEOUT, f"{block.where}: the strategies it assigned to heartbeat")
    finally:
        shell.stop()


# ---- JavaScript strategies ----


@needs_js
@pytest.mark.parametrize("block", of("js"), ids=_ids(of("js")))
def test_a_javascript_example_runs_in_a_real_worker(block: Block, lab: Lab) -> None:
    path = lab.strategy("example", block.body, suffix=".mjs")
    lab.director()
    lab.worker("w1")
    lab.assign(path, "--interval", "0.2")
    lab.wait_heartbeats("example", 3, timeout=30)
    lab.run("strategy", "stop", "example")
    work = lab.wait_status("example", "stopped", timeout=20)
    assert work.result.error_count == 0, work.result.last_error


# ---- worker hook files ----


@pytest.mark.parametrize("block", of("python", worker_hooks=True), ids=_ids(of("python", worker_hooks=True)))
def test_a_worker_hooks_example_runs_in_a_real_worker(block: Block, lab: Lab) -> None:
    hooks = lab.strategy("hooks", block.body)
    profile = lab.home / "w1.toml"
    profile.write_text(f'id = "w1"\nregion = "JP"\nheartbeat = 0.1\nhooks = "{hooks}"\n')
    lab.director()
    worker = lab.worker("w1", "--profile", str(profile))
    lab.assign(REPO / "strategies" / "heartbeat_demo.py", "--interval", "0.2")
    lab.wait_heartbeats("heartbeat_demo", 6, timeout=20)  # a dozen worker heartbeats, each with its hook
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    said = (lab.home / "logs" / "worker-w1.log").read_text()
    assert "user hook" not in said, said  # a hook that raised is logged as "user hook NAME failed"
    lines = [line for line in said.splitlines() if "hooks: " in line]
    assert len(lines) >= 2 and "ends" in lines[-1], said  # the example's st_worker_init and st_worker_exit
