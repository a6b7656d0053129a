"""The fence's backstop thread: it kills at the deadline it was last given, from its own thread."""

from __future__ import annotations

import logging
import time

from quantlab.worker.fenceguard import FenceGuard
from tests.conftest import wait_for


def test_it_kills_once_the_last_deadline_given_passes_and_not_before() -> None:
    kills: list[float] = []
    guard = FenceGuard(lambda: kills.append(time.monotonic()), logging.getLogger("test"))
    try:
        first = time.monotonic() + 0.1
        guard.arm(first)
        later = time.monotonic() + 0.3  # a renewal before the first deadline moves it
        guard.arm(later)
        wait_for(lambda: kills, timeout=5, what="the guard to kill")
        assert kills[0] >= later
    finally:
        guard.close()
    assert len(kills) == 1
