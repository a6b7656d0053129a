"""The worker's side of its zygote: fork requests sent without waiting, answers read when they come.

The worker's loop serves every strategy, so it never waits on the zygote: a
request is queued on the zygote's socket, and the answer (a pid, or why the
fork failed) is read when the socket is readable and handed to the callback
the request came with. A zygote that owes an answer for DEADLINE seconds
(stopped, stuck, swapping) is killed and a fresh one started at once; every
answer it owed becomes a failed fork, which the strategy's machine retries
with its usual backoff. A zygote that died (the OOM killer) is replaced the
same way, as soon as its socket's EOF is seen, so that a zygote always runs to
clean up after the worker should the worker die.

With a uid per strategy (quantlab/worker/strategyuids.py), each request takes
a uid of the range here; a fork that failed gives it back at once, a child
when the worker reaps it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable

import msgspec

from quantlab.worker.strategyuids import UidPool
from quantlab.worker.zygote import Forget, ForkRequest, Forked, Zygote

#: Seconds the zygote may take for the answer it owes the longest (counted from the request,
#: or from its previous answer): a fork takes 3-7 ms.
DEADLINE = 5.0
#: Seconds more a new zygote may take for its first answer: its imports take ~0.3 s, and
#: seconds on a loaded host, where a replacement would take as long again.
STARTUP = 10.0

Answer = Callable[[Forked], None]


class Spawner:
    """Forks through a zygote it replaces whenever that one stops answering or dies."""

    def __init__(
        self,
        start: Callable[[], Zygote],
        watch: Callable[[int, Callable[[], None]], None],
        unwatch: Callable[[int], None],
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        uids: UidPool | None = None,
    ) -> None:
        self._start = start
        self._watch = watch
        self._unwatch = unwatch
        self.log = log
        self.clock = clock
        self.owed: deque[Answer] = deque()  #: one per request not answered yet, oldest first
        self.waiting_since = 0.0  #: when the oldest owed answer became due (monotonic)
        self.answered = False  #: the zygote has answered once: it is past its start
        self.retired: list[Zygote] = []  #: zygotes killed and not reaped yet
        self.uids = uids  #: None: children run as the worker's user
        self.uid_of: dict[int, int] = {}  #: child pid -> the uid it holds until it is reaped
        self.zygote = self._started()

    def _started(self) -> Zygote:
        self.answered = False
        zygote = self._start()
        self._watch(zygote.fileno(), self.receive)
        return zygote

    def fork(self, request: ForkRequest, answer: Answer) -> None:
        """Ask for a child; ``answer`` runs on a later pass with its pid or why it failed (always, once)."""
        if self.uids is not None:
            uid = self.uids.take(request.strategy)
            if uid is None:
                answer(Forked(error=f"every uid of --strategy-uids {self.uids.uids} is held by a running strategy"))
                return
            request = msgspec.structs.replace(request, uid=uid)
            answer = self._holding(self.uids, uid, answer)
        try:
            self.zygote.send(request)
        except OSError as e:
            answer(Forked(error=f"zygote cannot take it: {e}"))
            return
        if not self.owed:
            self.waiting_since = self.clock()
        self.owed.append(answer)

    def _holding(self, pool: UidPool, uid: int, answer: Answer) -> Answer:
        """``answer``, once the child forked holds ``uid`` (a failed fork gives it back)."""
        def held(forked: Forked) -> None:
            if forked.pid:
                self.uid_of[forked.pid] = uid
            else:
                pool.release(uid)
            answer(forked)
        return held

    def forget(self, pid: int) -> None:
        """The worker reaped ``pid``: the zygote must never act on it again, and its uid is free."""
        uid = self.uid_of.pop(pid, None)
        if uid is not None and self.uids is not None:
            self.uids.release(uid)
        try:
            self.zygote.send(Forget(pid=pid))
        except OSError:
            pass  # the zygote checks a child's start time before it ends it: a missed Forget is harmless

    def receive(self) -> None:
        """Hand each answer that came to its request's callback; a zygote that is gone is replaced."""
        answers = self.zygote.answers()
        if answers is None:
            self._replace("the zygote exited")
            return
        for forked in answers:
            if self.owed:
                self.waiting_since = self.clock()
                self.answered = True
                self.owed.popleft()(forked)

    def check(self) -> None:
        """Replace the zygote if it owes an answer past the deadline (each loop pass)."""
        if self.owed and self.clock() > self.waiting_since + DEADLINE + (0.0 if self.answered else STARTUP):
            self._replace(f"the zygote did not answer within {DEADLINE:g}s")

    def reap(self, pid: int) -> bool:
        """Reap ``pid`` if it is one of our zygotes and has exited (Popen's to reap: its returncode)."""
        for zygote in (self.zygote, *self.retired):
            if zygote.proc.pid == pid:
                if zygote.proc.poll() is None:
                    return False
                if zygote in self.retired:
                    self.retired.remove(zygote)
                return True
        return False

    def _replace(self, why: str) -> None:
        self.log.error("%s: starting a new one", why)
        self._unwatch(self.zygote.fileno())
        self.zygote.kill()  # never waited for here: a zygote stuck in the kernel dies when it can
        self.retired.append(self.zygote)
        owed, self.owed = self.owed, deque()
        self.zygote = self._started()
        for answer in owed:
            answer(Forked(error=f"{why}; it was replaced"))

    def close(self) -> None:
        self._unwatch(self.zygote.fileno())
        self.zygote.close()
