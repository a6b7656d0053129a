"""A test that needs what the machine lacks skips with one line, and fails with that line under CI=true."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests import conftest, pgutil
from tests.guide import Systemd

TESTS = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_lacking_skips_here_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="this machine lacks systemd-analyze"):
        conftest.lacking("systemd-analyze")


def test_a_needs_mark_meets_lacking_before_the_test_runs(monkeypatch: pytest.MonkeyPatch,
                                                         request: pytest.FixtureRequest) -> None:
    monkeypatch.setenv("CI", "true")
    mark = conftest.needs("Node").mark
    monkeypatch.setattr(request.node, "iter_markers", lambda name: iter([mark] if name == "lacks" else []))
    with pytest.raises(pytest.fail.Exception, match="CI=true but this machine lacks Node"):
        conftest.pytest_runtest_setup(request.node)
    assert conftest.needs("").mark.args == ()  # present: nothing to meet


def test_the_guide_fails_in_ci_without_systemd_analyze(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The operator guide's daemon-reload verifies the units; in CI a missing tool fails it, elsewhere it warns."""
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    systemd = Systemd(guide=None, units=tmp_path, guide_blocks=[])  # type: ignore[arg-type]
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="lacks systemd-analyze"):
        systemd.verify()
    monkeypatch.setenv("CI", "")
    with pytest.warns(UserWarning, match="lacks systemd-analyze"):
        systemd.verify()


def test_postgres_missing_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgutil, "admin_url", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but this machine lacks"):
        pgutil.require_postgres()


def test_no_test_skips_but_through_lacking() -> None:
    """Every skip for want of something goes through conftest's one helper, which fails under CI=true."""
    pattern = re.compile(r"pytest\.skip\(|pytest\.mark\.skipif|importorskip")
    found = [
        f"{path.relative_to(TESTS)}:{n}"
        for path in TESTS.rglob("*.py")
        if path.name not in ("conftest.py", "test_lacking.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, f"skips that CI=true would not turn into failures: {found}"
