"""JavaScript strategies may call pybit methods by the `bybit-api` package's RestClientV5 names:
the generated table matches both libraries, covers every endpoint they share, and an unknown
name is told the nearest ones."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from quantlab.child import bybit_api_table
from quantlab.child.context import AccountApi
from quantlab.child.jsruntime import PACKAGE_DIR
from quantlab.errors import ApiPermissionError
from quantlab.exchange.methods import PUBLIC_METHODS
from tests.conftest import lacking

TABLE = PACKAGE_DIR / "bybit_api_names.json"
#: Resolves each name in argv as a strategy's account does: the pybit method, or what the strategy is told.
RESOLVE = """
import { MethodNames } from "METHODS";
const names = new MethodNames();
console.log(JSON.stringify(process.argv.slice(1).map((n) => names.resolve(n) ?? names.unknown(n))));
"""


@pytest.fixture(scope="module")
def rest_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The published bybit-api's lib/rest-client-v5.js, from `npm pack` (the registry, or npm's cache)."""
    npm = shutil.which("npm")
    if npm is None:
        lacking("npm, to fetch the bybit-api package")
    folder = tmp_path_factory.mktemp("bybit-api")
    try:
        done = subprocess.run([npm, "pack", "bybit-api", "--silent"], cwd=folder, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        lacking("the npm registry (npm pack bybit-api took over 60 s)")
    if done.returncode != 0:
        lacking(f"the npm registry (npm pack bybit-api: {done.stderr.strip().splitlines()[-1:]})")
    with tarfile.open(folder / done.stdout.strip().splitlines()[-1]) as packed:
        packed.extractall(folder, filter="data")
    return folder / "package" / "lib" / "rest-client-v5.js"


def resolve(*names: str) -> list[str]:
    node = shutil.which("node")
    if node is None:
        lacking("node, to run the JavaScript runner's name table")
    script = RESOLVE.replace("METHODS", (PACKAGE_DIR / "methods.mjs").as_uri())
    done = subprocess.run([node, "--input-type=module", "-e", script, *names], capture_output=True, text=True,
                          timeout=30, check=True)
    return list(json.loads(done.stdout))


def test_the_table_is_what_pybit_and_the_published_bybit_api_give(rest_client: Path) -> None:
    generated = bybit_api_table.main(rest_client)
    assert json.loads(TABLE.read_text())["names"] == json.loads(generated)["names"], (
        f"run: python -m quantlab.child.bybit_api_table {rest_client} > {TABLE}")


def test_every_endpoint_both_libraries_have_is_reachable_by_a_bybit_api_name(rest_client: Path) -> None:
    pybit = bybit_api_table.pybit_paths()
    bybit_api = bybit_api_table.bybit_api_paths(rest_client.read_text())
    assert len(pybit) == len(PUBLIC_METHODS) and len(bybit_api) > 300  # every method's endpoint was read
    names = json.loads(TABLE.read_text())["names"]
    reached = {pybit[names.get(name, bybit_api_table.snake_case(name))] for name in bybit_api
               if names.get(name, bybit_api_table.snake_case(name)) in pybit}
    assert set(pybit.values()) & set(bybit_api.values()) == reached
    # A listed name never stands for a pybit method of another endpoint than its own.
    for name, method in names.items():
        assert pybit[method] == bybit_api[name], name


def test_bybit_api_names_resolve_to_pybit_and_an_unknown_one_gets_the_nearest() -> None:
    assert resolve("submitOrder", "getActiveOrders", "getPositionInfo", "cancelOrder", "placeOrder", "get_tickers") == [
        "place_order", "get_open_orders", "get_positions", "cancel_order", "place_order", "get_tickers"]
    camel, snake = resolve("submitOrdr", "get_tikers")
    assert camel == ("'submitOrdr' names no pybit HTTP method (by pybit's name, in camelCase, or by bybit-api's "
                     "RestClientV5 name); did you mean submitOrder, submitSpreadOrder, submitEarnTokenOrder?")
    assert snake.endswith("; did you mean get_tickers, spread_get_tickers, get_orders?")


def test_a_python_strategy_is_told_the_nearest_pybit_names() -> None:
    account = AccountApi("paper", lambda *_: {}, PUBLIC_METHODS)
    with pytest.raises(ApiPermissionError, match=r"^'get_tikers' is not a public pybit HTTP method; did you mean get_tickers, "):
        account.get_tikers
