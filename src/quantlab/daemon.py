"""The director's and the worker's own process, without the command line's modules.

`qlab director start` and `qlab worker start` parse and resolve their options
(click, the settings file, a profile), then replace themselves, same pid, with
``python -m quantlab.daemon FD`` and hand it the options through a pipe: the
long-running process never imports click and the CLI's modules, which it would
hold for its whole life (1.3 MB of PSS in the director and in the worker, with
100 strategies). A pipe, not the command line, which every user on
the host can read. Its pid, standard streams, environment and umask stay.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import msgspec

from quantlab import exits, proctitle
from quantlab.config import Paths
from quantlab.director.options import DirectorOptions
from quantlab.worker import procs
from quantlab.worker.options import WorkerOptions


class Home(msgspec.Struct, frozen=True):
    """Paths, as the pipe carries them."""

    home: str
    store_url: str
    host: str

    def paths(self) -> Paths:
        return Paths(Path(self.home), store_url=self.store_url, host=self.host)


class WorkerStart(msgspec.Struct, frozen=True, tag="worker"):
    home: Home
    options: WorkerOptions


class DirectorStart(msgspec.Struct, frozen=True, tag="director"):
    home: Home
    options: DirectorOptions


Start = WorkerStart | DirectorStart


def home_of(paths: Paths) -> Home:
    return Home(home=str(paths.home), store_url=paths.store_url, host=paths.host)


def become(start: Start) -> NoReturn:
    """Replace this process with the daemon ``start`` describes (its pid, stdio and environment stay)."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, msgspec.msgpack.encode(start))  # a few hundred bytes: the pipe holds them
    os.close(write_fd)
    os.set_inheritable(read_fd, True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execv(sys.executable, [sys.executable, "-m", "quantlab.daemon", str(read_fd)])


def _run(start: Start) -> int:
    if isinstance(start, WorkerStart):
        from quantlab.worker.main import run_worker

        proctitle.set_title(f"qlab worker {start.options.id}")
        return run_worker(start.home.paths(), start.options)
    from quantlab.director.loop import run_director

    proctitle.set_title("qlab director")

    options = start.options
    return run_director(start.home.paths(), heartbeat=options.heartbeat, lease_ttl=options.lease_ttl,
                        logs=options.log_settings, metrics_port=options.metrics_port)


def main() -> None:
    # First: the exec made us dumpable again, and our environment may hold secrets (a worker's,
    # until it takes them), which a strategy could otherwise read from our /proc or memory.
    procs.become_undumpable()
    with os.fdopen(int(sys.argv[1]), "rb") as f:
        start = msgspec.msgpack.decode(f.read(), type=Start)
    sys.exit(exits.reported(lambda: _run(start)))


if __name__ == "__main__":
    main()
