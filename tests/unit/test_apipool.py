"""ApiPool with the real pybit client against the fake Bybit server."""

from __future__ import annotations

import logging
import math
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import msgspec
import pytest

from quantlab.store.filestore import FileStore
from quantlab.protocol import ApiCall, ApiResult, decode_to_child, encode
from quantlab.exchange.accounts import Account, default_paper_account
from quantlab.exchange.apipool import ApiPool
from tests.fakes.bybit import FakeBybit, LoggedRequest, fake_bybit

KEY = "test-key"
SECRET = "Sup3rS3cret-never-to-be-seen-42"
ALL = ("main", "other")

fake = pytest.fixture(fake_bybit, name="fake")

MakePool = Callable[..., ApiPool]


def FOREVER() -> float:
    """The fence of a caller whose lease never ends."""
    return math.inf


def signed(fake: FakeBybit) -> list[LoggedRequest]:
    """The requests that reached the fake, less the pool's clock readings (/v5/market/time)."""
    return [r for r in fake.requests if r.path != "/v5/market/time"]


def account(fake: FakeBybit, name: str = "main", **overrides: Any) -> Account:
    settings: dict[str, Any] = dict(
        name=name, type="bybit", api_key=KEY, api_secret=SECRET, endpoint=fake.url,
        rate_limit=1000.0, timeout=2.0, max_retries=3,
    )
    return Account(**{**settings, **overrides})


@pytest.fixture
def make_pool(tmp_path: Path) -> Iterator[MakePool]:
    pools: list[ApiPool] = []

    def make(accounts: list[Account], **options: Any) -> ApiPool:
        pools.append(ApiPool(accounts, FileStore(tmp_path / "store"), **options))
        return pools[-1]

    yield make
    for pool in pools:
        pool.close()


@pytest.fixture
def pool(fake: FakeBybit, make_pool: MakePool) -> ApiPool:
    fake.add_key(KEY, SECRET)
    fake.set_ticker("BTCUSDT", 50_000.0)
    return make_pool([account(fake), account(fake, "other", timeout=0.3, max_retries=1)])


def tickers(pool: ApiPool, name: str = "main") -> ApiResult:
    return pool.call(name, "get_tickers", {"category": "linear", "symbol": "BTCUSDT"}, ALL)


def order(link: str = "q-1") -> dict[str, Any]:
    return {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit",
            "qty": 0.01, "price": 49_000.5, "orderLinkId": link}


def closed_url() -> str:
    """A loopback URL on which nothing listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


class Done:
    """A done() callback a test can wait on."""

    def __init__(self) -> None:
        self.results: list[ApiResult] = []
        self.event = threading.Event()

    def __call__(self, result: ApiResult) -> None:
        self.results.append(result)
        self.event.set()


class FrozenClock:
    """The limiters' clock stands still and their sleeps are only recorded: no test waits."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return 100.0

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)


# ---- successful calls ----


def test_signed_calls_succeed_and_the_fake_verified_their_signatures(pool: ApiPool, fake: FakeBybit) -> None:
    placed = pool.call("main", "place_order", order(), ALL, FOREVER)
    listed = pool.call("main", "get_open_orders", {"category": "linear"}, ALL)
    assert placed.ok and listed.ok, (placed, listed)
    assert placed.result["retCode"] == 0
    assert listed.result["result"]["list"][0]["orderId"] == placed.result["result"]["orderId"]
    assert [r.verified for r in signed(fake)] == [True, True]


def test_a_result_is_the_whole_envelope_and_crosses_the_channel(pool: ApiPool) -> None:
    result = tickers(pool)
    assert result.ok and result.kind == "api" and result.ret_code == 0
    assert set(result.result) == {"retCode", "retMsg", "result", "retExtInfo", "time"}
    assert result.result["result"]["list"][0]["lastPrice"] == "50000.0"
    assert decode_to_child(encode(result)) == result
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(result.result)) == result.result


def test_numbers_in_kwargs_reach_the_exchange_as_pybit_sends_them(pool: ApiPool, fake: FakeBybit) -> None:
    kwargs = order()
    assert pool.call("main", "place_order", kwargs, ALL, FOREVER).ok
    assert kwargs == order()  # the caller's dict is untouched
    assert fake.requests[-1].params["qty"] == "0.01" and fake.requests[-1].params["price"] == "49000.5"


