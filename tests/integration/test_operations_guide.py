"""docs/operations.md, run as written: every shell block in order, with real processes.

The guide's paths and ports become temporary ones; `tests/guide.py` says how each kind
of block runs. After a block, the checks whose key it contains look for its effect in
the store, the files or the processes. A check that matches no block fails the test, so
the guide cannot drift away from what is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from quantlab.exchange import halts
from tests.conftest import Lab, free_port, wait_for
from tests.guide import Guide, Systemd, blocks

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "operations.md"
PG_URL = "postgresql://qlab@db.internal/qlab"


@dataclass
class Run:
    """What the checks see: the temporary stand-ins, the last block's output, notes between checks."""

    tmp: Path
    systemd: Systemd
    out: str = ""
    notes: dict[str, int] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.tmp / "home"

    def lab(self) -> Lab:
        return Lab(self.home)  # a fresh view each time: a restore replaces the store under it

    def beats(self) -> int:
        lab = self.lab()
        try:
            return int(lab.state("heartbeat_demo").get("beats", 0))
        finally:
            lab.close()

    def halt_scopes(self) -> list[str]:
        lab = self.lab()
        try:
            return [h.label for h in halts.read(lab.store).halts]
        finally:
            lab.close()

    def wait_running(self, *ids: str) -> None:
        lab = self.lab()
        try:
            for work_id in ids:
                lab.wait_status(work_id, "running", timeout=20)
        finally:
            lab.close()


def installed(run: Run) -> None:
    assert (run.tmp / "opt" / "bin" / "qlab").is_file()


def config_shown(run: Run) -> None:
    assert "metrics_port" in run.out and run.systemd.guide.subs["9108"] in run.out


def units_rendered(run: Run) -> None:
    director = (run.tmp / "units" / "qlab-director.service").read_text()
    assert f"ExecStart={run.tmp}/opt/bin/qlab director start" in director
    assert (run.tmp / "units" / "qlab-worker@.service").is_file()


def secrets_private(run: Run) -> None:
    assert (run.tmp / "etc" / "jp-1.env").stat().st_mode & 0o777 == 0o600


def services_up(run: Run) -> None:
    lab = run.lab()
    try:
        status = lab.status()
        assert [d["role"] for d in status["directors"]] == ["leader"], status["directors"]
        assert [(w["id"], w["alive"]) for w in status["workers"]] == [("jp-1", True)], status["workers"]
        assert status["workers"][0]["accounts"] == ["paper", "main"]  # the secret came from the .env file
    finally:
        lab.close()


def strategies_running(run: Run) -> None:
    run.wait_running("grid_paper", "heartbeat_demo")
    wait_for(lambda: run.beats() >= 2, what="heartbeat_demo to count beats")


def top_shown(run: Run) -> None:
    screen = run.out[run.out.rindex("directors: "):]  # `qlab top`'s one screen, the block's last output
    assert "grid_paper" in screen and "heartbeat_demo" in screen and "latest events" in screen


def account_halted(run: Run) -> None:
    assert run.halt_scopes() == ["account paper"]
    assert "HALTED" in run.out


def nothing_halted(run: Run) -> None:
    assert run.halt_scopes() == []


def worker_drained(run: Run) -> None:
    lab = run.lab()
    try:
        assert lab.store.find_resource("jp-1") is None  # unregistered: its lease given up
        assert lab.work("heartbeat_demo").result.status != "running"
        assert lab.events("released", "heartbeat_demo")  # its st_exit ran, its state saved, back to placement
    finally:
        lab.close()
    run.notes["beats before the upgrade"] = run.beats()


def upgraded_and_back(run: Run) -> None:
    run.wait_running("grid_paper", "heartbeat_demo")
    before = run.notes["beats before the upgrade"]
    wait_for(lambda: run.beats() > before, what="heartbeat_demo to count on from its saved state")


def backed_up(run: Run) -> None:
    assert list((run.tmp / "backups").glob("quantlab-*.tar.gz"))
    run.notes["beats in the backup"] = run.beats()  # the services are stopped: nothing moves


