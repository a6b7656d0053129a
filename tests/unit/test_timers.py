"""The worker's deadline heap (src/quantlab/worker/timers.py) against the plain scan it replaced."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quantlab.worker.timers import Timers

KEYS = st.sampled_from(["a", "b", "c", "d"])
STEPS = st.lists(st.one_of(
    st.tuples(st.just("set"), KEYS, st.one_of(st.none(), st.integers(0, 20).map(float))),
    st.tuples(st.just("pop"), st.just(""), st.integers(0, 20).map(float)),
), max_size=60)


@given(STEPS)
def test_timers_say_what_a_scan_of_every_key_would(steps: list[tuple[str, str, float | None]]) -> None:
    timers, plain = Timers(), dict[str, float]()
    for op, key, value in steps:
        if op == "set":
            timers.set(key, value)
            if value is None:
                plain.pop(key, None)
            else:
                plain[key] = value
        else:
            assert value is not None
            due = sorted((when, key) for key, when in plain.items() if when <= value)
            assert sorted(timers.pop_due(value)) == sorted(key for _, key in due)
            for _, key in due:
                del plain[key]
        assert timers.next() == (min(plain.values()) if plain else None)
        assert len(timers) == len(plain)
