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
        try:
            while os.read(self._read_fd, 64):
                pass
        except BlockingIOError:
            pass

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.signal_name = signal.Signals(signum).name
        try:
            os.write(self._write_fd, b"\0")
        except BlockingIOError:
            pass
