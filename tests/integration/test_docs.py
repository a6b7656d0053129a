"""The documentation site builds with `mkdocs build --strict`: a broken link or anchor, or a
page left out of mkdocs.yml's nav, is a warning, and strict mode makes it fail the build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_site_builds_strict(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's notice about MkDocs 2.0, printed on every build
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    pages = {p.parent.name for p in (tmp_path / "site").rglob("index.html")}
    assert {"getting-started", "operations", "worker-hooks", "benchmarks"} <= pages
