"""RateLimiter on an injected clock: no test here really sleeps."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantlab.exchange.ratelimit import DEFAULT_PAUSE, MAX_PAUSE, AccountLimits, RateLimiter


class FakeClock:
    """A clock that moves only when someone sleeps on it (or a test advances it)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def limiter(clock: FakeClock, rate: float, burst: float | None = None) -> RateLimiter:
    return RateLimiter(rate, burst, clock=clock, sleep=clock.sleep)


def test_a_burst_goes_at_once_then_calls_are_paced() -> None:
    clock = FakeClock()
    bucket = limiter(clock, rate=2, burst=3)
    assert all(bucket.acquire(timeout=10) for _ in range(5))
    assert clock.sleeps == [pytest.approx(0.5), pytest.approx(0.5)]


def test_the_default_burst_is_one_second_of_calls() -> None:
    clock = FakeClock()
    bucket = limiter(clock, rate=4)
    assert all(bucket.acquire(timeout=10) for _ in range(4))
    assert clock.sleeps == []
    assert bucket.acquire(timeout=10)
    assert clock.sleeps == [pytest.approx(0.25)]


def test_a_turn_beyond_the_timeout_is_refused_at_once_and_takes_nothing() -> None:
    clock = FakeClock()
    bucket = limiter(clock, rate=1, burst=1)
    assert bucket.acquire(timeout=0)
    assert not bucket.acquire(timeout=0.5)
    assert clock.sleeps == []
    assert bucket.acquire(timeout=1.0)  # the refused call left its slot free
    assert clock.sleeps == [pytest.approx(1.0)]


def test_the_bucket_refills_while_idle_but_only_up_to_the_burst() -> None:
    clock = FakeClock()
    bucket = limiter(clock, rate=2, burst=2)
    assert bucket.acquire(10) and bucket.acquire(10)
    clock.now += 60
    assert bucket.acquire(10) and bucket.acquire(10)
    assert clock.sleeps == []
    assert bucket.acquire(10)
    assert clock.sleeps == [pytest.approx(0.5)]


def test_pause_until_holds_every_call_then_the_budget_is_full_again() -> None:
    clock = FakeClock()
    bucket = limiter(clock, rate=10, burst=2)
    bucket.pause_until(clock.now + 3)
    assert bucket.acquire(timeout=5)
    assert clock.sleeps == [pytest.approx(3)]
    assert bucket.acquire(timeout=5)
    assert clock.sleeps == [pytest.approx(3)]  # the second call of the fresh burst did not wait


def test_a_pause_longer_than_the_timeout_refuses() -> None:
    clock = FakeClock()
    bucket = limiter(clock, rate=10)
    bucket.pause_until(clock.now + 30)
    assert not bucket.acquire(timeout=10)
    assert clock.sleeps == []


def test_a_pause_arriving_while_a_caller_sleeps_makes_it_wait_for_the_pause() -> None:
    clock = FakeClock()
    paused: list[bool] = []

    def pause_then_sleep(seconds: float) -> None:
        if not paused:  # meanwhile the exchange answers 10006 to another thread
            paused.append(True)
            bucket.pause_until(clock.now + 5)
        clock.sleep(seconds)

    bucket = RateLimiter(1, 1, clock=clock, sleep=pause_then_sleep)
    start = clock.now
    assert bucket.acquire(timeout=0)
    assert bucket.acquire(timeout=10)
    assert clock.now >= start + 5


def test_threads_share_the_bucket_each_in_its_own_slot() -> None:
    """With the clock frozen, each thread sleeps until its slot: the slots are 1/rate apart."""
    frozen = 50.0
    sleeps: list[float] = []
    lock = threading.Lock()

    def record(seconds: float) -> None:
        with lock:
            sleeps.append(seconds)

    bucket = RateLimiter(4, 2, clock=lambda: frozen, sleep=record)
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(bucket.acquire(timeout=10))) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 10
    assert sorted(sleeps) == pytest.approx([0.25 * i for i in range(1, 9)])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)
    with pytest.raises(ValueError):
        RateLimiter(5, burst=0.5)


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(0.5, 50),
    burst=st.integers(1, 5),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=40),
)
def test_no_window_ever_sees_more_than_burst_plus_rate_times_its_length(
    rate: float, burst: int, gaps: list[float]
) -> None:
    clock = FakeClock()
    bucket = limiter(clock, rate, burst)
    granted: list[float] = []
    for gap in gaps:
        clock.now += gap
        if bucket.acquire(timeout=1.0):
            granted.append(clock.now)
    for i, first in enumerate(granted):
        for j in range(i, len(granted)):
            assert j - i + 1 <= burst + (granted[j] - first) * rate + 1e-6


# ---- AccountLimits: one bucket per account, paused by the exchange's word ----


def test_a_10006_pauses_only_its_account_and_the_wait_is_reported() -> None:
    clock = FakeClock()
    waited: list[tuple[str, float]] = []
    limits = AccountLimits({"busy": 1000.0, "idle": 1000.0}, clock, clock.sleep,
                           lambda account, seconds: waited.append((account, seconds)))
    limits.note("busy", None, rate_limited=True)  # no reset time named: the default pause
    assert limits.acquire("idle", timeout=0)
    assert not limits.acquire("busy", timeout=DEFAULT_PAUSE / 2)
    assert limits.acquire("busy", timeout=DEFAULT_PAUSE)
    assert waited == [("busy", pytest.approx(DEFAULT_PAUSE))]


def test_a_spent_budget_header_pauses_at_most_max_pause() -> None:
    clock = FakeClock()
    limits = AccountLimits({"main": 1000.0}, clock, clock.sleep)
    limits.note("main", {"X-Bapi-Limit-Status": "1"}, rate_limited=False)  # budget left: no pause
    assert limits.acquire("main", timeout=0)
    far = {"X-Bapi-Limit-Status": "0", "X-Bapi-Limit-Reset-Timestamp": "99999999999999"}
    limits.note("main", far, rate_limited=False)
    assert not limits.acquire("main", timeout=MAX_PAUSE - 1)
    assert limits.acquire("main", timeout=MAX_PAUSE)
