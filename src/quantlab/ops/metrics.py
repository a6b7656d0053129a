"""Prometheus metrics: one endpoint per process (`--metrics-port` on a director or a worker).

Names follow Prometheus' conventions: base units (seconds), `_total` for
counters, label sets that stay small (a status, a reason, an account, a
result). prometheus-client is imported only by processes that serve metrics,
so the CLI does not pay for it.

The processes push their figures in (the worker's manager after each machine
step, its heartbeat, the director's loop); this module knows nothing of
them, so it sits below every process package. A worker's strategies by
status and its lease are read at each scrape instead (``WorkerMetrics.follow``),
from its own monotonic deadline and its children: a value set after each
renewal would stand still exactly when the store is away and the lease runs out.

Worker: `quantlab_strategies{status}`, `quantlab_heartbeats_total`,
`quantlab_tick_latency_seconds` (tick sent to its heartbeat back, i.e. the
hook's duration plus the channel), `quantlab_hook_duration_seconds` (st_heartbeat
alone, as the child measured it), `quantlab_overruns_total`,
`quantlab_restarts_total{reason}`, `quantlab_api_calls_total{account,result}`
(result `halted`: refused by a halt), `quantlab_rate_limit_wait_seconds{account}`
(one observation per wait for the account's rate limit: `_count` waits, `_sum`
seconds), `quantlab_halts{scope}`, `quantlab_lease_seconds_left`,
`quantlab_store_write_seconds`, `quantlab_store_round_trips` (statements sent to
PostgreSQL so far), `quantlab_worker_heartbeat_seconds` (one worker heartbeat:
lease, view, reconcile, report), `quantlab_channel_dropped_total{reason}` (messages on
the strategy channel dropped: `stranger`, from a connection no good Hello bound;
`over_budget`, over its strategy's budget).
Director: `quantlab_strategies{status}`, `quantlab_workers{state}`,
`quantlab_leading`, `quantlab_lease_seconds_left`, `quantlab_store_write_seconds`,
`quantlab_store_round_trips`.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator, Mapping

from quantlab.errors import ConfigError

#: Restart reasons, by the event kind that announced the fault (a bounded label set).
RESTART_REASONS = {"crashed": "crashed", "heartbeat_timeout": "hung", "error": "error", "memory_limit": "memory", "lease_lost": "lease_lost"}
#: The values of ``quantlab_strategies{status}``, each served even when no strategy has it.
STATUSES = ("pending", "assigned", "starting", "running", "paused", "error", "stopping", "stopped", "failed")
STRATEGIES_HELP = "Strategies by status."
#: Fine below 3 ms: a tick's round trip is a few hundred microseconds, and its quantiles are read from these.
_LATENCY_BUCKETS = (0.0001, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025,
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_WRITE_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # a wait is capped by the 10 s call deadline


class _Process:
    """What every process serves."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.lease_left = Gauge("quantlab_lease_seconds_left", "Seconds this process may still act on its lease.",
                                registry=self.registry)
        self.store_write = Histogram("quantlab_store_write_seconds", "Time of one store commit.",
                                     buckets=_WRITE_BUCKETS, registry=self.registry)
        self.store_round_trips = Gauge("quantlab_store_round_trips", "Statements sent to the store's database so far.",
                                       registry=self.registry)

    def time_store(self, round_trips: Callable[[], int]) -> Callable[[float], None]:
        """Read the store's ``round_trips`` at each scrape; the observer of each store commit's duration."""
        self.store_round_trips.set_function(round_trips)
        return self.store_write.observe

    def serve(self, port: int) -> None:
        """Serve /metrics on ``port``; a port that cannot be had is a ConfigError naming it and the option."""
        from prometheus_client import start_http_server

        try:
            start_http_server(port, registry=self.registry)
        except OSError as e:
            # A standby director reading the same settings file as the leader on one host asks for
            # the leader's port: the bare "Address already in use" named neither it nor the option.
            raise ConfigError(f"--metrics-port {port}: {e.strerror or e}: another process serves there; "
                              f"give this one another port (--metrics-port, or metrics_port in its settings)") from e


def _count(statuses: Iterable[str]) -> dict[str, int]:
    """Every status named (0 when none), so that a status that empties reads 0 rather than vanishing."""
    counts = dict.fromkeys(STATUSES, 0)
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


class _StatusesNow:
    """A collector of ``quantlab_strategies{status}`` that counts the statuses it is given at each scrape."""

    def __init__(self) -> None:
        self.statuses: Callable[[], Iterable[str]] = tuple

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("quantlab_strategies", STRATEGIES_HELP, labels=["status"])
        for status, count in _count(self.statuses()).items():
            family.add_metric([status], count)
        yield family


