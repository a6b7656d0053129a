"""The strategy child: one incarnation of one strategy, driven by its worker.

    child                              worker
    Hello(pid, token)           ->     (binds this connection to the strategy: quantlab/protocol.py)
                                <-     Init(file, params, state, accounts)
    load file, st_init(ctx)
    Ready                       ->
                                <-     Tick            (only after the last one was answered)
    st_heartbeat(ctx, tick)
    Heartbeat(seq, state?,      ->     (or TickExpired(seq) when the tick's lease_until has passed)
              hook_seconds)
                                <-     Message         -> st_message(ctx, data), if defined
                                <-     Stop(reason)    -> st_exit(ctx, reason)
    Exited(reason)              ->     and exit 0

An exception in a hook is sent as Error (message and traceback tail); the
child then gives st_exit a chance (reason type "error") and exits 1. The
worker counts the error and restarts it. A ``ctx.state`` that is not JSON is
such an error (the message names the key path); the state is not sent, so
the store keeps the last good one.

A Stop that comes instead of Init (the Work moved away before the child
connected) is answered with Exited at once: nothing ran, nothing to clean up.
A Stop that comes while st_init runs is read after it: st_exit still runs.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import os
import secrets
import time
import traceback
from types import ModuleType
from typing import Any

import msgspec
import zmq

from quantlab.errors import ApiError, ApiHaltedError, ApiNetworkError, ApiPermissionError, ApiRiskError, OverBudget
from quantlab.store.records import ExitReason
from quantlab.protocol import (
    ApiCall,
    ApiResult,
    Error,
    Exited,
    Heartbeat,
    Hello,
    Init,
    Limits,
    Log,
    Message,
    Ready,
    Stop,
    Tick,
    TickExpired,
    ToChild,
    TokenBucket,
    decode_to_child,
    encode,
)
from quantlab.child.context import Api, StrategyContext
from quantlab.child.jsoncheck import NotJson, to_json
from quantlab.child.loader import load_module
from quantlab.child.logfile import StrategyLog, log_file
from quantlab.exchange.methods import PUBLIC_METHODS

#: Lines of traceback kept in last_error.
TRACEBACK_LINES = 12
#: Milliseconds the socket may keep unsent messages (Exited, Error) after close.
LINGER_MS = 2000

_API_ERRORS: dict[str, type[ApiError]] = {
    "api": ApiError,
    "network": ApiNetworkError,
    "permission": ApiPermissionError,
    "halted": ApiHaltedError,
    "risk": ApiRiskError,
}


class HookFailed(Exception):
    """A strategy hook raised; already reported to the worker."""


class Connection:
    """The child's DEALER socket; API calls wait here for their answer."""

    def __init__(self, endpoint: str) -> None:
        # pyzmq's backend classes, without its Python layer over them (socket tracking, option
        # attributes, enums): run for the first time in each child, that layer would cost it 0.17 MB
        # of private memory, for nothing this socket uses.
        self.context = zmq.backend.Context()
        self.socket = zmq.backend.Socket(self.context, zmq.DEALER)
        # 128 random bits: no other peer can take this routing id before us. The leading byte
        # keeps it off the ids starting with a zero byte, which ZeroMQ keeps for those it assigns.
        self.socket.set(zmq.ROUTING_ID, b"c" + secrets.token_bytes(16))
        self.socket.set(zmq.LINGER, LINGER_MS)
        self.socket.connect(endpoint)
        self.backlog: collections.deque[ToChild] = collections.deque()
        self.next_call = 0
        self.limits = Limits()  #: the worker's, from Init

    def send(self, msg: msgspec.Struct) -> None:
        self.socket.send(encode(msg))

    def recv(self) -> ToChild:
        if self.backlog:
            return self.backlog.popleft()
        return decode_to_child(self.socket.recv())

    def call_api(self, account: str, method: str, kwargs: dict[str, Any]) -> Any:
        self.next_call += 1
        call_id = self.next_call
        frame = encode(ApiCall(call_id=call_id, account=account, method=method, kwargs=kwargs))
        if len(frame) > self.limits.call_bytes:
            raise ApiError(f"{method}: its arguments take {len(frame):,} bytes, over the limit of "
                           f"{self.limits.call_bytes:,} for one call", 0)
        self.socket.send(frame)
        while True:
            msg = decode_to_child(self.socket.recv())
            if isinstance(msg, ApiResult) and msg.call_id == call_id:
                if msg.ok:
                    return msg.result
                raise _API_ERRORS.get(msg.kind, ApiError)(msg.error, msg.ret_code)
            if not isinstance(msg, ApiResult):
                self.backlog.append(msg)  # a Stop or Message meanwhile: handled after the hook

    def close(self) -> None:
        self.socket.close()
        self.context.term()