def restored(run: Run) -> None:
    assert run.beats() == run.notes["beats in the backup"]
    assert run.halt_scopes() == ["all"]
    assert list(run.home.glob("store.before-restore-*"))


def restarted(run: Run) -> None:
    lab = run.lab()
    try:
        lab.wait_event("restart_requested", "grid_paper")
        lab.wait_status("grid_paper", "running")
    finally:
        lab.close()


#: (a text the block contains, the check to run after it)
CHECKS: list[tuple[str, Callable[[Run], None]]] = [
    ("pip install --quiet '.[postgres]'", installed),
    ("qlab config show", config_shown),
    ("qlab systemd render", units_rendered),
    ("BYBIT_MAIN_SECRET=", secrets_private),
    ("systemctl enable --now", services_up),
    ("qlab strategy assign", strategies_running),
    ("qlab top", top_shown),
    ("qlab halt --account paper", account_halted),
    ("qlab resume --account paper", nothing_halted),
    ("qlab halt --all\nqlab resume --all", nothing_halted),
    ("systemctl stop qlab-worker@jp-1\n", worker_drained),
    ("systemctl restart qlab-director", upgraded_and_back),
    ("-czf", backed_up),
    ("-xzf", restored),
    ("qlab resume --all", nothing_halted),
    ("qlab strategy restart grid_paper", restarted),
]


@pytest.mark.timeout(600)  # the install alone takes 25 s on an idle machine, minutes on a busy one
def test_every_command_in_the_operations_guide_works(tmp_path: Path) -> None:
    guide_blocks = blocks(GUIDE.read_text())
    subs = {
        "/opt/quantlab": str(tmp_path / "opt"),
        "/var/lib/quantlab": str(tmp_path / "home"),
        "/etc/quantlab": str(tmp_path / "etc"),
        "/etc/systemd/system": str(tmp_path / "units"),
        "/var/backups/quantlab": str(tmp_path / "backups"),
        "9108": str(free_port()),
        "9109": str(free_port()),
    }
    guide = Guide(tmp_path, REPO, subs, dict(os.environ))
    systemd = Systemd(guide, tmp_path / "units", guide_blocks)
    run = Run(tmp_path, systemd)
    used: set[str] = set()
    try:
        for block in guide_blocks:
            run.out = ""
            if block.tag == "":
                run.out = guide.shell(block)
            elif block.tag == "root":
                guide.root(block)
            elif block.tag == "systemd":
                systemd.run(block)
            elif block.tag == "follow":
                guide.follow(block)
            else:
                continue  # postgres: the test below
            for key, check in CHECKS:
                if key in block.body:
                    used.add(key)
                    check(run)
    finally:
        systemd.close()
    assert used == {key for key, _ in CHECKS}, f"checks that matched no block: {set(k for k, _ in CHECKS) - used}"


def test_the_guides_postgresql_backup_and_restore(tmp_path: Path, pg_url: str) -> None:
    pg_blocks = [b for b in blocks(GUIDE.read_text()) if b.tag == "postgres"]
    assert len(pg_blocks) == 2, "a backup block, then a restore block"
    env = {**os.environ, "QLAB_HOME": str(tmp_path / "home"), "QLAB_STORE": pg_url}
    guide = Guide(tmp_path, REPO, {PG_URL: pg_url, "/var/backups/quantlab": str(tmp_path / "backups")}, env)

    def qlab(*args: str) -> str:
        return subprocess.run(["qlab", *args], env=env, check=True, capture_output=True, text=True).stdout

    demo = str(REPO / "strategies" / "heartbeat_demo.py")
    qlab("strategy", "assign", demo, "--id", "before")
    backup, restore = pg_blocks
    guide.shell(backup)
    qlab("strategy", "assign", demo, "--id", "after")  # made after the dump: the restore takes it away
    guide.shell(restore)
    assert [w["id"] for w in json.loads(qlab("strategy", "list", "--json"))] == ["before"]
    assert [h["scope"] for h in json.loads(qlab("status", "--json"))["halts"]] == ["all"]
