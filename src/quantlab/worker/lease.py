"""This worker's lease as its loop sees it, and the fence each strategy's exchange calls carry.

The lease deadline (monotonic) is handed over by every worker heartbeat
(``set_lease``). Past it the worker sends its children nothing but Stops and
answers to calls they wait on, and ``grace`` seconds later kills what is left
(the manager's pass does both; FenceGuard kills even while the loop is stuck).
The fence is asked twice of each exchange call: as it comes in from the child,
and again on an API pool thread as the request is signed, since a call may
wait in its account's queue meanwhile.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Mapping

from quantlab.errors import QuantlabError
from quantlab.exchange.signing import Fence
from quantlab.store import workmachine as wm
from quantlab.store.fenced import FencedStore
from quantlab.worker.slot import Slot

#: Seconds after this worker's lease ran out before the children still running are SIGKILLed.
#: Small on purpose: the lease deadline handed to set_lease already keeps a margin before the
#: store's lease expires, and this must fit inside that margin.
LEASE_KILL_GRACE = 0.5


class Lease:
    """Until when this worker may act (monotonic), and whether it let its strategies go for a lapse."""

    def __init__(self, clock: Callable[[], float], log: logging.Logger) -> None:
        self.clock = clock
        self.log = log
        self.until = -math.inf  #: nothing but Stop and API answers goes to a child after it
        self.grace = LEASE_KILL_GRACE  #: seconds after ``until`` when what is left is killed
        self.lapsed = False  #: the lapse was acted on (every strategy told to stop), not yet renewed

    def ran_out(self, until: float) -> bool:
        """The lease has run out, or a renewal to ``until`` comes too late: what runs ran under a lapse."""
        now = self.clock()
        return now >= self.until or now >= until

    def renew(self, until: float, grace: float) -> None:
        """The lease holds until ``until`` now; what is left ``grace`` seconds after it is killed."""
        self.until = until
        self.grace = grace
        if self.clock() < until and self.lapsed:
            self.lapsed = False
            self.log.warning("lease valid again: taking strategies again")

    def ok(self) -> bool:
        return self.clock() < self.until

    def lapse(self) -> bool:
        """The loop acts on a lapsed lease; True the first time since it was last valid."""
        first = not self.lapsed
        self.lapsed = True
        return first

    def kill_due(self, now: float) -> bool:
        """The grace after the lapse is over: what still runs is killed."""
        return now >= self.until + self.grace

    def deadlines(self, now: float) -> list[float]:
        """The lease's end, then the kill after it: each only while ahead."""
        return [t for t in (self.until, self.until + self.grace) if t > now]


class Fencing:
    """Whether a strategy's exchange calls may leave: its lease, its epoch, and the store's word on it."""

    def __init__(self, lease: Lease, slots: Mapping[str, Slot], fenced_store: FencedStore, worker_id: str) -> None:
        self.lease = lease
        self.slots = slots  #: the manager's strategies: a slot no longer among them acts for nobody
        self.fenced_store = fenced_store
        self.worker_id = worker_id

    def allows(self, slot: Slot) -> bool:
        """A call coming in now may be queued: neither this worker's lease nor the slot's epoch is in doubt.

        st_exit of a manual or worker_exit stop may still cancel its orders.
        """
        return self.lease.ok() and not slot.fenced_off

    def fence(self, slot: Slot) -> Fence:
        """The fence of ``slot``'s calls, read on an API pool thread when a request is signed.

        It reads two references the loop thread replaces whole (the lease deadline, the slot's
        machine), so it needs no lock: the API pool sees the newest value or the one before.
        """

        def act_until() -> float:
            if slot.fenced_off or self.slots.get(slot.id) is not slot:
                return -math.inf  # the strategy is someone else's now, or gone from here
            if not self._current_in_store(slot):
                return -math.inf  # removed or moved a moment ago: the loop has not heard yet
            return self.lease.until

        return act_until

    def _current_in_store(self, slot: Slot) -> bool:
        """The store still names this worker and the slot's epoch: read as the call leaves, not as it came."""
        try:
            work = self.fenced_store.get_work(slot.id)
        except (OSError, QuantlabError):
            return False  # unknown is not current: an order waits for the store, never guesses
        return work is not None and wm.current(work, self.worker_id, slot.assignment.epoch)
