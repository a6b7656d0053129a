"""The worker <-> strategy-child channel: msgspec msgpack tagged unions.

Wire format: one ZeroMQ frame per message, a msgpack map whose ``type`` key
names the message (the struct tag) and whose other keys are the fields below.
On the worker's ROUTER socket each frame is preceded by the child's routing
id, ``b"<strategy id>#<incarnation>"``, so a message from an old incarnation
is recognised and dropped.

worker -> child: Init, Tick, Message, Stop, ApiResult
child -> worker: Hello, Ready, Heartbeat, TickExpired, ApiCall, Log, Error, Exited

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
