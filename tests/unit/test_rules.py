from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quantlab.worker.rules import JITTER, ErrorWindow, TickSchedule, backoff_delay


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


def test_error_window_forgets_old_errors() -> None:
    window = ErrorWindow(10.0)
    assert [window.add(t) for t in (0.0, 1.0, 2.0)] == [1, 2, 3]
    assert window.count(10.5) == 2
    assert window.add(20.0) == 1


def test_tick_sent_only_after_answer_and_overruns_counted() -> None:
    ticks = TickSchedule(1.0, now=0.0)
    assert ticks.due(0.0)
    assert ticks.sent(0.0) == 1
    assert not ticks.due(0.5)
    assert not ticks.due(1.0)  # still in flight: an overrun, skipped
    assert not ticks.due(2.0)
    assert ticks.overruns == 2
    assert ticks.answered(1)
    assert ticks.due(3.0)
    assert ticks.sent(3.0) == 2


def test_stale_answer_is_ignored() -> None:
    ticks = TickSchedule(1.0, now=0.0)
    ticks.sent(0.0)
    assert not ticks.answered(7)
    assert ticks.in_flight


def test_long_pause_does_not_burst() -> None:
    ticks = TickSchedule(1.0, now=0.0)
    ticks.sent(0.0)
    ticks.answered(1)
    assert ticks.due(100.0)
    ticks.sent(100.0)
    ticks.answered(2)
    assert not ticks.due(100.5)


def test_restart_numbers_ticks_afresh_and_keeps_overruns() -> None:
    ticks = TickSchedule(1.0, now=0.0)
    ticks.sent(0.0)
    ticks.due(1.0)
    ticks.restart(5.0)
    assert ticks.due(5.0) and ticks.sent(5.0) == 1 and ticks.overruns == 1