def test_reads_see_the_accounts_state(pool: ApiPool, fake: FakeBybit) -> None:
    fake.set_balance("USDT", 1234.5)
    market = {**order(), "orderType": "Market", "side": "Sell", "qty": 0.5}
    del market["price"], market["orderLinkId"]
    assert pool.call("main", "place_order", market, ALL, FOREVER).ok
    wallet = pool.call("main", "get_wallet_balance", {"accountType": "UNIFIED"}, ALL)
    position = pool.call("main", "get_positions", {"category": "linear", "symbol": "BTCUSDT"}, ALL)
    assert wallet.result["result"]["list"][0]["coin"][0]["walletBalance"] == "1234.5"
    row = position.result["result"]["list"][0]
    assert (row["side"], row["size"]) == ("Sell", "0.5")


def test_submit_runs_on_a_pool_thread_and_hands_back_the_call_id(pool: ApiPool) -> None:
    done = Done()
    pool.submit(ApiCall(call_id=7, account="main", method="get_server_time", kwargs={}), ALL, done)
    assert done.event.wait(2)
    assert done.results[0].call_id == 7 and done.results[0].ok


def test_names_lists_the_accounts_served(pool: ApiPool) -> None:
    assert pool.names == ["main", "other"]


# ---- exchange errors ----


def test_a_wrong_secret_is_refused_with_10004(fake: FakeBybit, make_pool: MakePool) -> None:
    fake.add_key(KEY, "the-real-secret")
    result = make_pool([account(fake)]).call("main", "get_positions", {"category": "linear", "symbol": "BTCUSDT"}, ALL)
    assert (result.ok, result.kind, result.ret_code) == (False, "api", 10004)


def test_a_duplicate_order_link_id_is_an_api_error_with_its_code(pool: ApiPool) -> None:
    assert pool.call("main", "place_order", order("dup"), ALL, FOREVER).ok
    again = pool.call("main", "place_order", order("dup"), ALL, FOREVER)
    assert (again.ok, again.kind, again.ret_code) == (False, "api", 110072)


def test_a_missing_parameter_is_10001(pool: ApiPool) -> None:
    result = pool.call("main", "get_positions", {"category": "linear"}, ALL)
    assert (result.kind, result.ret_code) == ("api", 10001)


@pytest.mark.parametrize(
    ("fault", "account_name", "kind", "ret_code"),
    [
        ("bad_key", "main", "api", 10003),
        ("http_500", "main", "api", 500),
        ("http_403", "main", "api", 403),
        ("garbage", "main", "api", 0),  # pybit's own "409" is not a status anyone sent
        ("drop", "main", "network", 0),
        ("slow", "other", "network", 0),  # "other" has a 0.3 s timeout and one attempt
    ],
)
def test_each_fault_gives_its_kind_and_the_pool_keeps_working(
    pool: ApiPool, fake: FakeBybit, fault: str, account_name: str, kind: str, ret_code: int
) -> None:
    fake.inject(fault)
    failed = tickers(pool, account_name)
    assert (failed.ok, failed.kind, failed.ret_code) == (False, kind, ret_code), failed
    assert failed.error
    assert tickers(pool, account_name).ok


def test_a_rate_limited_call_waits_for_the_reset_and_is_sent_again(pool: ApiPool, fake: FakeBybit) -> None:
    fake.inject("rate_limit")
    assert tickers(pool).ok
    assert [r.fault for r in fake.requests] == ["rate_limit", None]


def test_a_call_rate_limited_on_every_attempt_fails_with_10006(pool: ApiPool, fake: FakeBybit) -> None:
    fake.inject("rate_limit", count=3)  # "main" makes 3 attempts
    result = tickers(pool)
    assert (result.ok, result.kind, result.ret_code) == (False, "api", 10006)
    assert len(fake.requests) == 3


def test_a_stale_timestamp_is_retried_by_pybit_then_reported(fake: FakeBybit, make_pool: MakePool) -> None:
    fake.add_key(KEY, SECRET)
    fake.skew_ms = 60_000  # our clock looks a minute late, even with pybit's wider recv_window
    result = make_pool([account(fake, max_retries=2)]).call("main", "get_wallet_balance", {"accountType": "UNIFIED"}, ALL)
    assert (result.ok, result.kind, result.ret_code) == (False, "api", 0)
    assert "Retries exceeded" in result.error
    assert len(fake.requests) == 2


def test_a_refused_connection_is_a_network_error(make_pool: MakePool, fake: FakeBybit) -> None:
    result = make_pool([account(fake, endpoint=closed_url())]).call("main", "get_server_time", {}, ALL)
    assert (result.ok, result.kind) == (False, "network")


