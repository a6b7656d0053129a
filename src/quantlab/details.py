"""`qlab strategy show ID`: everything about one strategy in one place, as a dict `--json` prints as it is."""

from __future__ import annotations

from typing import Any

import msgspec

from quantlab.config import Paths
from quantlab.exchange.risk import RiskLimits
from quantlab.store.records import Work
from quantlab.store.store import Store, check_id
from quantlab.store.strategy_settings import spec_settings

#: Events `strategy show` lists, the latest last.
RECENT_EVENTS = 10
#: The settings shown as risk limits: the ones the risk checks read (quantlab.exchange.risk).
RISK_LIMITS = tuple(RiskLimits.__struct_fields__)


def describe(store: Store, paths: Paths, work_id: str, now: float, *, events: int = RECENT_EVENTS) -> dict[str, Any]:
    """The strategy ``work_id``: where it runs, since when, its settings, its last error and recent events."""
    work = store.get_work(check_id("strategy", work_id))
    worker = work.assignment.worker if work.assignment else None
    resource = store.find_resource(worker) if worker else None
    result = work.result
    since = result.since or None
    log = paths.strategy_log(work.id)
    settings = {s.name: getattr(work.spec, s.name) for s in spec_settings()}
    return {
        "id": work.id,
        "status": result.status,
        "desired": work.desired,
        "reason": result.reason,
        "file": work.spec.file,
        "worker": worker,
        "host": resource.spec.host if resource else None,
        "pid": result.pid,
        "since": since,
        "uptime": now - since if since and result.status == "running" else None,
        "cpu": result.cpu,
        "memory": result.memory,
        "log": str(log),
        "log_here": log.exists(),
        "params": work.spec.params,
        "accounts": work.spec.accounts,
        "placement": msgspec.to_builtins(work.spec.placement),
        "settings": {k: v for k, v in settings.items() if k not in RISK_LIMITS},
        "risk_limits": {k: settings[k] for k in RISK_LIMITS},
        "heartbeats": result.heartbeats,
        "last_heartbeat": result.last_heartbeat,
        "restarts": result.restarts,
        "error_count": result.error_count,
        "last_error": msgspec.to_builtins(result.last_error) if result.last_error else None,
        "epoch": work.epoch,
        "events": [msgspec.to_builtins(e) for e in _recent_events(store, work, events)],
    }


def _recent_events(store: Store, work: Work, count: int) -> list[Any]:
    found, _ = store.read_events(0)
    return [e for e in found if e.strategy == work.id][-count:] if count else []
