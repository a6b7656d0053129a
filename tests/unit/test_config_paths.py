"""quantlab.config finds the source checkout (the accounts file's last resort is its etc/env.jsonl)."""

from __future__ import annotations

from quantlab.config import REPO_ROOT


def test_repo_root_is_the_checkout_around_src() -> None:
    assert (REPO_ROOT / "etc" / "env.jsonl.example").is_file()
    assert (REPO_ROOT / "src" / "quantlab" / "config.py").is_file()
