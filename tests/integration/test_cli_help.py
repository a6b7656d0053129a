"""`qlab --help` from its cache (quantlab.helpcache): click's text exactly, and never a stale one.

A run the cache answered leaves the cache file as it was; one click answered
writes it anew (a new inode). Every test has its own HOME and XDG_CACHE_HOME.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quantlab import helpcache
from tests.conftest import QLAB

SRC = Path(__file__).resolve().parents[2] / "src"


class Home:
    """A user with an empty cache, running `qlab` (or another command line) with ``env`` added."""

    def __init__(self, tmp: Path) -> None:
        self.cache = tmp / "cache"
        self.env = {**os.environ, "HOME": str(tmp / "home"), "XDG_CACHE_HOME": str(self.cache)}
        self.env.pop("COLUMNS", None)
        # An idle working directory: `python -c` puts it on sys.path, whose folders the cache stamps.
        self.cwd = tmp / "cwd"
        self.cwd.mkdir(parents=True)

    def run(self, *args: str, command: list[str] | None = None, **env: str) -> str:
        done = subprocess.run([*(command or [QLAB]), *args], capture_output=True, text=True, timeout=30,
                              env={**self.env, **env}, cwd=self.cwd)
        assert (done.returncode, done.stderr) == (0, ""), done
        return done.stdout

    def file(self, columns: int = 80) -> Path:
        return self.cache / "quantlab" / f"help-{columns}"

    def inode(self, columns: int = 80) -> int:
        return self.file(columns).stat().st_ino


def copied(tmp: Path) -> Home:
    """A user running `qlab` from a copy of the package, which a test may edit."""
    shutil.copytree(SRC / "quantlab", tmp / "src" / "quantlab",
                    ignore=shutil.ignore_patterns("node_modules", "__pycache__"))
    user = Home(tmp)
    user.env["PYTHONPATH"] = str(tmp / "src")  # ahead of the installed package
    aged(tmp / "src")
    return user


def aged(root: Path) -> None:
    """Wait until the last change under ``root`` is older than the cache's clock slack.

    A help rendered by a process that began within the slack of a change is, by
    design, not kept; on a fast machine the next run can begin that soon.
    """
    newest = max(path.stat().st_ctime_ns for path in [root, *root.rglob("*")])
    while time.time_ns() <= newest + helpcache.CLOCK_SLACK_NS:
        time.sleep(0.005)


#: `qlab`, from whichever quantlab is first on the path.
ENTRY = [sys.executable, "-c", "from quantlab.entry import main; main()"]


def click_help(tmp: Path, **env: str) -> str:
    """The help click prints, through the CLI module itself (never the cache)."""
    return Home(tmp / "click").run("--help", command=[sys.executable, "-m", "quantlab.cli"], **env)


def test_a_cold_cache_prints_clicks_help_and_keeps_it_for_the_next_run(tmp_path: Path) -> None:
    expected = click_help(tmp_path)
    user = Home(tmp_path)
    assert user.run("--help") == expected
    kept = user.inode()
    assert user.run("--help") == expected
    assert user.run("-h") == expected
    assert user.inode() == kept  # both answered from the cache


def test_the_cache_is_per_terminal_width(tmp_path: Path) -> None:
    user = Home(tmp_path)
    user.run("--help")
    narrow = user.run("--help", COLUMNS="60")
    assert narrow == click_help(tmp_path, COLUMNS="60") != user.run("--help")
    assert user.file(60).is_file()


def test_an_edited_command_module_is_never_shown_stale(tmp_path: Path) -> None:
    user = copied(tmp_path)
    before = user.run("--help", command=ENTRY)
    kept = user.inode()
    assert user.run("--help", command=ENTRY) == before and user.inode() == kept
    cli = tmp_path / "src" / "quantlab" / "cli.py"
    cli.write_text(cli.read_text().replace("Run live trading", "Run LIVE trading"))  # same size, same file
    after = user.run("--help", command=ENTRY)
    assert after == before.replace("Run live trading", "Run LIVE trading") != before


def test_help_rendered_while_a_module_changed_is_not_kept(tmp_path: Path) -> None:
    user = copied(tmp_path)
    user.run("--help", command=ENTRY)
    user.file().unlink()
    # cli.py touched once the process has begun: which cli.py it imported, its stamps cannot tell.
    cli = tmp_path / "src" / "quantlab" / "cli.py"
    touch_then_run = f"import os, quantlab.helpcache; os.utime({str(cli)!r}); from quantlab.entry import main; main()"
    user.run("--help", command=[sys.executable, "-c", touch_then_run])
    assert not user.file().exists()
    aged(cli)
    user.run("--help", command=ENTRY)
    assert user.file().exists()


def test_an_unusable_cache_leaves_the_help_to_click(tmp_path: Path) -> None:
    expected = click_help(tmp_path)
    user = Home(tmp_path)
    user.cache.write_text("")  # not a folder: nothing can be kept under it
    assert user.run("--help") == expected
    user.cache.unlink()
    user.file().parent.mkdir(parents=True)
    user.file().write_bytes(b"\xff\0garbage")
    assert user.run("--help") == expected
    kept = user.inode()  # click wrote a good one over it
    assert user.run("--help") == expected and user.inode() == kept


def test_without_xdg_cache_home_the_cache_is_under_home(tmp_path: Path) -> None:
    user = Home(tmp_path)
    del user.env["XDG_CACHE_HOME"]
    user.run("--help")
    assert (tmp_path / "home" / ".cache" / "quantlab" / "help-80").is_file()


def test_the_groups_own_options_before_the_help_are_answered_from_the_cache(tmp_path: Path) -> None:
    expected = click_help(tmp_path)
    user = Home(tmp_path)
    assert user.run("--help") == expected
    kept = user.inode()
    for args in (["--home", str(tmp_path / "elsewhere"), "--help"], ["--store=postgresql://u@h/db", "-h"],
                 ["--config", "q.toml", "--host", "h1", "--help"]):
        assert user.run(*args) == expected
    assert user.inode() == kept  # click, had it answered, would have written the cache anew


@pytest.mark.parametrize("argv", [["--home", "--help"], ["--help", "--help"], ["worker", "--help"], ["--home", "x"],
                                  ["--verbose", "--help"], []])
def test_any_other_command_line_is_left_to_click(argv: list[str]) -> None:
    assert helpcache.help_asked(argv) is None
