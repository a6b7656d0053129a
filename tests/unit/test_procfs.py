"""The worker's /proc reader against psutil, which it replaced, on real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Iterator

import psutil
import pytest

from quantlab.worker import procfs
from tests.conftest import wait_for

#: A child (its own process group) that starts a grandchild; both sleep.
TREE = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"


@pytest.fixture
def child() -> Iterator[psutil.Process]:
    proc = subprocess.Popen([sys.executable, "-c", TREE], process_group=0)
    wait_for(lambda: psutil.Process(proc.pid).children(), what="the grandchild")
    yield psutil.Process(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_descendants_are_children_and_theirs(child: psutil.Process) -> None:
    grandchild = child.children()[0].pid
    assert procfs.descendants(child.pid) == [grandchild]
    assert set(procfs.descendants(os.getpid())) >= {child.pid, grandchild}
    assert procfs.descendants(grandchild) == []


def test_memory_start_and_cpu_are_psutils(child: psutil.Process) -> None:
    # The same once the child has settled into its sleep (until then its memory may move between two reads).
    wait_for(lambda: procfs.rss_bytes(child.pid) == child.memory_info().rss
             and procfs.pss_bytes(child.pid) == child.memory_full_info().pss, what="psutil's memory figures")
    assert procfs.started(child.pid) == pytest.approx(child.create_time(), abs=0.01)
    me = psutil.Process()
    assert procfs.cpu_seconds(me.pid) == pytest.approx(me.cpu_times().user + me.cpu_times().system, abs=0.05)


def test_a_process_that_is_gone_raises_oserror() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    for read in (procfs.rss_bytes, procfs.pss_bytes, procfs.cpu_seconds, procfs.started):
        with pytest.raises(OSError):
            read(proc.pid)
    assert procfs.descendants(proc.pid) == []
