"""A kill switch an operator can always lift: a halt written as root, a halts record that does not decode."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import QLAB, Lab, needs, wait_for

#: The service user the home belongs to: ``nobody``, which every Linux has.
SERVICE_UID = SERVICE_GID = 65534


def as_service_user(home: Path, *args: str) -> list[str]:
    """`qlab --home H ...` as the service user.

    The test's Python is installed under root's private home, so the command gets the one
    capability to read it (CAP_DAC_READ_SEARCH): it reads any file, and writes only where
    the service user itself may.
    """
    setpriv = ["setpriv", f"--reuid={SERVICE_UID}", f"--regid={SERVICE_GID}", "--clear-groups",
               "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    return [*setpriv, QLAB, "--home", str(home), *args]


def not_the_owners(home: Path) -> list[str]:
    """Paths in ``home`` that the home's owner does not own."""
    found = []
    for folder, names, files in os.walk(home):
        for name in [*names, *files]:
            path = Path(folder) / name
            if path.lstat().st_uid != SERVICE_UID:
                found.append(f"{path.relative_to(home)} (uid {path.lstat().st_uid})")
    return found


@needs("" if os.geteuid() == 0 and shutil.which("setpriv") else "root and setpriv, to act as another user")
def test_a_halt_written_as_root_can_be_lifted_by_the_homes_owner(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    os.chown(home, SERVICE_UID, SERVICE_GID)
    by_root = subprocess.run([QLAB, "--home", str(home), "halt", "--all"], capture_output=True, text=True, timeout=30)
    assert by_root.returncode == 0, by_root.stderr

    for command, said in ((["halt", "--strategy", "s1"], "halted: strategy s1"), (["resume", "--all"], "resumed: all")):
        service = subprocess.run(as_service_user(home, *command), capture_output=True, text=True, timeout=30)
        assert (service.returncode, service.stderr) == (0, ""), service.stderr
        assert said in service.stdout
    status = subprocess.run(as_service_user(home, "status", "--json"), capture_output=True, text=True, timeout=30)
    assert [(h["scope"], h["target"]) for h in json.loads(status.stdout)["halts"]] == [("strategy", "s1")]
    assert not_the_owners(home) == []


def test_a_halts_record_that_does_not_decode_is_repaired_into_a_halt_on_everything(lab: Lab) -> None:
    lab.run("halt", "--account", "paper")
    lab.store.update_blob("halts", "halts", lambda raw: b'{"halts": [{"scope": "al')

    for command in (["halt", "--all"], ["resume", "--all"]):
        refused = lab.run(*command, check=False)
        assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1, refused.stderr
        assert refused.stderr.startswith("Error: ") and "qlab halt --repair" in refused.stderr
    closed = lab.status()["halts"]  # failing closed meanwhile
    assert [h["scope"] for h in closed] == ["all"] and "treated as halted" in closed[0]["problem"]

    repaired = lab.run("halt", "--repair")
    assert "replaced with a halt on everything" in repaired.stdout
    assert [(h["scope"], h["problem"]) for h in lab.status()["halts"]] == [("all", None)]
    again = lab.run("halt", "--repair", check=False)
    assert again.returncode == 1 and "nothing to repair" in again.stderr
    both = lab.run("halt", "--repair", "--all", check=False)
    assert both.returncode == 2

    assert "resumed: all" in lab.run("resume", "--all").stdout
    assert lab.status()["halts"] == []
    assert [e.detail.split(":")[0] for e in lab.events("halted")] == ["halted", "halted (repaired)"]


def test_a_halts_file_torn_where_it_is_stored_is_repaired_too(lab: Lab) -> None:
    lab.run("halt", "--account", "paper")
    versions = sorted((lab.home / "store" / "blobs" / "halts" / "halts").glob("[0-9]*"), key=lambda p: int(p.name))
    versions[-1].write_bytes(b"\x00torn")  # not even its header parses

    refused = lab.run("resume", "--all", check=False)
    assert refused.returncode == 1 and "qlab halt --repair" in refused.stderr, refused.stderr
    assert "replaced with a halt on everything" in lab.run("halt", "--repair").stdout
    assert [(h["scope"], h["problem"]) for h in lab.status()["halts"]] == [("all", None)]
    assert "resumed: all" in lab.run("resume", "--all").stdout
    assert lab.status()["halts"] == []


GRID = Path(__file__).resolve().parents[2] / "strategies" / "grid_paper.py"


def test_the_grid_example_takes_orders_a_halt_cancelled_for_cancels_not_fills(lab: Lab) -> None:
    lab.director()
    lab.worker("w1")
    lab.assign(GRID, "--interval", "0.1", "--param", "step=0.05")  # a wide grid: nothing fills
    wait_for(lambda: len(lab.state("grid_paper").get("placed", [])) == 6, what="six grid orders")

    lab.run("halt", "--all", "--cancel-orders")
    wait_for(lambda: lab.events("halt_cancelled"), what="the halt's cancel")
    wait_for(lambda: lab.state("grid_paper")["placed"] == [], what="the grid to see its orders gone")
    assert " filled " not in lab.log("grid_paper") and lab.state("grid_paper")["fills"] == 0
    assert lab.log("grid_paper").count("cancelled grid_paper-r0-") == 6, lab.log("grid_paper")
    assert [e for e in lab.events("strategy_message", "grid_paper") if "filled" in e.detail] == []

    lab.run("resume", "--all")
    wait_for(lambda: len((s := lab.state("grid_paper"))["placed"]) == 6 and s["round"] == 1, what="a new round")
    account = json.loads(lab.store.get_blob("paper", "paper") or b"{}")
    assert sorted(o["status"] for o in account["closed"]) == ["Cancelled"] * 6
