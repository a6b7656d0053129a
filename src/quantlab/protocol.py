"""The worker <-> strategy-child channel: msgspec msgpack tagged unions.

Wire format: one ZeroMQ frame per message, a msgpack map whose ``type`` key
names the message (the struct tag) and whose other keys are the fields below.
On the worker's ROUTER socket each frame is preceded by the routing id of the
connection it came on.

worker -> child: Init, Tick, Message, Stop, ApiResult
child -> worker: Hello, Ready, Heartbeat, TickExpired, ApiCall, Log, Error, Exited

Who is speaking: every strategy child of a worker can reach its channel (they
run as one user), so a connection's routing id says nothing about who opened
it. Each child connects under a routing id of 128 random bits of its own (no
peer can take it first) and says ``Hello(pid, token)`` first. The token is a
secret of 128 random bits the worker makes for that one incarnation and hands
over only through the zygote's fork (in memory for a Python child, on a pipe
that is its stdin for a Node child: never argv, the environment or a file).
The worker binds the connection to the strategy when the token is the one of
an incarnation it forked and is waiting for, once; every other message from a
connection not bound so, and every Hello with a wrong or used token, is
dropped and counted (quantlab/worker/peers.py). A message from an older
incarnation's connection is dropped the same way.

Hostile frames: a frame over MAX_FRAME closes the sender's connection unread
(zmq.MAXMSGSIZE); one over its kind's limit (``frame_limit``), one that does
not decode, and any exception while handling one are charged to the sender
as its error when it is bound, and dropped and counted when it is not.

Budgets: a child's ctx.send messages are limited by ``Limits.send`` (a token
bucket), checked in the child (the strategy gets OverBudget in its own code)
and again by the worker, which drops what is over and counts it; every other
kind has a budget of the worker's own (quantlab/worker/intake.py). The limits
travel in Init, so a Node child checks the same numbers, ctx.log's
(``Limits.log``, quantlab/child/logfile.py) among them.

Delivery: the worker keeps a bounded outbox per child and sends with
ROUTER_MANDATORY, so a message to a child that has not connected yet (before
Hello) or whose pipe is full waits in the outbox and is sent again on the
next pass; nothing is dropped. A child whose outbox overflows is killed as
hung. A Stop may come before Init (the Work moved away before the child
connected): the child then answers Exited at once without running a hook.

Strategy state travels as JSON bytes, validated in the child (a value that is
not JSON is the strategy's error, with the key path in the message), so the
worker stores what it received without re-encoding it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from quantlab.store.records import ExitReason, TickInfo


class _Msg(msgspec.Struct, tag_field="type", kw_only=True):
    pass


class Budget(msgspec.Struct, frozen=True):
    """``rate`` messages a second on average, ``burst`` at once at most (a token bucket)."""

    rate: float
    burst: int


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """What a child may send its worker: given in Init, so both ends check the same numbers."""

    send: Budget = Budget(10.0, 100)  #: ctx.send messages
    #: Characters of ctx.log and print() output (they go to the strategy's own file, not the worker,
    #: but share its disk with the store's syncs): what is over is dropped, and a line says how much.
    log: Budget = Budget(1_000_000.0, 8_000_000)
    send_bytes: int = 8 << 10  #: one ctx.send message, as its Log frame (bytes)
    call_bytes: int = 64 << 10  #: one API call, as its ApiCall frame (bytes)
    state_bytes: int = 4 << 20  #: ctx.state as JSON (bytes)
    error_chars: int = 8000  #: an Error's message and its traceback, each (characters)


LIMITS = Limits()
#: The largest frame the worker's channel reads (zmq.MAXMSGSIZE): a state at its limit and the
#: rest of its Heartbeat. A larger frame closes its sender's connection before it is read.
MAX_FRAME = LIMITS.state_bytes + (64 << 10)


# ---- worker -> child ----


class Init(_Msg, tag="init"):
    id: str
    file: str
    params: dict[str, Any]
    state: dict[str, Any]
    accounts: list[str]
    log_path: str
    log_max_bytes: int = 10_000_000  #: the strategy's log rotates past this size
    log_keep: int = 5  #: rotated files kept
    #: Reconciliation before the start (quantlab/exchange/reconcile.py): the strategy's open
    #: orders and its accounts' positions, each with its "account" (ctx.open_orders, ctx.positions).
    open_orders: list[dict[str, Any]] = []
    positions: list[dict[str, Any]] = []
    limits: Limits = LIMITS  #: what the child may send (checked in the child, and again by the worker)
    #: The child's and its worker's pids as the machine numbers them (``qlab status``, ``ps``): in its
    #: PID namespace the child is 1 and its parent 0 (quantlab/worker/pidns.py). 0: not known.
    pid: int = 0
    worker_pid: int = 0


class Tick(_Msg, tag="tick"):
    tick: TickInfo
    #: time.monotonic() until which the sender's lease holds (one host: one CLOCK_MONOTONIC).
    #: A child that gets the tick later does not run it and answers TickExpired.
    lease_until: float
    halted: bool = False  #: a halt covers this strategy (ctx.halted): orders that open exposure are refused


class Message(_Msg, tag="message"):
    data: Any


class Stop(_Msg, tag="stop"):
    reason: ExitReason


class ApiResult(_Msg, tag="api_result"):
    call_id: int
    ok: bool
    result: Any = None
    error: str = ""
    ret_code: int = 0
    kind: str = "api"  #: api | network | permission | halted: which ApiError subclass to raise


# ---- child -> worker ----


class Hello(_Msg, tag="hello"):
    pid: int
    token: bytes  #: the incarnation's secret, from its fork: binds this connection to the strategy


class Ready(_Msg, tag="ready"):
    pass


class Heartbeat(_Msg, tag="heartbeat"):
    seq: int
    state: bytes | None = None  #: JSON of ctx.state, only when it changed since the last one
    hook_seconds: float | None = None  #: how long st_heartbeat took in the child (None: not measured)


class TickExpired(_Msg, tag="tick_expired"):
    """Tick ``seq`` arrived after its lease_until: st_heartbeat did not run."""

    seq: int


class ApiCall(_Msg, tag="api_call"):
    call_id: int
    account: str
    method: str
    kwargs: dict[str, Any]


class Log(_Msg, tag="log"):
    data: Any  #: what the strategy passed to ctx.send() (checked to be JSON in the child); recorded as an event


class Error(_Msg, tag="error"):
    hook: str
    message: str
    traceback: str


class Exited(_Msg, tag="exited"):
    reason: ExitReason
    state: bytes | None = None  #: JSON of the final ctx.state after st_exit, when it changed


ToChild = Init | Tick | Message | Stop | ApiResult
ToWorker = Hello | Ready | Heartbeat | TickExpired | ApiCall | Log | Error | Exited

_encoder = msgspec.msgpack.Encoder()
encode = _encoder.encode
decode_to_child = msgspec.msgpack.Decoder(ToChild).decode
decode_to_worker = msgspec.msgpack.Decoder(ToWorker).decode

#: The largest frame of each child->worker kind (bytes); a kind with free-form fields is bounded
#: by what Limits lets a child send, the rest by what their fields can hold.
_FRAME_LIMITS: dict[type, int] = {
    Hello: 256,
    Ready: 64,
    TickExpired: 64,
    Heartbeat: MAX_FRAME,
    Exited: MAX_FRAME,
    ApiCall: LIMITS.call_bytes,
    Log: LIMITS.send_bytes,
    Error: 8 * LIMITS.error_chars + 1024,  # two fields of error_chars characters, up to 4 UTF-8 bytes each
}


def frame_limit(kind: type[ToWorker]) -> int:
    """The largest frame a message of ``kind`` may come in."""
    return _FRAME_LIMITS[kind]


class TokenBucket:
    """A Budget kept: ``take`` is True while the budget allows one more message (or ``cost`` of them) now."""

    def __init__(self, budget: Budget, now: float) -> None:
        self.budget = budget
        self.tokens = float(budget.burst)
        self.at = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """``cost`` (messages, or characters) within the budget now: taken; False, and nothing taken, otherwise."""
        self.tokens = min(float(self.budget.burst), self.tokens + max(0.0, now - self.at) * self.budget.rate)
        self.at = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True
