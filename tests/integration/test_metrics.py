"""Prometheus metrics scraped from a running director and worker: the values move as they should."""

from __future__ import annotations

import os
import signal
import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Lab, wait_for

QUIET = "def st_init(ctx): pass\ndef st_heartbeat(ctx, tick): pass\ndef st_exit(ctx, reason): pass\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """Every sample as "name{label=value,...}" -> value."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def test_worker_and_director_metrics_move(lab: Lab) -> None:
    director_port, worker_port = free_port(), free_port()
    lab.director("--metrics-port", str(director_port))
    lab.worker("w1", "--metrics-port", str(worker_port))
    for name in ("a", "b"):
        lab.assign(lab.strategy(name, QUIET), "--interval", "0.05")
    first = wait_for(lambda: (m := scrape(worker_port)).get("quantlab_strategies{status=running}") == 2 and m,
                     what="two running strategies in the worker's metrics")
    later = wait_for(lambda: (m := scrape(worker_port)).get("quantlab_heartbeats_total", 0) > first["quantlab_heartbeats_total"] + 10 and m,
                     what="heartbeats to count up")
    assert later["quantlab_tick_latency_seconds_count"] > first["quantlab_tick_latency_seconds_count"]
    assert 0 < later["quantlab_tick_latency_seconds_sum"] / later["quantlab_tick_latency_seconds_count"] < 1
    assert 0 < later["quantlab_lease_seconds_left"] <= 15
    assert later["quantlab_store_write_seconds_count"] > 0
    director = wait_for(lambda: (m := scrape(director_port)).get("quantlab_leading") == 1 and m, what="the director's metrics")
    assert director["quantlab_workers{state=live}"] == 1
    assert wait_for(lambda: scrape(director_port).get("quantlab_strategies{status=running}") == 2, what="running in the director's view")
    pid = lab.work("a").result.pid
    assert pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: scrape(worker_port).get("quantlab_restarts_total{reason=crashed}", 0) >= 1, what="a crash counted")
