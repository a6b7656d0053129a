"""One exchange call as the API pool runs it: who makes it, its deadline, and how it fails.

The pool's parts (the gate in quantlab/exchange/dispatch.py, the sending in
sending.py and bybit.py, the order path in placing.py) each may refuse or fail
a call. They all raise the one ``Failure`` defined here, carrying the fields of
the ``ApiResult`` it becomes, so that ``Dispatcher`` turns every outcome into an
answer in one place and the pool never raises to a strategy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, NamedTuple

from quantlab.exchange.risk import NO_LIMITS, RiskLimits
from quantlab.exchange.signing import Fence
from quantlab.protocol import ApiCall, ApiResult


class Failure(Exception):
    """A call failed; carries the ApiResult fields.

    ``sure``: the exchange surely did not act on it (it answered with an error, or nothing
    was sent). A network error, an HTTP error or a garbled reply is not sure: the request
    may have been carried out, and an order's outcome must then be looked for.
    """

    def __init__(self, error: str, ret_code: int, kind: str, sure: bool = True) -> None:
        super().__init__(error)
        self.error = error
        self.ret_code = ret_code
        self.kind = kind
        self.sure = sure


class Caller(NamedTuple):
    """Who makes a call: a strategy (its epoch names its orders; its limits bound them), or the worker."""

    strategy: str
    epoch: int = 0
    limits: RiskLimits = NO_LIMITS


WORKER = Caller("")  #: the worker's own calls (halts' cancels, reconciliation): no intents, no limits


@dataclass(frozen=True)
class Job:
    """One call as the pool runs it."""

    call: ApiCall
    allowed: Collection[str]
    fence: Fence | None
    deadline: float  #: monotonic: a call that cannot start before it is refused unsent
    caller: Caller  #: for halts, intents and risk limits


def failed(call_id: int, failure: Failure) -> ApiResult:
    """The answer to a call that failed."""
    return ApiResult(call_id=call_id, ok=False, error=failure.error, ret_code=failure.ret_code, kind=failure.kind)
