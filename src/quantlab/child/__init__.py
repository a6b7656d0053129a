"""Layer 3: the strategy child: runner, ctx and the strategy-file loader."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

#: A strategy file with one of these runs in Node (quantlab/child/jsruntime.py); any other is Python.
JS_SUFFIXES = (".js", ".mjs")


def is_js(file: str | Path) -> bool:
    return str(file).endswith(JS_SUFFIXES)