def test_kwargs_pybit_cannot_send_are_an_api_error_and_nothing_is_sent(pool: ApiPool, fake: FakeBybit) -> None:
    result = pool.call("main", "place_order", {**order(), "positionIdx": "not-a-number"}, ALL, FOREVER)
    assert (result.ok, result.kind) == (False, "api")
    assert "ValueError" in result.error
    assert signed(fake) == []


# ---- threads and the rate limiter ----


def test_a_slow_call_does_not_hold_up_a_call_on_another_thread(pool: ApiPool, fake: FakeBybit) -> None:
    fake.inject("slow")
    slow = Done()
    pool.submit(ApiCall(call_id=1, account="main", method="get_server_time", kwargs={}), ALL, slow)
    assert fake.wait_requests(1)
    assert tickers(pool).ok  # same account, another thread, another connection
    assert not slow.event.is_set()
    fake.release()
    assert slow.event.wait(2) and slow.results[0].ok


def test_calls_from_many_threads_share_the_accounts_rate_limiter(fake: FakeBybit, make_pool: MakePool) -> None:
    calls, rate = 12, 5.0  # burst: one second's worth, 5 calls
    clock = FrozenClock()
    fake.add_key(KEY, SECRET)
    pool = make_pool([account(fake, rate_limit=rate)], threads=4, clock=clock, sleep=clock.sleep)
    done = [Done() for _ in range(calls)]
    for call_id, callback in enumerate(done):
        pool.submit(ApiCall(call_id=call_id, account="main", method="get_server_time", kwargs={}), ALL, callback)
    assert all(d.event.wait(2) for d in done)
    assert all(d.results[0].ok for d in done)
    # Each call past the burst waited for its own slot, 1/rate after the one before it
    # (float rounding can leave a burst call a wait of 1e-14 s: not a wait).
    waits = sorted(s for s in clock.sleeps if s > 1e-9)
    assert waits == pytest.approx([i / rate for i in range(1, calls - 5 + 1)])
    assert waits[-1] >= (calls - 5) / rate - 1e-9


def test_an_exhausted_budget_in_the_headers_pauses_the_account(fake: FakeBybit, make_pool: MakePool) -> None:
    clock = FrozenClock()
    fake.add_key(KEY, SECRET)
    fake.limit = 1  # the first reply already says X-Bapi-Limit-Status: 0
    waited: list[str] = []
    pool = make_pool([account(fake)], clock=clock, sleep=clock.sleep,
                     wait_observer=lambda name, seconds: waited.append(name))  # what a worker serving metrics counts
    assert pool.call("main", "get_server_time", {}, ALL).ok
    assert clock.sleeps == [] and waited == []
    assert pool.call("main", "get_server_time", {}, ALL).ok
    assert len(clock.sleeps) == 1 and 0.5 < clock.sleeps[0] <= 1.0  # until the window's reset, 1 s after it opened
    assert waited == ["main"]


# ---- permissions ----


@pytest.mark.parametrize(
    ("name", "method", "allowed"),
    [
        ("other", "get_server_time", ["main"]),  # served, but not this strategy's
        ("nobody", "get_server_time", ["nobody"]),  # not served by this worker
        ("main", "prepare_payload", ALL),  # a pybit helper, not an exchange call
        ("main", "_submit_request", ALL),
        ("main", "__init__", ALL),
        ("main", "no_such_method", ALL),
    ],
)
def test_permission_errors_never_reach_the_exchange(
    pool: ApiPool, fake: FakeBybit, name: str, method: str, allowed: list[str]
) -> None:
    result = pool.call(name, method, {}, allowed)
    assert (result.ok, result.kind, result.ret_code) == (False, "permission", 0)
    assert fake.requests == []


# ---- secrets, proxies, closing ----


