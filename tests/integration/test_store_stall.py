"""The file store stalls: its filesystem frozen (fsfreeze), every write blocks and reads go on.

The file-store twin of the PostgreSQL test of a database that goes silent
(tests/integration/test_postgres_faults.py): the worker's loop blocks in its
next store write and cannot renew its lease, so its fence guard must kill
its strategies, by its own clock, before the lease ends. Every process
shares the stalled store, so nobody moves anything meanwhile; once it moves
again the strategy runs on, never two runners at once. The store lives on an
ext4 image of its own, mounted on a loop device; the logs and strategy
files stay outside it (a frozen log file would hold the guard's own log line).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import Lab, lacking, pid_alive, wait_for
from tests.integration.test_postgres import assert_never_two_runners
from tests.integration.test_store_faults import RECORDER

LEASE = 2.0  #: the worker's lease, seconds


class Disk:
    """An ext4 image mounted at ``mount``; ``freeze`` blocks every write to it until ``thaw``."""

    def __init__(self, image: Path, mount: Path) -> None:
        self.image, self.mount = image, mount
        self.frozen = False

    def create(self) -> None:
        with open(self.image, "wb") as f:
            f.truncate(64 << 20)
        made = subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], capture_output=True, text=True)
        if made.returncode != 0:
            lacking(f"mkfs.ext4 (e2fsprogs): {made.stderr.strip()}")
        mounted = subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mount)], capture_output=True, text=True)
        if mounted.returncode != 0:
            lacking(f"a loop device to mount as root (mount -o loop: {mounted.stderr.strip()})")

    def freeze(self) -> None:
        subprocess.run(["fsfreeze", "--freeze", str(self.mount)], check=True, capture_output=True)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen:
            subprocess.run(["fsfreeze", "--unfreeze", str(self.mount)], check=True, capture_output=True)
            self.frozen = False

    def remove(self) -> None:
        self.thaw()
        subprocess.run(["umount", "-l", str(self.mount)], check=False, capture_output=True)


@pytest.fixture
def stalling(tmp_path: Path) -> Iterator[tuple[Lab, Disk]]:
    """A lab whose store (home/store, a link) lives on a Disk of its own."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    disk = Disk(tmp_path / "store.img", tmp_path / "disk")
    disk.mount.mkdir()
    disk.create()
    try:
        (disk.mount / "store").mkdir(mode=0o700)
        (home / "store").symlink_to(disk.mount / "store")
        lab = Lab(home)
        try:
            yield lab, disk
        finally:
            disk.thaw()  # before anything stops: a process blocked in a write could not exit
            lab.close()
    finally:
        disk.remove()


@pytest.mark.timeout(90)
def test_a_worker_whose_store_stalls_fences_itself_before_its_lease_ends(stalling: tuple[Lab, Disk]) -> None:
    lab, disk = stalling
    lab.director()
    lab.worker("w1", "--lease-ttl", str(LEASE), "--drain-timeout", "0.3")
    lab.assign(lab.strategy("rec", RECORDER), "--interval", "0.05", "--worker", "w1")
    before = lab.wait_heartbeats("rec", 5)
    assert before.result.pid
    disk.freeze()  # w1's next write (a state, a renewal) blocks its loop; nothing says why
    frozen = time.time()
    try:
        wait_for(lambda: not pid_alive(before.result.pid or 0), timeout=LEASE + 1, what="w1 to kill its child")
        fenced_after = time.time() - frozen
        # Stalled past the lease's end, as a store that hangs for good would be.
        wait_for(lambda: time.time() > frozen + LEASE + 0.5, timeout=LEASE + 1, what="the lease to run out")
    finally:
        disk.thaw()
    assert fenced_after < LEASE, f"w1's child outlived the lease: killed {fenced_after:.2f}s after the store stalled"
    again = wait_for(lambda: (w := lab.store.find_work("rec")) and w.result.status == "running"
                     and w.result.pid not in (None, before.result.pid) and w, timeout=20, what="rec to run again")
    lab.wait_heartbeats("rec", again.result.heartbeats + 5)
    assert_never_two_runners(lab, "rec")
