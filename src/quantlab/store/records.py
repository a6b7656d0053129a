"""The records that cross a process boundary, as msgspec Structs.

Every record carries ``version`` so a newer writer can add fields: an older
reader ignores what it does not know (msgspec's default), never crashes.
Stored as msgspec JSON, one file (or row) per record. Times are Unix seconds.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from quantlab.numbers import MIN_SECONDS, Setting

WorkerStatus = Literal["idle", "busy", "stopping"]
Desired = Literal["running", "stopped", "removed"]  #: removed: fenced, deleted once its holder lets go
StrategyStatus = Literal[
    "pending", "assigned", "starting", "running", "paused", "error", "stopping", "stopped", "failed"
]
ExitType = Literal["manual", "removed", "moved_away", "worker_exit", "error", "reassigned", "lease_lost"]
DirectorRole = Literal["leader", "standby"]


class Record(msgspec.Struct, kw_only=True):
    """Base of every stored record."""

    version: int = 1


# ---- Resource[WorkerSpec, WorkerState]: a worker as a resource ----


class Load(msgspec.Struct, kw_only=True):
    cpu: float = 0.0  #: percent of one core, worker plus its children
    memory: float = 0.0  #: MiB, proportional set size of the worker, its zygote and its children
    running_strategies: int = 0


class WorkerSpec(msgspec.Struct, kw_only=True):
    name: str
    region: str
    host: str
    pid: int
    max_strategies: int = 20
    accounts: list[str] = []  #: account names only, never secrets
    lease_ttl: float = 10.0  #: seconds the lease lasts without a renewal
    instance: str = ""  #: the holder: a token made once per worker process
    started: float = 0.0  #: when the holding process started (Unix time)
    #: The sandbox layers its strategy children run under ("landlock-7 seccomp"; quantlab/worker/sandbox.py).
    sandbox: str = ""


class WorkerState(msgspec.Struct, kw_only=True):
    status: WorkerStatus = "idle"
    load: Load = msgspec.field(default_factory=Load)
    lease_expires: float = 0.0  #: Unix time, for people: watchers judge the lease by ``renewals``
    last_seen: float = 0.0
    renewals: int = 0  #: bumped by every renewal; a lease whose count stops moving expires


class Resource(Record, kw_only=True):
    id: str
    spec: WorkerSpec
    state: WorkerState = msgspec.field(default_factory=WorkerState)


# ---- Work[StrategySpec, StrategyResult]: a strategy as a unit of work ----


class Placement(msgspec.Struct, kw_only=True):
    region: str | None = None
    worker: str | None = None


class StrategySpec(msgspec.Struct, kw_only=True):
    file: str
    params: dict[str, Any] = {}
    accounts: list[str] = []
    placement: Placement = msgspec.field(default_factory=Placement)
    # The settings people give (`qlab strategy assign`, a manifest, quantlab.toml): each one's
    # unit, range and help are its Setting, its default the field's (quantlab/store/strategy_settings.py).
    interval: Annotated[float, Setting(help="Seconds between ticks", unit="s", at_least=MIN_SECONDS)] = 1.0
    heartbeat_timeout: Annotated[float, Setting(
        help="Seconds without a completed heartbeat before the child is killed", unit="s",
        at_least=MIN_SECONDS)] = 60.0
    max_errors: Annotated[int, Setting(
        help="More errors than this within the error window fail it", unit="errors", at_least=1)] = 5
    error_window: Annotated[float, Setting(
        help="Seconds over which errors are counted", unit="s", at_least=MIN_SECONDS)] = 600.0
    backoff: Annotated[float, Setting(
        help="First restart delay in seconds, doubled per consecutive error", unit="s", at_least=0)] = 1.0
    backoff_max: float = 60.0  #: seconds; the cap of the doubled backoff, not offered as a setting
    stop_timeout: Annotated[float, Setting(
        help="Seconds st_exit may take before the child is killed", unit="s", at_least=MIN_SECONDS)] = 10.0
    restart_seq: int = 0  #: bumped by `qlab strategy restart`; a change restarts the child
    max_memory_mb: Annotated[float | None, Setting(
        help="Restart it when its child and the child's descendants use more resident memory", unit="MB",
        more_than=0, none="no limit", flag="--max-memory", metavar="MB")] = None
    # risk limits on its orders (quantlab/exchange/risk.py)
    max_order_notional: Annotated[float | None, Setting(
        help="Refuse an order worth more", unit="USDT", more_than=0, none="no limit", metavar="USDT")] = None
    max_orders_per_minute: Annotated[int | None, Setting(
        help="Refuse orders past this many a minute", unit="orders/min", more_than=0, none="no limit",
        metavar="N")] = None
    max_open_orders: Annotated[int | None, Setting(
        help="Refuse orders past this many of its own open", unit="orders", at_least=0, none="no limit",
        metavar="N")] = None
    cancel_stale_orders: Annotated[bool, Setting(
        help="Cancel its open orders from an older epoch before it starts")] = False


class Assignment(msgspec.Struct, kw_only=True):
    worker: str
    epoch: int  #: fencing token: a write from an older epoch is refused
    adopted: bool = False  #: the worker took it (quantlab/store/workmachine.py): its child may run


class ErrorInfo(msgspec.Struct, kw_only=True):
    message: str
    traceback: str = ""  #: the end of the traceback only
    ts: float = 0.0


class StrategyResult(msgspec.Struct, kw_only=True):
    status: StrategyStatus = "pending"
    pid: int | None = None
    heartbeats: int = 0
    last_heartbeat: float | None = None
    restarts: int = 0
    error_count: int = 0
    overruns: int = 0
    last_error: ErrorInfo | None = None
    reason: str = ""  #: why pending, failed or stopped, in words a person can act on
    updated: float = 0.0
    #: When ``status`` became what it is (Unix time; 0 in records written before it was kept).
    #: ``updated`` moves with every report, so only this tells how long a Work has been starting.
    since: float = 0.0
    #: Its child's % of one core and MiB of proportional set size, as its worker last measured
    #: them (quantlab/worker/load.py); None while no child runs or before the first measurement.
    cpu: float | None = None
    memory: float | None = None


class Work(Record, kw_only=True):
    id: str
    spec: StrategySpec
    desired: Desired = "running"
    epoch: int = 0  #: last epoch handed out; an assignment carries the epoch it was made at
    assignment: Assignment | None = None
    result: StrategyResult = msgspec.field(default_factory=StrategyResult)
    created: float = 0.0
    leader_epoch: int = 0  #: the director term that last placed or released it; older terms are refused


# ---- lifecycle values ----


class TickInfo(msgspec.Struct, kw_only=True):
    seq: int
    ts: float
    interval: float
    overruns: int = 0


class ExitReason(msgspec.Struct, kw_only=True):
    type: ExitType
    message: str = ""


class EventKind(enum.StrEnum):
    """Every kind of event `qlab events` shows; the values are the strings stored since the start."""

    # operator
    SUBMITTED = "submitted"
    STOP_REQUESTED = "stop_requested"
    START_REQUESTED = "start_requested"
    RESTART_REQUESTED = "restart_requested"
    REMOVED = "removed"
    MESSAGE_SENT = "message_sent"
    WORKER_STOP_REQUESTED = "worker_stop_requested"
    WORKER_REMOVED = "worker_removed"
    # director
    ASSIGNED = "assigned"
    REASSIGNED = "reassigned"
    PENDING = "pending"
    WORKER_LOST = "worker_lost"
    DIRECTOR_LEADING = "director_leading"
    DIRECTOR_STOPPED = "director_stopped"
    DIRECTOR_LOST = "director_lost"
    DIRECTOR_STANDBY = "director_standby"  #: a director found its leadership taken and stands by
    # worker
    WORKER_JOINED = "worker_joined"
    WORKER_STOPPED = "worker_stopped"
    LEASE_LOST = "lease_lost"  #: the worker's own lease ran out: it stopped its strategies
    STORE_WRITE_FAILED = "store_write_failed"  #: a write (state, status) failed; retried
    LOOP_ERROR = "loop_error"  #: a step of a director's or worker's loop raised; the loop went on (once per error)
    # one strategy on its worker
    ACCEPTED = "accepted"
    STARTED = "started"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    CRASHED = "crashed"
    ERROR = "error"
    MEMORY_LIMIT = "memory_limit"
    RESTARTED = "restarted"
    FAILED = "failed"
    STOPPED = "stopped"
    RELEASED = "released"
    STRATEGY_MESSAGE = "strategy_message"
    OVER_BUDGET = "over_budget"  #: a burst of its messages to the worker was over its budget and dropped
    # orders
    ORDERS_SETTLED = "orders_settled"  #: open order intents settled by query before a start
    STALE_ORDERS = "stale_orders"  #: open orders from an older epoch found before a start
    RISK_REFUSED = "risk_refused"  #: an order refused by a risk limit
    # the kill switch
    HALTED = "halted"
    RESUMED = "resumed"
    HALT_CANCELLED = "halt_cancelled"  #: open orders cancelled for a halt --cancel-orders
    # store
    QUARANTINED = "quarantined"
    FEED_LINE_SKIPPED = "feed_line_skipped"  #: a torn or undecodable change-feed line was skipped


class Event(Record, kw_only=True):
    ts: float
    kind: str  #: an EventKind value; a plain str so that a kind added later still reads
    strategy: str | None = None
    worker: str | None = None
    detail: str = ""


class Director(Record, kw_only=True):
    id: str
    host: str
    pid: int
    role: DirectorRole = "standby"
    started: float = 0.0
    last_seen: float = 0.0


class Leader(Record, kw_only=True):
    """The director leadership lease: one record, taken over only once it stops changing."""

    director: str  #: the leading director's id
    epoch: int  #: the term; every director write carries it
    host: str = ""
    pid: int = 0
    ttl: float = 10.0  #: seconds the lease lasts without a renewal
    renewed: float = 0.0  #: Unix time of the last renewal, for people
    renewals: int = 0  #: bumped by every renewal; a lease whose count stops moving expires


NO_STATE = msgspec.Raw(b"null")


class StrategyState(Record, kw_only=True):
    """A strategy's ctx.state, stamped with the epoch of its writer; older epochs are refused."""

    epoch: int
    state: msgspec.Raw = NO_STATE  #: the JSON object, kept as written; null when there is none (or forgotten)

    @property
    def empty(self) -> bool:
        return bytes(self.state) == b"null"


def flat(record: msgspec.Struct) -> dict[str, Any]:
    """A record as one flat dict: nested spec/state/result fields lifted to the top.

    `qlab status --json` promises the record fields by their own names
    (``region``, ``status``, ``heartbeats``...), not their nesting.
    """
    out: dict[str, Any] = {}
    for name, value in msgspec.to_builtins(record).items():
        if name in ("spec", "state", "result") and isinstance(value, dict):
            out.update(value)
        else:
            out[name] = value
    return out


T = TypeVar("T", bound=msgspec.Struct)

#: Decoders of the stored records, built at import on the importing thread: msgspec works out a
#: Struct's field types on first use, and a first decode racing that on another thread (API and
#: reconciliation threads read the store too) crashed a worker in msgspec (SIGSEGV).
_decoders: dict[type, msgspec.json.Decoder[Any]] = {
    cls: msgspec.json.Decoder(cls) for cls in (Work, Resource, Director, Leader, StrategyState, Event)
}


def decode(cls: type[T], data: bytes) -> T:
    decoder = _decoders.get(cls)
    if decoder is None:
        decoder = _decoders[cls] = msgspec.json.Decoder(cls)
    return decoder.decode(data)
