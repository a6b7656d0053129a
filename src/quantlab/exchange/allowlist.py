"""The exchange methods a strategy may call, each with its arguments typed and capped.

pybit offers 358 request methods (quantlab/exchange/methods.py); a strategy gets
the ones a trading strategy needs: market data, its account's orders, positions
and balances, orders, and per-symbol position settings. Everything else is
refused by the worker with ApiPermissionError naming the method: withdrawals
and transfers, sub-accounts and API keys, loans, earn, P2P, convert, the chat,
and above all any method that makes the worker read a file or a URL the
caller names (pybit's ``upload_chat_file`` opens the path it is given, so a
strategy could have the worker read its secrets, a FIFO or a gigabyte). Spread
orders are refused too: their price is a spread, so no notional limit can
judge them.

The worker's check here is the authoritative one (quantlab/exchange/dispatch.py);
a strategy child's own first check only catches names pybit does not have.

Arguments: every call's keyword arguments are a flat map of at most
``MAX_ARGUMENTS`` names to scalars (text of at most ``MAX_TEXT`` characters,
finite numbers, booleans); a method that moves orders or positions has its
fields typed (``quantlab/exchange/arguments.py``), batches capped at Bybit's
own sizes. An argument that does not fit is the caller's error: Bybit's
10001, naming the argument, and nothing is sent.
"""

from __future__ import annotations

#: Public market data.
MARKET = frozenset({
    "get_server_time", "get_kline", "get_mark_price_kline", "get_index_price_kline",
    "get_premium_index_price_kline", "get_instruments_info", "get_orderbook", "get_rpi_orderbook",
    "get_tickers", "get_funding_rate_history", "get_public_trade_history", "get_open_interest",
    "get_historical_volatility", "get_insurance", "get_risk_limit", "get_option_delivery_price",
    "get_new_delivery_price", "get_long_short_ratio", "get_price_limit", "get_index_price_components",
    "get_system_status", "spread_get_instruments_info", "spread_get_orderbook", "spread_get_tickers",
    "spread_get_public_trade_history",
})

#: The trading account as it stands: orders, executions, positions, balances, fees.
ACCOUNT = frozenset({
    "get_open_orders", "get_order_history", "get_executions", "get_positions", "get_closed_pnl",
    "get_closed_options_positions", "get_wallet_balance", "get_fee_rates", "get_account_info",
    "get_transaction_log", "get_collateral_info", "get_coin_greeks", "get_mmp_state", "get_borrow_quota",
    "get_transferable_amount", "spread_get_open_orders", "spread_get_order_history", "spread_get_trade_history",
})

#: Orders: each judged by the risk limits, and changed or cancelled only by the strategy that placed it.
ORDERS = frozenset({
    "place_order", "pre_check_order", "amend_order", "cancel_order", "cancel_all_orders",
    "place_batch_order", "amend_batch_order", "cancel_batch_order",
})

#: One symbol's position settings (not the account-wide modes other strategies on the account rely on).
POSITIONS = frozenset({"set_leverage", "set_trading_stop", "set_auto_add_margin", "add_or_reduce_margin"})

STRATEGY_METHODS: frozenset[str] = MARKET | ACCOUNT | ORDERS | POSITIONS

MAX_ARGUMENTS = 48  #: keyword arguments in one call (Bybit's longest endpoint takes about 30)
MAX_TEXT = 512  #: characters of one text argument (a page cursor is the longest Bybit sends back)
#: Orders in one batch, by category: Bybit's own limits.
BATCH_LIMITS = {"spot": 10, "linear": 20, "inverse": 20, "option": 20}
MAX_BATCH = max(BATCH_LIMITS.values())


def refusal(method: str) -> str | None:
    """Why a strategy may not call ``method``; None when it may."""
    if method in STRATEGY_METHODS:
        return None
    if "upload" in method or "file" in method:
        why = "it makes the worker read a file the caller names"
    elif method.startswith("spread_"):
        why = "spread orders are not judged by the risk limits"
    else:
        why = "it is not on the allowlist of exchange methods a strategy may call"
    return f"{method!r} is refused: {why} (see docs/api.md#the-allowlist)"
