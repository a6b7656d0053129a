"""The fence's backstop: a thread that kills every child once the lease ran out, whatever the loop is doing.

The worker's loop self-fences on its own (StrategyManager._check_lease), but
only when it gets to run. A store call can block it for longer than the lease:
a network that silently drops packets answers nothing and reports no error
(TCP keeps the connection, a proxy or a NAT entry keeps accepting bytes). So
this thread holds the same deadline, the lease's end plus its grace, and
SIGKILLs every strategy process group when it passes without a renewal. The
children are then gone before any watcher may expire the lease and start
their strategies elsewhere; the loop notices the exits when it runs again.

It only kills: the children stay tracked and reaped by the loop, so no pid
can be reused under it (an unreaped child keeps its pid and process group).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Callable


class FenceGuard:
    def __init__(self, kill_all: Callable[[], None], log: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self._kill_all = kill_all
        self._log = log
        self._clock = clock
        self._kill_at = math.inf
        self._closed = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="fence-guard", daemon=True)
        self._thread.start()

    def arm(self, kill_at: float) -> None:
        """Kill every child at ``kill_at`` (monotonic) unless armed again before."""
        with self._wake:
            self._kill_at = kill_at
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(5)

    def _run(self) -> None:
        with self._wake:
            while not self._closed:
                left = self._kill_at - self._clock()
                if left > 0:
                    self._wake.wait(None if left == math.inf else left)
                    continue
                self._kill_at = math.inf
                self._log.error("lease ran out while the worker's loop was busy: killing every strategy process")
                self._kill_all()
