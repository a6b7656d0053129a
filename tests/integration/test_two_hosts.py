"""docs/store.md's "Two hosts, one database" demo, run line by line on a scratch database."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from quantlab.config import Paths
from quantlab.store.open import open_store
from quantlab.store.store import Store
from tests.conftest import QLAB, wait_for

MARKER = "<!-- run by tests/integration/test_two_hosts.py -->"
REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "store.md"


def demo_lines() -> list[str]:
    """The demo block's commands, comments dropped."""
    text = PAGE.read_text()
    block = text.split(MARKER, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


class Demo:
    """Runs the demo's lines as a shell would, in ``tmp``: its /tmp homes moved there, its database ours."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp = tmp
        self.env = {**os.environ, "QLAB_HOME": str(tmp / "control")}
        self.url = url
        self.background: list[subprocess.Popen[bytes]] = []
        self.outputs: dict[str, subprocess.CompletedProcess[str]] = {}
        self.store: Store | None = None

    def run(self, line: str) -> None:
        if line.startswith("export QLAB_STORE="):
            self.env["QLAB_STORE"] = self.url
            self.store = open_store(Paths(self.tmp, store_url=self.url))
            return
        words = [w.replace("/tmp/", f"{self.tmp}/") for w in shlex.split(line.rstrip("&"))]
        assert words[0] == "qlab", line
        if line.endswith("&"):
            log = open(self.tmp / f"bg-{len(self.background)}.log", "wb")
            self.background.append(subprocess.Popen([QLAB, *words[1:]], env=self.env, cwd=REPO, stdout=log,
                                                    stderr=subprocess.STDOUT, start_new_session=True))
            if "--id" in words:  # as a person would: the worker is up before the next line
                worker_id = words[words.index("--id") + 1]
                wait_for(lambda: self.store and self.store.find_resource(worker_id), timeout=20, what=f"{worker_id} to register")
            return
        self.outputs[line] = subprocess.run([QLAB, *words[1:]], env=self.env, cwd=REPO, capture_output=True, text=True, timeout=30)

    def close(self) -> None:
        for proc in self.background:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in self.background:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
        if self.store is not None:
            self.store.close()


@pytest.fixture
def demo(tmp_path: Path, pg_url: str) -> Iterator[Demo]:
    demo = Demo(tmp_path, pg_url)
    try:
        yield demo
    finally:
        demo.close()


def _status(demo: Demo) -> dict[str, Any]:
    out = subprocess.run([QLAB, "status", "--json"], env=demo.env, capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout) if out.returncode == 0 else {}


@pytest.mark.timeout(120)
def test_two_hosts_share_one_database_as_the_store_page_shows(demo: Demo) -> None:
    lines = demo_lines()
    stop_lines = [line for line in lines if "worker stop" in line]
    for line in lines:
        if line in stop_lines:
            break
        demo.run(line)
    assert demo.store is not None
    store = demo.store
    wait_for(lambda: all((w := store.find_work(i)) and w.result.heartbeats >= 1 for i in ("demo-jp", "demo-us")),
             timeout=30, what="both strategies to beat")
    listing = next(out for line, out in demo.outputs.items() if line.endswith("worker list")).stdout
    assert re.search(r"jp-1\s.*JP\s.*tokyo-1", listing) and re.search(r"us-1\s.*US\s.*nyc-1", listing), listing
    status = _status(demo)
    placed = {s["id"]: s["worker"] for s in status["strategies"]}
    assert placed == {"demo-jp": "jp-1", "demo-us": "us-1"}
    assert {w["id"]: w["host"] for w in status["workers"]} == {"jp-1": "tokyo-1", "us-1": "nyc-1"}
    directors = {d["host"]: d["role"] for d in status["directors"]}
    assert sorted(directors) == ["nyc-1", "tokyo-1"] and sorted(directors.values()) == ["leader", "standby"]
    wrong_host, right_host = stop_lines
    demo.run(wrong_host)
    refused = demo.outputs[wrong_host]
    assert refused.returncode == 1 and refused.stderr.strip() == "Error: worker us-1 runs on host nyc-1: stop it there"
    demo.run(right_host)
    assert demo.outputs[right_host].returncode == 0 and "is stopping" in demo.outputs[right_host].stdout
    wait_for(lambda: store.find_resource("us-1") is None, timeout=20, what="us-1 to stop")
    assert store.find_resource("jp-1") is not None
