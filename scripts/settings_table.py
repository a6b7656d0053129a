"""Rewrite docs/cli.md's table of strategy settings from StrategySpec's declarations.

    python scripts/settings_table.py [docs/cli.md]

Replaces what lies between the table's two marker lines
(quantlab.store.strategy_settings.TABLE_BEGIN and TABLE_END) and nothing else;
tests/unit/test_settings_table.py fails until the table is rewritten after a
setting changed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from quantlab.store.strategy_settings import TABLE_BEGIN, TABLE_END, markdown_table

PAGE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def rewritten(text: str) -> str:
    """``text`` with the block between the markers replaced by the current table."""
    head, begin, rest = text.partition(TABLE_BEGIN)
    _, end, tail = rest.partition(TABLE_END)
    if not begin or not end:
        raise SystemExit(f"the settings table's markers are missing: {TABLE_BEGIN} ... {TABLE_END}")
    return f"{head}{TABLE_BEGIN}\n{markdown_table()}\n{TABLE_END}{tail}"


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else PAGE
    text = path.read_text(encoding="utf-8")
    new = rewritten(text)
    if new != text:
        path.write_text(new, encoding="utf-8")
        print(f"rewrote the settings table in {path}")


if __name__ == "__main__":
    main()
