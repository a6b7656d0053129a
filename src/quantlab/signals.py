"""Signal handlers only set a flag; the loop does the work.

The first SIGTERM/SIGINT asks for a clean stop; a second one asks to stop now.
The wake-up pipe lets a loop blocked in a poller see the signal at once.
"""

from __future__ import annotations

import os
import signal
from types import FrameType


class StopRequest:
    def __init__(self) -> None:
        self.count = 0
        self.signal_name = ""
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @property
    def requested(self) -> bool:
        return self.count > 0

    @property
    def forced(self) -> bool:
        return self.count > 1

    @property
    def fd(self) -> int:
        """Readable once a signal arrived: put it in the loop's poller."""
        return self._read_fd

    def install(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        return self

    def drain(self) -> None:
        drain(self._read_fd)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.signal_name = signal.Signals(signum).name
        try:
            os.write(self._write_fd, b"\0")
        except BlockingIOError:
            pass


class ChildExits:
    """SIGCHLD as a readable fd, so the loop reaps when a child exited, not on every pass.

    Asking the kernel for exited children on each pass (waitid over all of them) would be
    a few percent of the worker's time with 200 strategies. Python's wakeup fd is
    written by the C-level handler on whichever thread the signal lands, so the loop's poll
    wakes even when the signal went to another thread. Other signals write to it too: a
    spare wakeup, and one more look for exited children.
    """

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @property
    def fd(self) -> int:
        return self._read_fd

    def install(self) -> "ChildExits":
        signal.signal(signal.SIGCHLD, _ignore)  # a handler of our own, so the wakeup fd is written
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        return self

    def drain(self) -> None:
        drain(self._read_fd)

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(self._read_fd)
        os.close(self._write_fd)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The work is the loop's: it reaps when the wakeup fd says so."""


def drain(fd: int) -> None:
    """Read a non-blocking wake-up pipe empty."""
    try:
        while os.read(fd, 256):
            pass
    except BlockingIOError:
        pass
