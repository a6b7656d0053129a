from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from quantlab.worker.rules import JITTER, backoff_delay, next_tick, second_tick, tick_grid, tick_phase


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
    assert next_tick(10.3, 1.0, now=20.9) == 22.3  # whole intervals on: the phase stays, never under half an interval


def test_tick_phases_are_stable_and_spread() -> None:
    phases = [tick_phase(f"s{i}") for i in range(1000)]
    assert phases == [tick_phase(f"s{i}") for i in range(1000)] and all(0 <= p < 1 for p in phases)
    tenths = Counter(int(p * 10) for p in phases)
    assert len(tenths) == 10 and max(tenths.values()) < 150  # ~100 in each tenth of the interval


@given(st.floats(0, 1e6), st.sampled_from([0.05, 0.1, 1.0, 7.5]), st.floats(0, 0.999))
def test_the_second_tick_is_on_the_phase_at_least_half_an_interval_on(first: float, interval: float, phase: float) -> None:
    second = second_tick(first, interval, phase)
    assert first + interval / 2 - 1e-6 <= second <= first + 1.5 * interval + 1e-6
    offset = (second % interval + 1e-9) % interval  # where in the interval it falls: the phase's slot
    assert phase * interval - tick_grid(interval) - 1e-6 <= offset <= phase * interval + 1e-6


def test_the_grid_is_fine_for_fast_strategies_and_coarse_for_slow_ones() -> None:
    """10 Hz ticks keep slots of 2 ms; 1 Hz ones share slots of 10 ms (a hundred passes a second)."""
    assert [tick_grid(i) for i in (0.05, 0.1, 0.5, 1.0, 60.0)] == [0.002, 0.002, 0.005, 0.01, 0.01]


@given(st.floats(0, 1e6), st.sampled_from([0.05, 0.1, 1.0]), st.integers(0, 49), st.floats(0.01, 0.99), st.floats(0.01, 0.99))
def test_phases_in_one_slot_of_the_grid_tick_together(first: float, interval: float, slot: int, a: float, b: float) -> None:
    # Together, each wakeup of the worker's I/O thread and each group commit serves them all.
    # (Inside the slot: a phase on its very edge may round to the slot before.)
    slots = round(interval / tick_grid(interval))
    pa, pb = (slot % slots + a) / slots, (slot % slots + b) / slots
    assert second_tick(first, interval, pa) == second_tick(first, interval, pb)
