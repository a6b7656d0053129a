"""The worker runs only the exchange methods on its allowlist, with arguments that fit their types and caps.

The real pybit client against the fake Bybit: a refused call reaches the exchange not at all.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import given, settings, strategies as st

from quantlab.exchange import allowlist, arguments
from quantlab.exchange.apipool import ApiPool, Caller
from quantlab.exchange.job import Failure
from quantlab.exchange.methods import PUBLIC_METHODS
from quantlab.store.filestore import FileStore
from tests.fakes.bybit import FakeBybit, fake_bybit
from tests.unit.test_apipool import FOREVER, KEY, SECRET, account, signed

fake = pytest.fixture(fake_bybit, name="fake")

S1 = Caller("s1", 1)
ORDER = {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", "qty": "0.001",
         "price": "1000"}


@pytest.fixture
def live(fake: FakeBybit, tmp_path: Path) -> Iterator[ApiPool]:
    fake.add_key(KEY, SECRET)
    pool = ApiPool([account(fake)], FileStore(tmp_path / "store"))
    yield pool
    pool.close()


def test_every_allowed_method_is_pybits_and_none_reads_a_file() -> None:
    from pybit.unified_trading import HTTP

    assert allowlist.STRATEGY_METHODS <= PUBLIC_METHODS
    reads_files = {m for m in PUBLIC_METHODS if "_submit_file_request" in inspect.getsource(getattr(HTTP, m))}
    assert reads_files == {"upload_chat_file"}
    assert not reads_files & allowlist.STRATEGY_METHODS
    assert set(arguments.TYPED) <= allowlist.STRATEGY_METHODS
    assert {"withdraw", "create_internal_transfer", "delete_master_api_key", "spread_place_order"}.isdisjoint(
        allowlist.STRATEGY_METHODS)


@pytest.mark.parametrize("method", ["upload_chat_file", "withdraw", "spread_place_order"])
def test_a_method_off_the_allowlist_is_refused_naming_it_and_nothing_is_read_or_sent(
        live: ApiPool, fake: FakeBybit, tmp_path: Path, method: str) -> None:
    secret_file = tmp_path / "environ"
    secret_file.write_text("QLAB_SECRET=do-not-send")
    kwargs = {"upload_file": str(secret_file), "category": "linear", "coin": "USDT", "amount": "1"}
    result = live.call("main", method, kwargs, ["main"], FOREVER, S1)
    assert (result.ok, result.kind) == (False, "permission"), result
    assert method in result.error and "refused" in result.error
    assert signed(fake) == []


BAD_ARGUMENTS: list[tuple[str, dict[str, Any], str]] = [
    ("place_order", {**ORDER, "qty": "inf"}, "`qty`"),
    ("place_order", {**ORDER, "qty": math.nan}, "`qty`"),
    ("place_order", {**ORDER, "price": -1.0}, "`price`"),
    ("place_order", {**ORDER, "orderLinkId": "x" * 37}, "`orderLinkId`"),
    ("place_order", {**ORDER, "note": "x" * 10_000}, "`note`"),
    ("place_order", {**ORDER, "note": {"nested": [1, 2]}}, "`note`"),
    ("get_tickers", {"category": "linear", "blob": b"\x00" * 100}, "`blob`"),
    ("get_tickers", {"category": "linear", **{f"k{i}": 1 for i in range(100)}}, "at most 48"),
    ("get_tickers", {"category": "linear", "x" * 100: 1}, "name"),
    ("place_batch_order", {"category": "linear", "request": [ORDER] * 21}, "`request`"),
    ("place_batch_order", {"category": "spot", "request": [ORDER] * 11}, "at most 10 for spot"),
    ("amend_batch_order", {"category": "linear", "request": [{"symbol": "BTCUSDT", "orderId": "a", "qty": "1e9"}]},
     "`request[0].qty`"),
    ("amend_order", {"category": "linear", "symbol": "BTCUSDT", "qty": "1"}, "orderId or orderLinkId"),
    ("cancel_order", {"category": "futures", "symbol": "BTCUSDT", "orderId": "a"}, "`category`"),
]


@pytest.mark.parametrize(("method", "kwargs", "named"), BAD_ARGUMENTS)
def test_an_argument_that_does_not_fit_is_the_callers_10001_and_nothing_is_sent(
        live: ApiPool, fake: FakeBybit, method: str, kwargs: dict[str, Any], named: str) -> None:
    result = live.call("main", method, kwargs, ["main"], FOREVER, S1)
    assert (result.ok, result.kind, result.ret_code) == (False, "api", 10001), result
    assert named in result.error and "nothing was sent" in result.error
    assert signed(fake) == []


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=600) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=25) | st.dictionaries(st.text(max_size=70), inner, max_size=5),
    max_leaves=60)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(allowlist.STRATEGY_METHODS)),
       st.dictionaries(st.sampled_from(["category", "symbol", "qty", "price", "request", "orderId", "x"]) | st.text(),
                       values, max_size=8) | values)
def test_any_arguments_either_fit_or_are_the_callers_error_never_the_workers(method: str, kwargs: Any) -> None:
    try:
        arguments.check(method, kwargs)
    except Failure as failure:
        assert (failure.ret_code, failure.kind) == (10001, "api") and method in failure.error
