"""README.md and docs/ say what the code does: links that lead somewhere, and the lists
written by hand beside the code (commands, options, events, metrics, modules, wctx)
compared with the code they describe.

The site itself is built with `mkdocs build --strict` in tests/integration/test_docs.py.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import click

from quantlab import cli_fleet  # noqa: F401  (its commands join cli's groups)
from quantlab.cli import qlab
from quantlab.ops.metrics import DirectorMetrics, WorkerMetrics
from quantlab.store.records import EventKind
from quantlab.worker import context
from tests.docblocks import PAGES, REPO, blocks

README = REPO / "README.md"
DOCS = REPO / "docs"
#: A front page, not a manual: the rest belongs in docs/.
README_MAX_LINES = 300

_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _outside_code(text: str) -> str:
    """``text`` without its fenced blocks and inline code (links there are not links)."""
    text = re.sub(r"^```.*?^```$", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """A heading's anchor as MkDocs' toc makes it (and GitHub, for these headings)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = unicodedata.normalize("NFKD", text)
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", re.sub(r"^```.*?^```$", "", _text(path), flags=re.M | re.S), re.M)
    return {slug(h) for h in headings}


def test_the_readme_is_a_front_page() -> None:
    assert len(_text(README).splitlines()) < README_MAX_LINES


def test_relative_links_lead_to_a_file_and_heading_that_exist() -> None:
    broken = []
    for page in PAGES:
        for target in _LINK.findall(_outside_code(_text(page))):
            if re.match(r"[a-z]+:", target):
                continue  # http:, mailto:
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.relative_to(REPO)}: {target}: no such file")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{page.relative_to(REPO)}: {target}: no such heading")
    assert broken == []


def test_the_readme_links_into_the_docs_by_relative_paths() -> None:
    links = _LINK.findall(_outside_code(_text(README)))
    into_docs = [link for link in links if link.startswith("docs/")]
    assert len(into_docs) >= 10
    assert not [link for link in links if link.startswith("/") or "quantlab.readthedocs" in link]


def test_every_page_is_in_the_sites_nav() -> None:
    """The build says so too (omitted_files: warn, in strict mode); this says it in the fast tier."""
    nav = _text(REPO / "mkdocs.yml")
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert sorted(p for p in pages if f": {p}" not in nav) == []


# ---- the command line ----


def _commands() -> dict[str, click.Command]:
    """Every `qlab` command a user can type, by its words ("strategy assign"), hidden ones left out."""
    found: dict[str, click.Command] = {}

    def walk(command: click.Command, words: list[str]) -> None:
        if isinstance(command, click.Group):
            ctx = click.Context(command)
            for name in command.list_commands(ctx):  # with `qlab`'s commands made on first use (cli.LATE_COMMANDS)
                sub = command.get_command(ctx, name)
                assert sub is not None, name
                walk(sub, [*words, name])
        elif not command.hidden:
            found[" ".join(words)] = command

    walk(qlab, [])
    return found


def _text_block(path: Path, starts: str) -> str:
    block = next(b for b in blocks(path) if b.lang == "text" and b.body.startswith(starts))
    return block.body


def test_the_readmes_command_summary_names_every_command() -> None:
    summary = _text_block(README, "qlab up")
    lines = [line.split("  ")[0] for line in summary.splitlines()]
    missing = []
    for words in _commands():
        group, _, name = words.rpartition(" ")
        # "qlab strategy stop | start | restart ..." names each of them
        named = re.compile(rf"qlab {group + ' ' if group else ''}([a-z]+ \| )*{name}\b")
        if not any(named.match(line) for line in lines):
            missing.append(words)
    assert missing == [], f"README.md's command summary lacks: {missing}"


def _synopsis() -> dict[str, str]:
    """docs/cli.md's synopsis: each command's words -> its lines (continuation lines included)."""
    body = _text_block(DOCS / "cli.md", "qlab [")
    entries: dict[str, str] = {}
    words = ""
    for line in body.splitlines():
        if line.startswith("qlab "):
            head = re.match(r"qlab ((?:[a-z]+ ?)*)", line)
            assert head is not None
            words = " ".join(w for w in head[1].split() if w)
            entries[words] = ""
        entries[words] += line.split("  #")[0] + "\n"
    return entries


def test_the_synopsis_names_every_command_and_option() -> None:
    synopsis = _synopsis()
    missing = []
    for words, command in sorted({**_commands(), "": qlab}.items()):
        entry = synopsis.get(words)
        if entry is None:
            missing.append(f"qlab {words}")
            continue
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and param.name != "help":
                if not any(re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", entry) for opt in param.opts):
                    missing.append(f"qlab {words} {param.opts[-1]}")
    assert missing == [], f"docs/cli.md's synopsis lacks: {missing}"


# ---- lists written beside the code ----


def test_the_events_table_names_every_event_kind() -> None:
    page = _text(DOCS / "supervision.md")
    table = page[page.index("## Events"):]
    named = set(re.findall(r"`([a-z_]+)`", table))
    assert {kind.value for kind in EventKind} <= named
    assert named - {kind.value for kind in EventKind} <= {"EventKind"}


def test_the_metrics_tables_name_every_metric() -> None:
    page = _text(DOCS / "running.md")
    section = page[page.index("## Metrics"):page.index("## Private by default")]
    named = {name.removesuffix("_total") for name in re.findall(r"`(quantlab_[a-z_]+)", section)}
    for metrics in (WorkerMetrics(), DirectorMetrics()):
        served = {family.name for family in metrics.registry.collect()}
        assert served <= named, served - named


def test_the_architecture_table_names_every_module() -> None:
    page = _text(DOCS / "architecture.md")
    table = page[page.index("## Where each behaviour lives"):]
    rows = [line for line in table.splitlines() if line.startswith("| `src/quantlab/")]
    named: set[str] = set()
    for row in rows:
        cell = row.split("|")[1]
        folder = ""
        for name in re.findall(r"`([^`]+)`", cell):
            if name.startswith("src/quantlab/"):
                folder = name.rsplit("/", 1)[0]
                named.add(name)
            else:
                named.add(f"{folder}/{name}")
    modules = {str(p.relative_to(REPO)) for p in (REPO / "src" / "quantlab").rglob("*.py") if p.name != "__init__.py"}
    assert sorted(modules - named) == [], "add a row (or a name to a row) in docs/architecture.md"
    assert sorted(named - modules) == [], "a row names a module that is not there"


def test_the_worker_hooks_page_documents_exactly_wctxs_public_names() -> None:
    page = _text(DOCS / "worker-hooks.md")
    table = page[page.index("## `wctx`"):page.index("## The example")]
    documented = re.findall(r"^\| `([a-z_]+)[`(]", table, re.M)
    assert documented == list(context.PUBLIC)
    for name in context.PUBLIC:
        assert hasattr(context.WorkerContext, name) or name in context.WorkerContext.__init__.__code__.co_names
