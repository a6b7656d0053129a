"""The operator's operations on the store: what the `qlab` commands do, without click.

Every function validates all of its input before it writes anything, so bad
input leaves the store as it was. Errors are QuantlabError subclasses whose
message is one line a person can act on; the CLI prints it as ``Error: ...``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, cast

import msgspec

from quantlab.config import Paths
from quantlab.errors import BadInput, NotFound
from quantlab.exchange import halts
from quantlab.store.records import (
    EventKind,
    Event,
    Placement,
    Resource,
    StrategyResult,
    StrategySpec,
    Work,
    flat,
)
from quantlab.store.store import Store, check_id

Clock = Callable[[], float]

#: The reason a Work shows until the director places it.
WAITING = "waiting for the director to place it"


class AssignOptions(msgspec.Struct, kw_only=True):
    """The options of `qlab strategy assign` (and of a manifest's table); None: the StrategySpec default."""

    accounts: list[str] | None = None  #: defaults to the file's ACCOUNTS literal
    region: str | None = None
    worker: str | None = None
    interval: float | None = None
    heartbeat_timeout: float | None = None
    max_errors: int | None = None
    error_window: float | None = None
    backoff: float | None = None
    max_memory_mb: float | None = None  #: None: no memory limit
    stop_timeout: float | None = None  #: seconds st_exit may take before SIGKILL
    max_order_notional: float | None = None  #: risk limits (quantlab/exchange/risk.py); None: no limit
    max_orders_per_minute: int | None = None
    max_open_orders: int | None = None
    cancel_stale_orders: bool | None = None  #: None: no (a manifest's defaults may say yes)


class AssignRequest(AssignOptions, kw_only=True):
    """What `qlab strategy assign` asks for."""

    file: str
    id: str | None = None  #: defaults to the file's stem
    params: dict[str, Any] = {}


def _strategy_id(work_id: str) -> str:
    # Checked here so the message says "strategy id", not the store's file-level wording.
    return check_id("strategy", work_id)


# ---- params ----


def _json(text: str) -> Any:
    # msgspec refuses NaN and out-of-range numbers, which the store could not write back.
    return msgspec.json.decode(text.encode())


_JSON_KINDS: dict[type, str] = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def parse_params(pairs: list[str], params_json: str | None) -> dict[str, Any]:
    """``--params JSON`` overlaid with each ``--param k=v`` (v parsed as JSON when it parses)."""
    params: dict[str, Any] = {}
    if params_json is not None:
        try:
            params = _json(params_json)
        except msgspec.DecodeError as e:
            raise BadInput(f"--params is not a JSON object: {e}") from e
        if not isinstance(params, dict):
            raise BadInput(f"--params is not a JSON object: got {_JSON_KINDS.get(type(params), 'a value')}")
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise BadInput(f"--param expects k=v, got {pair!r}")
        try:
            params[key] = _json(text)
        except msgspec.DecodeError:
            params[key] = text  # a bare word such as BTCUSDT is meant as a string
    return params


# ---- assign ----


def _check_positive(option: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise BadInput(f"--{option} must be positive, got {value:g}")


def _check_options(request: AssignRequest) -> None:
    _check_positive("interval", request.interval)
    _check_positive("heartbeat-timeout", request.heartbeat_timeout)
    _check_positive("error-window", request.error_window)
    _check_positive("max-memory", request.max_memory_mb)
    _check_positive("stop-timeout", request.stop_timeout)
    if request.backoff is not None and not (math.isfinite(request.backoff) and request.backoff >= 0):
        raise BadInput(f"--backoff must be zero or more, got {request.backoff:g}")
    if request.max_errors is not None and request.max_errors < 1:
        raise BadInput(f"--max-errors must be at least 1, got {request.max_errors}")
    _check_positive("max-order-notional", request.max_order_notional)
    _check_positive("max-orders-per-minute", request.max_orders_per_minute)
    if request.max_open_orders is not None and request.max_open_orders < 0:
        raise BadInput(f"--max-open-orders must be zero or more, got {request.max_open_orders}")


def _check_worker_pin(store: Store, worker: str) -> None:
    check_id("worker", worker)
    if store.find_resource(worker) is not None:
        return
    known = ", ".join(r.id for r in store.list_resources()) or "none registered"
    raise BadInput(f"unknown worker {worker!r}: known workers: {known}")


#: AssignRequest fields that go into the StrategySpec as they are, when given.
SPEC_OPTIONS = ("interval", "heartbeat_timeout", "max_errors", "error_window", "backoff", "max_memory_mb", "stop_timeout",
                "max_order_notional", "max_orders_per_minute", "max_open_orders")


def _spec(request: AssignRequest, path: Path) -> StrategySpec:
    """The StrategySpec with every option the request left out at its default."""
    from quantlab.child import loader  # with ast and subprocess (Node): only commands that assign need it

    options = {
        name: value
        for name in SPEC_OPTIONS
        if (value := getattr(request, name)) is not None
    }
    accounts = request.accounts if request.accounts is not None else loader.default_accounts(path)
    return StrategySpec(
        file=str(path),
        params=request.params,
        accounts=accounts,
        placement=Placement(region=request.region, worker=request.worker),
        cancel_stale_orders=bool(request.cancel_stale_orders),
        **options,
    )


def _assign_id(given: str | None, path: Path) -> str:
    if given is not None:
        return _strategy_id(given)
    try:
        return _strategy_id(path.stem)
    except BadInput as e:
        raise BadInput(f"{e}; name it with --id") from e


def checked_spec(store: Store, request: AssignRequest, path: Path) -> tuple[str, StrategySpec]:
    """The id and spec ``request`` asks for, every option checked (``path``: a checked strategy file)."""
    work_id = _assign_id(request.id, path)
    _check_options(request)
    if request.worker is not None:
        _check_worker_pin(store, request.worker)
    return work_id, _spec(request, path)


def new_work(work_id: str, spec: StrategySpec, now: float) -> Work:
    """A Work to add: desired=running, waiting for the director."""
    return Work(
        id=work_id, spec=spec, desired="running", created=now,
        result=StrategyResult(status="pending", reason=WAITING, updated=now),
    )


def assign(store: Store, request: AssignRequest, *, clock: Clock = time.time) -> Work:
    """Write a new Work with desired=running; the director places it, a worker starts it."""
    from quantlab.child import loader

    path = loader.check_file(request.file)
    work_id, spec = checked_spec(store, request, path)
    now = clock()
    work = new_work(work_id, spec, now)
    store.add_work(work)
    store.append_event(Event(ts=now, kind=EventKind.SUBMITTED, strategy=work_id, detail=str(path)))
    return work


# ---- lifecycle of one strategy ----


def _event(store: Store, clock: Clock, kind: EventKind, work_id: str) -> None:
    store.append_event(Event(ts=clock(), kind=kind, strategy=work_id))


def stop(store: Store, work_id: str, *, clock: Clock = time.time) -> Work:
    """desired=stopped; the worker calls st_exit(reason=manual). Unplaced works stop at once."""

    def update(work: Work) -> Work:
        if work.assignment is not None:
            return msgspec.structs.replace(work, desired="stopped")
        result = msgspec.structs.replace(
            work.result, status="stopped", reason="stopped by operator", updated=clock()
        )
        return msgspec.structs.replace(work, desired="stopped", result=result)

    work = store.update_work(_strategy_id(work_id), update)
    _event(store, clock, EventKind.STOP_REQUESTED, work_id)
    return work


def wanted_running(work: Work, now: float) -> Work:
    """desired=running; a failed or stopped work goes back to placement with a fresh error count."""
    if work.result.status not in ("failed", "stopped"):
        return msgspec.structs.replace(work, desired="running")
    result = msgspec.structs.replace(work.result, status="pending", error_count=0, reason=WAITING, updated=now)
    return msgspec.structs.replace(work, desired="running", assignment=None, result=result)


def start(store: Store, work_id: str, *, clock: Clock = time.time) -> Work:
    """Run a stopped or failed strategy again (no-op for one that runs)."""
    work = store.update_work(_strategy_id(work_id), lambda w: wanted_running(w, clock()))
    _event(store, clock, EventKind.START_REQUESTED, work_id)
    return work


def restart(store: Store, work_id: str, *, clock: Clock = time.time) -> Work:
    """Like start, and a running child is restarted: its worker sees restart_seq change."""

    def update(work: Work) -> Work:
        work = wanted_running(work, clock())
        spec = msgspec.structs.replace(work.spec, restart_seq=work.spec.restart_seq + 1)
        return msgspec.structs.replace(work, spec=spec)

    work = store.update_work(_strategy_id(work_id), update)
    _event(store, clock, EventKind.RESTART_REQUESTED, work_id)
    return work


def remove(store: Store, work_id: str, *, clock: Clock = time.time) -> None:
    """Delete the Work and its state; its worker stops a child whose Work vanished."""
    store.remove_work(_strategy_id(work_id))
    _event(store, clock, EventKind.REMOVED, work_id)


def send(store: Store, work_id: str, data: Any, *, clock: Clock = time.time) -> None:
    """Queue ``data`` for the strategy's st_message hook; its worker delivers it."""
    store.get_work(_strategy_id(work_id))
    store.push_message(work_id, data)
    _event(store, clock, EventKind.MESSAGE_SENT, work_id)


def log_file(store: Store, paths: Paths, work_id: str) -> Path:
    """The strategy's own log; NotFound when there is neither a log nor a strategy of that id."""
    path = paths.strategy_log(_strategy_id(work_id))
    if not path.exists() and store.find_work(work_id) is None:
        raise NotFound(f"no strategy {work_id!r}")
    return path


# ---- the view ----


def strategy_view(work: Work) -> dict[str, Any]:
    """One Work as flat fields, plus where it runs (``worker``) and where it may (``region``)."""
    entry = flat(work)
    entry["worker"] = work.assignment.worker if work.assignment else None
    entry["region"] = work.spec.placement.region
    return entry


def worker_view(resource: Resource, now: float) -> dict[str, Any]:
    entry = flat(resource)
    entry["alive"] = resource.state.lease_expires > now
    return entry


def snapshot(store: Store, now: float) -> dict[str, Any]:
    """Directors, workers, strategies and halts as `qlab status --json` prints them."""
    found, problem = halts.read_or_closed(store)
    return {
        "directors": [msgspec.to_builtins(d) for d in store.list_directors()],
        "workers": [worker_view(r, now) for r in store.list_resources()],
        "strategies": [strategy_view(w) for w in store.list_works()],
        "halts": [{**msgspec.to_builtins(h), "problem": problem} for h in found.halts],
    }


# ---- the kill switch (issue 8) ----


def halt(store: Store, scope: str, target: str, *, cancel_orders: bool = False, clock: Clock = time.time) -> str:
    """Write a halt, and its event; what was done, in words."""
    written = halts.halt(store, cast(halts.Scope, scope), target, cancel_orders=cancel_orders, clock=clock)
    whose = "the strategy's" if scope == "strategy" else "its accounts'"
    also = f"; {whose} open orders are being cancelled" if cancel_orders else ""
    message = f"halted: {written.label}: calls that open or increase exposure are refused{also}"
    _halt_event(store, EventKind.HALTED, scope, target, message, clock)
    return message


def resume(store: Store, scope: str, target: str, *, clock: Clock = time.time) -> str:
    label = "all" if scope == "all" else f"{scope} {target}"
    if not halts.resume(store, cast(halts.Scope, scope), target):
        raise NotFound(f"no halt on {label}")
    _halt_event(store, EventKind.RESUMED, scope, target, f"resumed: {label}", clock)
    return f"resumed: {label}"


def _halt_event(store: Store, kind: EventKind, scope: str, target: str, detail: str, clock: Clock) -> None:
    store.append_event(Event(ts=clock(), kind=kind, strategy=target if scope == "strategy" else None,
                             worker=target if scope == "worker" else None, detail=detail))


def problems(snapshot: dict[str, Any], now: float, pending_after: float) -> list[str]:
    """What `qlab status --check` fails on: failed strategies, and strategies pending too long."""
    found = []
    for entry in snapshot["strategies"]:
        if entry["status"] == "failed":
            found.append(f"{entry['id']} failed: {entry['reason']}")
        elif entry["status"] == "pending" and now - (entry["updated"] or entry["created"]) > pending_after:
            found.append(f"{entry['id']} pending for {now - (entry['updated'] or entry['created']):.0f}s: {entry['reason']}")
    return found


# ---- workers ----


def _is_quantlab(pid: int) -> bool:
    """Whether ``pid`` still runs quantlab: a dead worker's pid may belong to anything by now."""
    import psutil  # only `qlab worker stop` needs it

    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # the kill below reports the permission problem
    return "qlab" in cmdline or "quantlab" in cmdline


def stop_worker(store: Store, worker_id: str, *, host: str, clock: Clock = time.time) -> str:
    """SIGTERM a worker on ``host``, this one (it drains its strategies); returns what was done."""
    import signal  # only `qlab worker stop` signals anything

    resource = store.find_resource(check_id("worker", worker_id))
    if resource is None:
        raise NotFound(f"no worker {worker_id!r}")
    pid = resource.spec.pid
    if resource.spec.host != host:
        raise BadInput(f"worker {worker_id} runs on host {resource.spec.host}: stop it there")
    try:
        if not _is_quantlab(pid):
            raise ProcessLookupError(pid)
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        store.remove_resource(worker_id)
        store.append_event(Event(ts=clock(), kind=EventKind.WORKER_REMOVED, worker=worker_id, detail="stale record"))
        return f"worker {worker_id} (pid {pid}) was not running: removed its stale record"
    except PermissionError as e:
        raise BadInput(f"cannot signal worker {worker_id} (pid {pid}): permission denied") from e
    store.append_event(Event(ts=clock(), kind=EventKind.WORKER_STOP_REQUESTED, worker=worker_id))
    return f"worker {worker_id} (pid {pid}) is stopping"
