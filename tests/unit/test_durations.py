"""`--since` as people type it: durations back from now, or an ISO time."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from quantlab import durations
from quantlab.errors import BadInput

NOW = 1_700_000_000.0


@pytest.mark.parametrize("text, seconds", [
    ("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), ("2h30m", 9000), ("1.5h", 5400), (" 10M ", 600),
])
def test_durations(text: str, seconds: float) -> None:
    assert durations.since(text, NOW) == NOW - seconds


def test_an_iso_time_with_a_zone_and_a_local_one() -> None:
    assert durations.since("2023-11-14T22:13:20+00:00", NOW) == NOW
    local = datetime(2023, 11, 14, 9, 30)
    assert durations.since("2023-11-14T09:30", NOW) == local.astimezone().timestamp()
    assert datetime.fromtimestamp(durations.since("2023-11-14T22:13:20Z", NOW), timezone.utc).hour == 22


@pytest.mark.parametrize("text", ["yesterday", "10", "5x", "", "m10"])
def test_anything_else_is_one_error_naming_the_forms(text: str) -> None:
    with pytest.raises(BadInput, match=r"--since .*: give a duration such as 30s, 10m, 2h or 1d, or an ISO time"):
        durations.since(text, NOW)
