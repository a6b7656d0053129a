"""The fenced code blocks of README.md and docs/*.md, and how each is run (docs/development.md).

A block's language says how a test runs it; an HTML comment on the line just before
it may say instead that nothing runs it (``<!-- not run: REASON -->``) or that a named
test does (``<!-- run by tests/PATH.py -->``). The same ``run by`` comment on a page's
first line covers every ``sh`` block of the page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The pages whose blocks are run: the README and every page of the site.
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LANGUAGES = ("python", "js", "sh", "toml", "yaml", "text")

_FENCE = re.compile(r"^```(?P<lang>[\w+-]*)(?P<info>[^\n]*)$")
_MARKER = re.compile(r"^<!-- (?:(?P<not_run>not run: \S.*)|run by (?P<run_by>\S+)) -->$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  #: where the fence opens, 1-based
    lang: str
    info: str  #: what follows the language on the fence line (``title="root"``)
    body: str
    not_run: str | None  #: the reason given, when nothing runs it
    run_by: str | None  #: the test that runs it, as the comment names it

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    @property
    def checked_here(self) -> bool:
        """Run by the doc-example tests, by its language (not left out, not another test's)."""
        return self.not_run is None and self.run_by is None

    @property
    def is_worker_hooks(self) -> bool:
        return self.lang == "python" and re.search(r"^def st_worker_", self.body, re.M) is not None

    def commands(self) -> list[str]:
        """An ``sh`` block's lines, comments and blank lines dropped."""
        return [line for line in self.body.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    first = _MARKER.match(lines[0]) if lines else None
    page_run_by = first["run_by"] if first else None
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opened = _FENCE.match(lines[i])
        if opened is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j] == "```"), None)
        if end is None:
            raise AssertionError(f"{page.relative_to(REPO)}:{i + 1}: a fence that is never closed")
        before = _MARKER.match(lines[i - 1]) if i > 0 else None
        lang = opened["lang"]
        run_by = before["run_by"] if before else (page_run_by if lang == "sh" else None)
        found.append(Block(page=page, line=i + 1, lang=lang, info=opened["info"].strip(),
                           body="\n".join(lines[i + 1:end]) + "\n",
                           not_run=before["not_run"] if before else None, run_by=run_by))
        i = end + 1
    return found


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in blocks(page)]


def of(lang: str, *, worker_hooks: bool | None = None) -> list[Block]:
    """The blocks of ``lang`` the doc-example tests run (for python: strategies, or worker hook files)."""
    return [b for b in all_blocks() if b.lang == lang and b.checked_here
            and (worker_hooks is None or b.is_worker_hooks == worker_hooks)]
