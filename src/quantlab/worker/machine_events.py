"""The events a strategy's state machine takes and the actions it returns (quantlab/worker/machine.py).

Events are what happened (a child's message or exit, time passing, a wish
from the store); actions are what the StrategyManager must do (fork, send,
kill, record). Both are plain frozen Structs so a test can write them out.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from quantlab.store.records import EventKind, ExitReason

Outcome = Literal["stopped", "failed", "released", "handed_back"]


class Charge(msgspec.Struct, frozen=True):
    """An error charged to the strategy: the event kind it is recorded as, and what happened."""

    kind: EventKind
    message: str
    traceback: str = ""


# ---- events ----


class Due(msgspec.Struct, frozen=True):
    """Time passed: ticks, hang detection, stop deadlines, restarts."""


class Spawned(msgspec.Struct, frozen=True):
    pid: int


class SpawnFailed(msgspec.Struct, frozen=True):
    error: str
    rand: float = 0.5  #: uniform in [0, 1): the backoff's jitter


class HelloCame(msgspec.Struct, frozen=True):
    pass


class ReadyCame(msgspec.Struct, frozen=True):
    pass


class Beat(msgspec.Struct, frozen=True):
    seq: int


class CallAsked(msgspec.Struct, frozen=True):
    """The child sent an exchange call to the worker; it waits for the answer."""


class CallAnswered(msgspec.Struct, frozen=True):
    """The worker sent the child the answer to one of its exchange calls."""


class TickRefused(msgspec.Struct, frozen=True):
    """The child did not run tick ``seq``: its lease had run out when it arrived."""

    seq: int


class Reported(msgspec.Struct, frozen=True):
    message: str
    traceback: str = ""


class Confirmed(msgspec.Struct, frozen=True):
    """The child ran st_exit (Exited)."""

    reason: ExitReason


class Gone(msgspec.Struct, frozen=True):
    """The child was reaped; ``how`` is 'exit code 3' or 'signal SIGKILL'."""

    how: str
    rand: float = 0.5


class StopWanted(msgspec.Struct, frozen=True):
    reason: ExitReason
    by_operator: bool = False  #: the operator's desired=stopped: a StartWanted while it runs cancels it


class StartWanted(msgspec.Struct, frozen=True):
    """The operator wants it running again while the operator's stop is still under way."""


class LeaseLapsed(msgspec.Struct, frozen=True):
    """This worker's lease ran out while the strategy ran under it: none of its calls may leave any more."""


class ReconcileStarted(msgspec.Struct, frozen=True):
    """The strategy's accounts are being reconciled before its child is forked (on the API pool)."""


class ReconcileEnded(msgspec.Struct, frozen=True):
    """The reconciliation came back: the fork goes on, or (not ``ok``) it is tried again later."""

    ok: bool


class InitWaits(msgspec.Struct, frozen=True):
    """The child said Hello, but its Init could not be built (the store failed reading its state)."""


class InitSent(msgspec.Struct, frozen=True):
    """The Init that waited went out."""


class RestartWanted(msgspec.Struct, frozen=True):
    """`qlab strategy restart`: a clean stop, then a fresh start with a fresh error count."""


class Fault(msgspec.Struct, frozen=True):
    """Something the strategy did that the worker will not have (hung, over memory, bad message): kill it."""

    charge: Charge


class Fatal(msgspec.Struct, frozen=True):
    """The strategy cannot run at all (its state is unreadable): kill it and fail."""

    message: str


Event = (
    Due | Spawned | SpawnFailed | HelloCame | ReadyCame | Beat | TickRefused | Reported | Confirmed | Gone
    | StopWanted | StartWanted | RestartWanted | Fault | Fatal | LeaseLapsed | ReconcileStarted | ReconcileEnded
    | InitWaits | InitSent | CallAsked | CallAnswered
)


# ---- actions ----


class Spawn(msgspec.Struct, frozen=True):
    incarnation: int


class SendInit(msgspec.Struct, frozen=True):
    pass


class SendTick(msgspec.Struct, frozen=True):
    seq: int
    overruns: int


class SendStop(msgspec.Struct, frozen=True):
    reason: ExitReason


class Kill(msgspec.Struct, frozen=True):
    pid: int
    why: str


class Note(msgspec.Struct, frozen=True):
    """An event for `qlab events`."""

    kind: EventKind
    detail: str = ""


class Mark(msgspec.Struct, frozen=True):
    """A WORKER line in the strategy's own log."""

    text: str


class Counted(msgspec.Struct, frozen=True):
    """An error was counted: ``count`` errors within the window now; 0 clears the count."""

    count: int
    error: Charge | None = None


class Beaten(msgspec.Struct, frozen=True):
    """A heartbeat completed (its state may be saved)."""

    first: bool


class Publish(msgspec.Struct, frozen=True):
    """The status changed: show it now."""


class Settle(msgspec.Struct, frozen=True):
    outcome: Outcome
    reason: str
    by_strategy: bool = False  #: the strategy stopped itself: its Work is to stay stopped


Action = Spawn | SendInit | SendTick | SendStop | Kill | Note | Mark | Counted | Beaten | Publish | Settle
