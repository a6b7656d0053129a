"""`qlab status` for a person at a glance, and `qlab status --check` for scripts."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Lab

GOOD = "def st_init(ctx): pass\ndef st_heartbeat(ctx, tick): pass\ndef st_exit(ctx, reason): pass\n"
CRASH = "import os\ndef st_init(ctx): os._exit(3)\ndef st_heartbeat(ctx, tick): pass\ndef st_exit(ctx, reason): pass\n"


def test_an_empty_home_shows_only_the_summary(lab: Lab) -> None:
    out = lab.run("status").stdout.strip().splitlines()
    assert out == ["directors: 0 leading, 0 standby | workers: 0/0 live | strategies: none"]


def test_summary_then_tables_and_check_fails_on_failed_and_long_pending(lab: Lab) -> None:
    lab.director()
    lab.worker("w1")
    lab.assign(lab.strategy("good", GOOD), "--interval", "0.2")
    lab.assign(lab.strategy("crash", CRASH), "--max-errors", "1", "--backoff", "0")
    lab.assign(lab.strategy("far", GOOD), "--region", "US")
    lab.wait_status("good", "running")
    lab.wait_status("crash", "failed")
    lab.wait_status("far", "pending")
    out = lab.run("status").stdout.splitlines()
    assert out[0].startswith("directors: 1 leading, 0 standby | workers: 1/1 live | strategies: ")
    assert "1 failed" in out[0] and "1 pending" in out[0] and "1 running" in out[0]
    assert any("no live worker in region 'US'" in line for line in out)
    check = lab.run("status", "--check", "--pending-after", "0.1", check=False)
    assert check.returncode == 1
    assert any(line.startswith("crash failed: ") for line in check.stdout.splitlines())
    assert any(line.startswith("far pending for ") for line in check.stdout.splitlines())
    assert check.stdout.splitlines()[-1].startswith("FAIL: directors: 1 leading")
    relaxed = lab.run("status", "--check", "--pending-after", "3600", check=False)
    assert relaxed.returncode == 1 and "far" not in relaxed.stdout  # only the failed one counts now
    lab.run("strategy", "remove", "crash")
    ok = lab.run("status", "--check", "--pending-after", "3600", check=False)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: ")


def test_a_home_that_cannot_be_made_is_one_error_line(tmp_path: Path, lab: Lab) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = lab.run("--home", str(blocker / "home"), "status", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"Error: Not a directory: {blocker / 'home'}"]
