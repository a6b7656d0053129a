"""One strategy's budget of messages to its worker: what is over it is dropped, counted, and charged.

Every message a bound child sends costs the worker's one loop something, and a
``ctx.send`` costs it an event in the store. So each strategy has a budget per
kind of message (token buckets: protocol.Limits.send for its ctx.send messages,
which its child checks too, and the worker's own for the rest, which an honest
child never comes near). A message over budget is dropped (an API call is
answered with a refusal instead, so the strategy's call returns) and counted
in the current burst: a run of drops with no pause of QUIET seconds. A burst
is written as one event when it ends; one that lasts FAULT_AFTER seconds ends
there and makes the strategy faulty (the manager kills it, and it counts as an
error), so a flood that never pauses writes one event every FAULT_AFTER seconds.

The budget belongs to the strategy, not to one child: a restart does not refill it.
So the events a strategy can write through ctx.send are bounded by its Budget:
at most ``burst + rate * t`` in ``t`` seconds, plus one over_budget event a burst
(bursts are QUIET seconds apart at least, and last FAULT_AFTER seconds at most).
"""

from __future__ import annotations

import msgspec

from quantlab.protocol import LIMITS, ApiCall, Budget, Log, TokenBucket, ToWorker

#: API calls a strategy may send: far above what an account's rate limit lets through.
CALLS = Budget(200.0, 1000)
#: Every other kind: answers to the worker's own ticks (at most 1000 a second, at the shortest
#: interval), Hello, Ready, Error, Exited.
OTHERS = Budget(2000.0, 2000)
#: Seconds without a drop that end a burst.
QUIET = 1.0
#: Seconds a burst may last before the strategy is charged as faulty.
FAULT_AFTER = 3.0


class Burst(msgspec.Struct, kw_only=True):
    """A run of dropped messages: when it began, its last drop, and how many of each kind."""

    first: float
    last: float
    dropped: dict[str, int] = {}

    def describe(self) -> str:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.dropped.items(), key=lambda item: -item[1]))
        return f"dropped {sum(self.dropped.values())} messages over its budget in {self.last - self.first:.1f}s: {kinds}"


class Intake:
    def __init__(self, now: float) -> None:
        self.buckets = {
            "ctx.send": TokenBucket(LIMITS.send, now),
            "api calls": TokenBucket(CALLS, now),
            "others": TokenBucket(OTHERS, now),
        }
        self.burst: Burst | None = None

    def admit(self, msg: ToWorker, now: float) -> bool:
        """True when ``msg`` is within the budget; False: drop it (it is counted in the burst)."""
        kind = "ctx.send" if isinstance(msg, Log) else "api calls" if isinstance(msg, ApiCall) else "others"
        if self.buckets[kind].take(now):
            return True
        if self.burst is None:
            self.burst = Burst(first=now, last=now)
        self.burst.last = now
        self.burst.dropped[kind] = self.burst.dropped.get(kind, 0) + 1
        return False

    def overdue(self) -> Burst | None:
        """The current burst when it has lasted FAULT_AFTER seconds: it ends, and the strategy is faulty."""
        burst = self.burst
        if burst is None or burst.last - burst.first < FAULT_AFTER:
            return None
        self.burst = None
        return burst

    def ended(self, now: float, *, anyway: bool = False) -> Burst | None:
        """The burst that ended by ``now`` (QUIET seconds without a drop), or any burst when ``anyway``."""
        burst = self.burst
        if burst is None or (not anyway and now - burst.last < QUIET):
            return None
        self.burst = None
        return burst

