"""The worker's /proc reader against psutil, which it replaced, on real processes; its open-files limit."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from typing import Iterator

import psutil
import pytest

from quantlab.worker import procfs, procs
from tests.conftest import in_child, wait_for

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


def test_a_worker_raises_its_open_files_limit_and_says_when_even_the_hard_one_is_short() -> None:
    def raised() -> str:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 1000))
        enough, short = procs.raise_open_files_limit(250), procs.raise_open_files_limit(300)
        return repr((enough, short, resource.getrlimit(resource.RLIMIT_NOFILE)))

    assert in_child(raised) == repr(("", "this worker may open 1000 files, and 300 strategies need about 1200: raise its hard "
                             "limit (ulimit -Hn, or LimitNOFILE= in its unit)", (1000, 1000)))
