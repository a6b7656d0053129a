"""Prometheus metrics scraped from a running director and worker: the values move as they should."""

from __future__ import annotations

import json
import os
import signal
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Lab, free_port, wait_for

QUIET = "def st_init(ctx): pass\ndef st_heartbeat(ctx, tick): pass\ndef st_exit(ctx, reason): pass\n"
#: st_heartbeat sleeps 30 ms: every hook duration lands above the 25 ms bucket.
SLOW = "import time\ndef st_init(ctx): pass\ndef st_heartbeat(ctx, tick): time.sleep(0.03)\ndef st_exit(ctx, reason): pass\n"
#: Three reads a tick on an account allowed 2 calls/s (so they wait), and an order (refused under a halt).
CALLER = '''
from quantlab import ApiHaltedError
ACCOUNTS = ["paper"]
def st_init(ctx): pass
def st_heartbeat(ctx, tick):
    api = ctx.api.bybit["paper"]
    for _ in range(3):
        api.get_tickers(category="linear", symbol="BTCUSDT")
    try:
        api.place_order(category="linear", symbol="BTCUSDT", side="Buy", orderType="Market", qty="0.001")
    except ApiHaltedError:
        pass
def st_exit(ctx, reason): pass
'''


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


def test_hook_duration_is_the_hook_alone(lab: Lab) -> None:
    port = free_port()
    lab.director()
    lab.worker("w1", "--metrics-port", str(port))
    lab.assign(lab.strategy("slow", SLOW), "--interval", "0.05")
    m = wait_for(lambda: (m := scrape(port)).get("quantlab_hook_duration_seconds_count", 0) >= 10 and m,
                 what="hook durations reported")
    count = m["quantlab_hook_duration_seconds_count"]
    assert m["quantlab_hook_duration_seconds_bucket{le=0.025}"] == 0  # every hook slept 30 ms
    assert m["quantlab_hook_duration_seconds_bucket{le=0.1}"] == count
    # The tick latency is the same hooks plus the channel: never less on average.
    latency = m["quantlab_tick_latency_seconds_sum"] / m["quantlab_tick_latency_seconds_count"]
    assert latency >= m["quantlab_hook_duration_seconds_sum"] / count >= 0.03


def test_rate_limit_waits_and_halts_show(lab: Lab) -> None:
    port = free_port()
    accounts = lab.home / "env.jsonl"
    accounts.write_text(json.dumps({"name": "paper", "type": "paper", "rate_limit": 2}) + "\n")
    lab.director()
    lab.worker("w1", "--metrics-port", str(port), "--accounts", str(accounts))
    lab.assign(lab.strategy("caller", CALLER), "--interval", "0.2")
    waits = "quantlab_rate_limit_wait_seconds_count{account=paper}"
    m = wait_for(lambda: (m := scrape(port)).get(waits, 0) >= 2 and m, what="rate-limit waits counted")
    assert m["quantlab_rate_limit_wait_seconds_sum{account=paper}"] > 0.2  # 2 calls/s: a wait is ~0.5 s
    assert m["quantlab_halts{scope=account}"] == 0
    assert m.get("quantlab_api_calls_total{account=paper,result=halted}", 0) == 0
    lab.run("halt", "--account", "paper")
    wait_for(lambda: scrape(port).get("quantlab_halts{scope=account}") == 1, what="the halt in the gauge")
    wait_for(lambda: scrape(port).get("quantlab_api_calls_total{account=paper,result=halted}", 0) >= 1,
             timeout=15, what="an order refused by the halt")
    lab.run("resume", "--account", "paper")
    wait_for(lambda: scrape(port).get("quantlab_halts{scope=account}") == 0, what="the halt lifted in the gauge")


def test_a_metrics_port_in_use_is_one_line_naming_the_port_and_the_option(lab: Lab) -> None:
    import socket
    import subprocess

    from tests.conftest import QLAB

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args in (["director", "start"], ["worker", "start", "--region", "JP", "--id", "w1"]):
            result = subprocess.run([QLAB, "--home", str(lab.home), *args, "--metrics-port", str(port)],
                                    capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
            assert result.returncode == 1, result
            assert result.stderr == (f"Error: --metrics-port {port}: Address already in use: another process serves "
                                     "there; give this one another port (--metrics-port, or metrics_port in its "
                                     "settings)\n")
    assert lab.store.list_resources() == []  # the worker stopped before it registered
