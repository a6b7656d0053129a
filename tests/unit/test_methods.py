"""The static method list matches pybit, and a strategy child loads neither pybit nor the API pool."""

from __future__ import annotations

import subprocess
import sys

from quantlab.exchange.methods import PUBLIC_METHODS
from quantlab.exchange.pybit_methods import render, request_methods


def test_the_static_list_is_what_the_installed_pybit_offers() -> None:
    assert PUBLIC_METHODS == request_methods(), "run: python -m quantlab.exchange.pybit_methods > src/quantlab/exchange/methods.py"


def test_the_generated_module_is_up_to_date_text() -> None:
    from pathlib import Path

    import quantlab.exchange.methods as methods

    assert Path(methods.__file__).read_text() == render(request_methods())


def test_pybit_endpoints_are_listed_and_helpers_are_not() -> None:
    table = {"get_server_time", "get_kline", "get_tickers", "get_positions", "get_wallet_balance",
             "get_open_orders", "place_order", "amend_order", "cancel_order", "cancel_all_orders"}
    assert table <= PUBLIC_METHODS
    assert not {"prepare_payload", "prepare_file_payload"} & PUBLIC_METHODS
    assert not any(name.startswith("_") for name in PUBLIC_METHODS)


def test_a_strategy_child_imports_neither_pybit_nor_the_api_pool() -> None:
    probe = (
        "import sys, quantlab.child.runner\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pybit', 'requests')"
        " or m in ('quantlab.exchange.apipool', 'quantlab.exchange.ratelimit', 'quantlab.exchange.paper'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"the child loaded {out}"