def test_the_secret_appears_in_no_result_error_or_log(
    pool: ApiPool, fake: FakeBybit, make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    results = [pool.call("main", "get_positions", {"category": "linear", "symbol": "BTCUSDT"}, ALL)]
    for fault in ("bad_key", "http_500", "garbage", "drop", "rate_limit"):
        fake.inject(fault)
        results.append(tickers(pool))
    # A refused connection's message quotes the URL: here the secret is in it, and must be blanked.
    refused = make_pool([account(fake, endpoint=closed_url())])
    results.append(refused.call("main", "get_tickers", {"category": "linear", "symbol": SECRET}, ALL))
    assert "***" in results[-1].error
    for result in results:
        assert SECRET not in repr(result) and SECRET.encode() not in encode(result)
    assert SECRET not in caplog.text
    assert SECRET not in repr(pool)


def test_an_explicit_endpoint_ignores_proxy_variables(
    pool: ApiPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    assert tickers(pool).ok


def test_a_proxy_is_used_and_its_password_never_shown(fake: FakeBybit, make_pool: MakePool) -> None:
    password = "proxy-Passw0rd-xyz"
    fake.add_key(KEY, SECRET)
    pool = make_pool([account(fake)], proxy=closed_url().replace("//", f"//user:{password}@"))
    result = pool.call("main", "get_server_time", {}, ALL)
    assert (result.ok, result.kind) == (False, "network")  # the dead proxy, not the live fake, was tried
    assert fake.requests == []
    assert password not in result.error


def test_after_close_calls_are_refused_and_submit_still_answers(pool: ApiPool) -> None:
    assert tickers(pool).ok
    pool.close()
    assert not tickers(pool).ok
    done = Done()
    pool.submit(ApiCall(call_id=3, account="main", method="get_server_time", kwargs={}), ALL, done)
    assert done.results and "closed" in done.results[0].error


def test_a_failing_callback_does_not_break_the_pool(pool: ApiPool) -> None:
    def explode(result: ApiResult) -> None:
        raise RuntimeError("strategy channel gone")

    pool.submit(ApiCall(call_id=1, account="main", method="get_server_time", kwargs={}), ALL, explode)
    done = Done()
    pool.submit(ApiCall(call_id=2, account="main", method="get_server_time", kwargs={}), ALL, done)
    assert done.event.wait(2) and done.results[0].ok


def test_pool_and_fake_close_without_leaving_threads(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    with FakeBybit() as fake:
        fake.add_key(KEY, SECRET)
        pool = ApiPool([account(fake, timeout=0.2, max_retries=1)], FileStore(tmp_path), threads=2)
        fake.inject("slow")  # leaves a server thread waiting on a connection the client gave up
        assert pool.call("main", "get_server_time", {}, ALL).kind == "network"
        done = Done()
        pool.submit(ApiCall(call_id=1, account="main", method="get_server_time", kwargs={}), ALL, done)
        assert done.event.wait(2) and done.results[0].ok  # a kept-alive connection stays open
        pool.close()
    assert set(threading.enumerate()) <= before


# ---- paper accounts ----


def test_a_paper_account_answers_offline_through_the_same_checks(make_pool: MakePool) -> None:
    pool = make_pool([default_paper_account()])
    wallet = pool.call("paper", "get_wallet_balance", {"accountType": "UNIFIED"}, ["paper"])
    assert wallet.ok and wallet.result["retCode"] == 0
    assert decode_to_child(encode(wallet)) == wallet
    assert pool.call("paper", "get_wallet_balance", {"accountType": "UNIFIED"}, ["main"]).kind == "permission"


def test_a_paper_error_envelope_is_an_api_error(make_pool: MakePool) -> None:
    pool = make_pool([default_paper_account()])
    result = pool.call("paper", "get_fee_rates", {"category": "linear"}, ["paper"])  # real, not simulated
    assert (result.ok, result.kind) == (False, "api")
    assert result.ret_code != 0 and "get_fee_rates" in result.error


#: A fresh interpreter (pybit not imported yet) whose pool makes its first clients on six threads at once.
FIRST_CLIENTS = """
import sys, threading
from quantlab.exchange.accounts import Account
from quantlab.exchange.apipool import ApiPool
from quantlab.store.memstore import MemoryStore
from quantlab.protocol import ApiCall
names = [f"a{i}" for i in range(6)]
pool = ApiPool([Account(name=n, type="bybit", api_key="k", api_secret="s", endpoint=sys.argv[1], timeout=0.5,
                        max_retries=1) for n in names], MemoryStore())
results, done = [], threading.Event()
def got(result):
    results.append(result)
    if len(results) == len(names):
        done.set()
for i, name in enumerate(names):
    pool.submit(ApiCall(call_id=i, account=name, method="get_server_time", kwargs={}), names, got)
done.wait(20)
pool.close()
print(sorted({(r.kind, r.error.split(":")[0]) for r in results}))
"""


def test_first_clients_made_on_many_threads_at_once_all_work() -> None:
    """pybit is imported lazily: without care, concurrent first calls saw half-loaded modules ('internal error')."""
    done = subprocess.run([sys.executable, "-c", FIRST_CLIENTS, closed_url()], capture_output=True, text=True,
                          timeout=30, cwd=Path(__file__).resolve().parents[2] / "src")
    assert done.stdout.strip() == "[('network', 'get_server_time')]", done.stdout + done.stderr[-2000:]