class WorkerMetrics(_Process):
    def __init__(self) -> None:
        super().__init__()
        from prometheus_client import Counter, Gauge, Histogram

        self._statuses = _StatusesNow()
        self.registry.register(self._statuses)  # type: ignore[arg-type]  # a collector by its collect()

        self.heartbeats = Counter("quantlab_heartbeats", "Heartbeats completed (st_heartbeat answered).", registry=self.registry)
        self.worker_heartbeat = Histogram("quantlab_worker_heartbeat_seconds", "Time of one worker heartbeat.",
                                          buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.tick_latency = Histogram("quantlab_tick_latency_seconds", "From a tick sent to its heartbeat back.",
                                      buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.overruns = Counter("quantlab_overruns", "Ticks skipped: the last one was still running.", registry=self.registry)
        self.restarts = Counter("quantlab_restarts", "Strategy faults that lead to a restart, by reason.", ["reason"],
                                registry=self.registry)
        self.api_calls = Counter("quantlab_api_calls", "Exchange calls by account and result.", ["account", "result"],
                                 registry=self.registry)
        self.hook_duration = Histogram("quantlab_hook_duration_seconds", "Time st_heartbeat took in the child.",
                                       buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.rate_limit_waits = Histogram("quantlab_rate_limit_wait_seconds",
                                          "Waits of exchange calls for their account's rate limit.", ["account"],
                                          buckets=_WAIT_BUCKETS, registry=self.registry)
        self.halts = Gauge("quantlab_halts", "Halts in force (as this worker reads them), by scope.", ["scope"],
                           registry=self.registry)
        self.channel_dropped = Counter("quantlab_channel_dropped", "Strategy channel messages dropped, by reason.",
                                       ["reason"], registry=self.registry)
        self._sent: dict[str, tuple[float, int]] = {}  #: strategy -> (monotonic tick sent, overruns then)

    # The next three run for a strategy's machine steps (twice a tick): a dict lookup or two each.

    def tick_sent(self, strategy: str, overruns: int) -> None:
        """A tick went to ``strategy``'s child; ``overruns``: the ticks it has skipped so far, in all."""
        _, before = self._sent.get(strategy, (0.0, overruns))
        if overruns > before:
            self.overruns.inc(overruns - before)
        self._sent[strategy] = (time.monotonic(), overruns)

    def heartbeat_back(self, strategy: str) -> None:
        """``strategy``'s child answered its last tick."""
        self.heartbeats.inc()
        sent = self._sent.get(strategy)
        if sent is not None:
            self.tick_latency.observe(time.monotonic() - sent[0])

    def noted(self, kind: str) -> None:
        """An event of ``kind`` (an EventKind value) about a strategy; the faults that restart it are counted."""
        reason = RESTART_REASONS.get(kind)
        if reason is not None:
            self.restarts.labels(reason=reason).inc()

    def api_call(self, account: str, ok: bool, kind: str) -> None:
        self.api_calls.labels(account=account, result="ok" if ok else kind).inc()

    def rate_limit_waited(self, account: str, seconds: float) -> None:
        """On an API pool thread (prometheus-client is thread safe)."""
        self.rate_limit_waits.labels(account=account).observe(seconds)

    def follow(self, lease_until: Callable[[], float], statuses: Callable[[], Iterable[str]]) -> None:
        """Read at each scrape (on the server's thread): the lease's end on the monotonic clock, and
        the status of each strategy here as its child is now (a killed child's no longer ``running``)."""
        self.lease_left.set_function(lambda: max(0.0, lease_until() - time.monotonic()))
        self._statuses.statuses = statuses

    def set_halts(self, by_scope: Mapping[str, int]) -> None:
        """Once a worker heartbeat: the halts in force by scope, every scope given (0 when none)."""
        for scope, count in by_scope.items():
            self.halts.labels(scope=scope).set(count)


class DirectorMetrics(_Process):
    def __init__(self) -> None:
        super().__init__()
        from prometheus_client import Gauge

        self.strategies = Gauge("quantlab_strategies", STRATEGIES_HELP, ["status"], registry=self.registry)
        self.workers = Gauge("quantlab_workers", "Registered workers by lease state.", ["state"], registry=self.registry)
        self.leading = Gauge("quantlab_leading", "1 while this director leads.", registry=self.registry)

    def set_statuses(self, statuses: Iterable[str]) -> None:
        for status, count in _count(statuses).items():
            self.strategies.labels(status=status).set(count)
