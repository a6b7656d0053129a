"""The chaos soak's live account: a few strategies trade through pybit on the untidy fake Bybit.

The paper account judges an order inside the store's write, so the soak can
read who placed each order and under which epoch from the account itself.
A live order leaves the worker signed with its fence's window and lands, or
not, at an exchange the worker does not control: here the fake Bybit of the
tests (tests/fakes/bybit.py) in its untidy mode (late lists, lagging
history, small pages, partial fills, enforced rate limits), run in the
soak's own process. Every couple of seconds it plays one fault on the next
order that reaches it: a lost reply, a request held past its sender's
pause, a 500, a dropped connection.

What the exchange took is read from the fake; who sent each order and
under which epoch, from the order intents the worker wrote before signing
(chaos_ledger.py matches the two).
"""

from __future__ import annotations

import random
import time
from typing import Any

from quantlab.exchange.orders import SHOWN_WITHIN
from quantlab.exchange.signing import WINDOW_SLACK
from tests.fakes.bybit import FakeBybit
from tests.fakes.bybit_limits import DEFAULT_LIMITS, Untidy

ACCOUNT = "live"
KEY = "CHAOSLIVEKEY1"
SECRET = "chaos-live-s3cr3t-Zq8Lw2"
SECRET_ENV = "QLAB_CHAOS_LIVE_SECRET"
CREATE = "/v5/order/create"
#: What a fault on the live account does to the next order that reaches the exchange.
FAULTS = ("ack_lost", "hold", "http_500", "drop")
FAULT_EVERY = (1.0, 4.0)  #: seconds between two faults, drawn evenly
HOLD = 1.0  #: seconds a held request waits before the exchange judges it: inside its window, past a pause
#: Order calls per second the key may make: above the two strategies' 10 a second, below which the
#: worker's pacing (by Bybit's limit headers) would be all a run measures.
ORDER_LIMIT = 25


def start_wait(lease_ttl: float) -> float:
    """Seconds a live strategy may take past the soak's recovery bound to beat again.

    Its start waits until no order of the process before it can land any more: a window of at
    most the lease, the exchange's slack, and the lag of its lists (quantlab/exchange/reconcile.py).
    Its first order may then wait as long for a lost reply (quantlab/exchange/placing.py).
    """
    return 2 * (lease_ttl + WINDOW_SLACK + SHOWN_WITHIN)


class LiveExchange:
    """The fake Bybit for the live account, its account line for the accounts file, and its faults."""

    def __init__(self, rng: random.Random) -> None:
        self.fake = FakeBybit(untidy=Untidy(limits={**DEFAULT_LIMITS, "order": ORDER_LIMIT})).__enter__()
        self.fake.add_key(KEY, SECRET)
        self.fake.set_ticker("BTCUSDT", 50_000.0)
        self.fake.hold_delay = HOLD
        self.rng = rng
        self.next_fault = time.monotonic() + rng.uniform(*FAULT_EVERY)
        self.faults: dict[str, int] = {kind: 0 for kind in FAULTS}

    def account(self) -> dict[str, Any]:
        """Its line in the accounts file: the secret comes from the workers' environment."""
        return {"name": ACCOUNT, "type": "bybit", "api_key": KEY, "api_secret_env": SECRET_ENV,
                "endpoint": self.fake.url, "timeout": 2.0, "max_retries": 1}

    def step(self, now: float) -> None:
        if now < self.next_fault:
            return
        kind = self.rng.choice(FAULTS)
        self.fake.inject(kind, path=CREATE)
        self.faults[kind] += 1
        self.next_fault = now + self.rng.uniform(*FAULT_EVERY)

    def quiet(self) -> None:
        """No more faults from now on (one already injected still meets the next order)."""
        self.next_fault = float("inf")

    def orders(self) -> list[dict[str, Any]]:
        """Every order the exchange took, each as the order history shows it (with ``createdTime``, ms)."""
        return self.fake.orders()

    def close(self) -> None:
        self.fake.close()
