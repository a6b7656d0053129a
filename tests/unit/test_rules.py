from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quantlab.worker.rules import JITTER, backoff_delay, next_tick


def test_backoff_doubles_and_caps() -> None:
    delays = [backoff_delay(1.0, 60.0, n, 0.5) for n in range(1, 9)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_backoff_zero_means_at_once() -> None:
    assert backoff_delay(0.0, 60.0, 5, 0.9) == 0.0


@given(base=st.floats(0.01, 10), n=st.integers(1, 30), rand=st.floats(0, 0.999))
def test_backoff_jitter_stays_in_bounds(base: float, n: int, rand: float) -> None:
    plain = min(60.0, base * 2 ** (n - 1))
    delay = backoff_delay(base, 60.0, n, rand)
    assert plain * (1 - JITTER) - 1e-9 <= delay <= min(60.0, plain * (1 + JITTER)) + 1e-9


def test_next_tick_is_one_interval_on() -> None:
    assert next_tick(10.0, 1.0, now=10.2) == 11.0


def test_next_tick_after_a_long_pause_skips_ahead_never_bursts() -> None:
    assert next_tick(10.0, 1.0, now=100.0) == 101.0
    assert next_tick(10.0, 1.0, now=11.0) == 12.0  # due exactly now: not in the past
