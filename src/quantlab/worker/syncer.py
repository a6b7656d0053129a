"""The worker's syncs of its store, on a thread of their own.

A sync of the filesystem on the loop thread, at the end of each group commit
of states, would be a few milliseconds in which no heartbeat is read and no
tick sent, on every pass. The loop writes a pass's states without
syncing and asks for a sync; this thread makes it, in generations: a sync
asked for while another runs is done once the running one ends, together
with every other asked for meanwhile. A tick waits only when its strategy's
last state belongs to a generation not yet synced, which at 10 Hz it almost
never does: the sync ends long before the next tick comes due.

With ticks spread over their interval, nearly every pass writes one state:
synced at once, each would cost a sync of its own (a thousand a second at
100 strategies). So a sync begins at most every ``window`` seconds, for every
write made until then, unless a tick is waiting for it: then at once. The
window follows the fastest strategy's interval (``pace``): a quarter of it,
between WINDOW and MAX_WINDOW, so a tick almost never finds its state
unsynced, and a fleet at 1 Hz syncs ten times a second, not a hundred (each
sync also stalls every file the loop creates meanwhile on the journal).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

#: After a failed sync, the next try (the disk may come back; the waiting states stay unsynced).
RETRY = 0.5
#: Seconds from the start of one sync to the next, when nobody waits, at least and at most.
WINDOW = 0.01
MAX_WINDOW = 0.1


class Syncer:
    def __init__(self, sync: Callable[[], None], log: logging.Logger) -> None:
        self._sync = sync
        self.log = log
        self.asked = 0  #: the newest generation asked for
        self.done = 0  #: every generation up to this one is durable
        self.error: Exception | None = None  #: why the last sync failed, until one succeeds
        self._changed = threading.Condition()
        self._closed = False
        self._waiting = 0  #: threads in ``wait``: the window is cut short for them
        self._began = -MAX_WINDOW  #: when the last sync began (monotonic)
        self._thread: threading.Thread | None = None  #: started by the first ask
        #: Seconds from the start of one sync to the next, when nobody waits: the writes in between share it.
        self.window = WINDOW

    def pace(self, shortest_interval: float | None) -> None:
        """Syncs a quarter of the fastest strategy's interval apart (between WINDOW and MAX_WINDOW)."""
        self.window = WINDOW if shortest_interval is None else min(MAX_WINDOW, max(WINDOW, shortest_interval / 4))

    def ask(self) -> int:
        """Ask for a sync of every write made so far; the generation to wait for."""
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="qlab-sync", daemon=True)
                self._thread.start()
            if self.asked == self.done:  # else the thread is syncing or in a window: it will see this
                self._changed.notify_all()
            self.asked += 1
            return self.asked

    def wait(self, generation: int, timeout: float) -> bool:
        """Whether ``generation`` is durable, waiting up to ``timeout`` seconds for it."""
        with self._changed:
            if self.done >= generation:
                return True
            self._waiting += 1
            self._changed.notify_all()
            try:
                return self._changed.wait_for(lambda: self.done >= generation, timeout)
            finally:
                self._waiting -= 1

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self.asked > self.done or self._closed)
                if self.asked <= self.done:
                    return  # closed with nothing left to sync
                opens = self._began + self.window
                self._changed.wait_for(lambda: self._waiting or self._closed or time.monotonic() >= opens,
                                       max(0.0, opens - time.monotonic()))
                target = self.asked
            self._began = time.monotonic()
            try:
                self._sync()
            except OSError as e:
                self._failed(e)
                continue
            with self._changed:
                self.done, self.error = target, None
                self._changed.notify_all()

    def _failed(self, error: OSError) -> None:
        with self._changed:
            if self.error is None:
                self.log.error("syncing the store failed, trying again: %s", error)
            self.error = error
            self._changed.wait(RETRY)