class Runner:
    def __init__(self, conn: Connection, init: Init) -> None:
        self.conn = conn
        self.init = init
        self._loop: asyncio.AbstractEventLoop | None = None  #: made for the first async hook (most have none)
        log = StrategyLog(init, log_file())
        log.capture_print()
        self.ctx = StrategyContext(
            id=init.id,
            params=init.params,
            state=init.state,
            log=lambda: log.logger,
            api=Api(init.accounts, conn.call_api, PUBLIC_METHODS),
            send=Sender(conn, init.limits).send,
            open_orders=init.open_orders,
            positions=init.positions,
            pid=init.pid,
            worker_pid=init.worker_pid,
        )
        self.module: ModuleType | None = None
        self.sent_state = b""

    def run(self) -> int:
        try:
            self.module = self._guard("load", load_module, self.init.file)
            self._call("st_init", self.ctx)
            self.conn.send(Ready())
            return self._serve()
        except HookFailed:
            return 1

    def _serve(self) -> int:
        while True:
            msg = self.conn.recv()
            if isinstance(msg, Tick):
                if time.monotonic() >= msg.lease_until:
                    # Our worker's lease ran out before we got here (we or it were paused): the
                    # strategy may run elsewhere by now, so this tick must not run; say so.
                    self.conn.send(TickExpired(seq=msg.tick.seq))
                    continue
                self.ctx.halted = msg.halted
                started = time.perf_counter()
                self._call("st_heartbeat", self.ctx, msg.tick)
                took = time.perf_counter() - started  # the hook alone: the worker's tick latency adds the channel
                self.conn.send(Heartbeat(seq=msg.tick.seq, state=self._changed_state("st_heartbeat"), hook_seconds=took))
            elif isinstance(msg, Message):
                if hasattr(self.module, "st_message"):
                    self._call("st_message", self.ctx, msg.data)
            elif isinstance(msg, Stop):
                return self._finish(msg.reason)
            if self.ctx.stop_reason is not None:
                return self._finish(ExitReason(type="manual", message=self.ctx.stop_reason))

    def _finish(self, reason: ExitReason) -> int:
        self._call("st_exit", self.ctx, reason)
        self.conn.send(Exited(reason=reason, state=self._changed_state("st_exit")))
        return 0

    def _changed_state(self, after: str) -> bytes | None:
        """ctx.state as JSON when it changed since the last one sent; HookFailed when it is not JSON."""
        state = self._guard(f"ctx.state after {after}", _state_json, self.ctx.state, self.init.limits.state_bytes)
        if state == self.sent_state:
            return None
        self.sent_state = state
        return state

    def _call(self, hook: str, *args: Any) -> None:
        fn = getattr(self.module, hook)
        result = self._guard(hook, fn, *args)
        if inspect.isawaitable(result):
            self._guard(hook, self._run_until_complete, result)

    def _run_until_complete(self, awaitable: Any) -> Any:
        # The loop costs a child most of a megabyte of private memory: only async strategies get one.
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(awaitable)

    def _guard(self, hook: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:
            self._report(hook, e)
            raise HookFailed from e

    def _report(self, hook: str, e: Exception) -> None:
        tail = "".join(traceback.format_exception(e)).splitlines()[-TRACEBACK_LINES:]
        message = f"{hook}: {e}" if isinstance(e, NotJson) else f"{hook}: {type(e).__name__}: {e}"
        self.ctx.log.error("%s\n%s", message, "\n".join(tail))
        chars = self.init.limits.error_chars  # the worker takes no more: the log above has it all
        self.conn.send(Error(hook=hook, message=message[:chars], traceback="\n".join(tail)[-chars:]))
        if hook not in ("st_exit", "load", "ctx.state after st_exit"):
            self._last_words(message)

    def _last_words(self, message: str) -> None:
        """After an error, st_exit still gets its chance to clean up."""
        try:
            result = self.module.st_exit(self.ctx, ExitReason(type="error", message=message))  # type: ignore[union-attr]
            if inspect.isawaitable(result):
                self._run_until_complete(result)
        except Exception:
            self.ctx.log.exception("st_exit failed after an error")


class Sender:
    """ctx.send's way to the worker: a Log frame, within the size and rate the worker takes (Init.limits)."""

    def __init__(self, conn: Connection, limits: Limits) -> None:
        self.conn = conn
        self.limits = limits
        self.bucket = TokenBucket(limits.send, time.monotonic())

    def send(self, data: Any) -> None:
        frame = encode(Log(data=data))
        if len(frame) > self.limits.send_bytes:
            raise OverBudget(f"ctx.send: the message takes {len(frame):,} bytes, over the limit of "
                             f"{self.limits.send_bytes:,}; it was not sent")
        if not self.bucket.take(time.monotonic()):
            budget = self.limits.send
            raise OverBudget(f"ctx.send: over the budget of {budget.rate:g} messages a second (bursts of "
                             f"{budget.burst}); this one was not sent")
        self.conn.socket.send(frame)


def _state_json(state: Any, limit: int) -> bytes:
    if not isinstance(state, dict):
        raise NotJson(f"state: must be a dict, not {type(state).__name__}")
    data = to_json(state, "state")
    if len(data) > limit:
        raise NotJson(f"state: {len(data):,} bytes of JSON, over the limit of {limit:,}")
    return data


def run_child(endpoint: str, token: bytes) -> int:
    """One incarnation: ``token`` is its secret from the worker, said in Hello (quantlab/protocol.py)."""
    conn = Connection(endpoint)
    try:
        conn.send(Hello(pid=os.getpid(), token=token))
        first = conn.recv()
        if isinstance(first, Stop):
            conn.send(Exited(reason=first.reason))
            return 0
        if not isinstance(first, Init):
            return 2
        conn.limits = first.limits
        return Runner(conn, first).run()
    finally:
        conn.close()
