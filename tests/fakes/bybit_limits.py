"""The fake Bybit's untidy mode: its settings, and its rate limits per endpoint group.

Bybit limits each API key per endpoint, per second, and says so on every
reply: ``X-Bapi-Limit`` (calls per window), ``X-Bapi-Limit-Status`` (calls
left in it) and ``X-Bapi-Limit-Reset-Timestamp`` (ms, when the window ends).
A call past the limit is refused before it is acted on, with retCode 10006.
Untidy, the fake enforces this for each group of endpoints below; tidy, it
only reports a limit per key (tests/fakes/bybit.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

#: Each limited endpoint's group: the endpoints of a group share one budget per key.
GROUPS = {
    "/v5/order/create": "order", "/v5/order/amend": "order", "/v5/order/cancel": "order",
    "/v5/order/cancel-all": "order", "/v5/order/create-batch": "order", "/v5/order/amend-batch": "order",
    "/v5/order/cancel-batch": "order",
    "/v5/order/realtime": "order_read", "/v5/order/history": "order_read", "/v5/execution/list": "order_read",
    "/v5/position/list": "position",
    "/v5/account/wallet-balance": "account",
}
#: Calls per second per key of each group: Bybit's defaults for a linear account.
DEFAULT_LIMITS = {"order": 10, "order_read": 50, "position": 50, "account": 50}


@dataclass(frozen=True)
class Untidy:
    """How the untidy fake is untidy; FakeBybit(untidy=Untidy()) turns it on."""

    open_lag: float = 0.3  #: seconds after it was taken that an order shows in /v5/order/realtime
    history_lag: float = 1.5  #: seconds after it was taken that an order shows in /v5/order/history
    page_size: int = 2  #: most rows per page of any list, whatever ``limit`` asks
    limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))  #: calls per second per group


@dataclass(frozen=True)
class Verdict:
    """A call's turn in its group's window: refused (10006) or not, and the headers it answers with."""

    refused: bool
    headers: dict[str, str]


class GroupLimits:
    """One-second windows per (key, group); the caller holds the fake's lock."""

    def __init__(self, limits: Mapping[str, int]) -> None:
        self._limits = dict(limits)
        self._windows: dict[tuple[str, str], tuple[int, int]] = {}  # (key, group) -> (window end ms, calls in it)

    def take(self, api_key: str, path: str, now_ms: int) -> Verdict | None:
        """Count a call to ``path``; None for an endpoint no group limits."""
        group = GROUPS.get(path)
        if group is None or group not in self._limits:
            return None
        limit = self._limits[group]
        end, calls = self._windows.get((api_key, group), (0, 0))
        if now_ms >= end:
            end, calls = now_ms + 1000, 0
        refused = calls >= limit
        if not refused:
            calls += 1
        self._windows[(api_key, group)] = (end, calls)
        headers = {"X-Bapi-Limit": str(limit), "X-Bapi-Limit-Status": str(limit - calls),
                   "X-Bapi-Limit-Reset-Timestamp": str(end)}
        return Verdict(refused, headers)
