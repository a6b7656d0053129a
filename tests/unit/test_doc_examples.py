"""Every code block of README.md and docs/ is run, by its language (docs/development.md).

Here, in-process: strategies in Python (their hooks called with a small ctx on paper
accounts), fleet manifests and worker profiles (TOML), YAML. The blocks that need real
processes (sh, js, worker hook files) run in tests/integration/test_doc_examples.py.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import textwrap
import time
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from quantlab import manifest
from quantlab.child import loader
from quantlab.child.context import Api, StrategyContext
from quantlab.child.jsoncheck import to_json
from quantlab.errors import ApiError
from quantlab.exchange.accounts import Account
from quantlab.exchange.methods import PUBLIC_METHODS
from quantlab.exchange.paper import PaperExchange
from quantlab.store.filestore import FileStore
from quantlab.store.records import ExitReason, TickInfo
from quantlab.worker.options import load_profile
from tests.docblocks import LANGUAGES, REPO, Block, all_blocks, of

#: Ticks a strategy example gets (one for a fragment: it may place an order with a fixed orderLinkId).
TICKS = 3


def _ids(blocks: list[Block]) -> list[str]:
    return [b.where for b in blocks]


# ---- every block is accounted for ----


def test_every_block_has_a_language_the_rules_know() -> None:
    unknown = [f"{b.where}: ```{b.lang}" for b in all_blocks() if b.lang not in LANGUAGES]
    assert unknown == [], f"a block needs one of {LANGUAGES} (docs/development.md): {unknown}"


def test_a_block_run_by_another_test_names_a_test_that_reads_its_page() -> None:
    for block in all_blocks():
        if block.run_by is None:
            continue
        test = REPO / block.run_by
        assert test.is_file(), f"{block.where}: no test {block.run_by}"
        page = str(block.page.relative_to(REPO))
        assert page in test.read_text(encoding="utf-8"), f"{block.where}: {block.run_by} does not name {page}"


def test_each_language_the_rules_run_has_examples() -> None:
    """The extraction finds what the pages hold (a broken fence pattern would find nothing and pass)."""
    checked = {b.lang for b in all_blocks() if b.checked_here}
    assert {"python", "js", "sh", "toml", "yaml"} <= checked


# ---- python: strategies, called with a small ctx ----


class PaperAccounts:
    """``ctx.api``'s caller: any account name is a paper account, in a store of the test's own."""

    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.exchanges: dict[str, PaperExchange] = {}

    def __call__(self, account: str, method: str, kwargs: dict[str, Any]) -> Any:
        exchange = self.exchanges.get(account)
        if exchange is None:
            exchange = self.exchanges[account] = PaperExchange(Account(name=account, type="paper", seed=7),
                                                               self.store, time.time)
        reply = exchange.call(method, kwargs)
        if reply["retCode"] != 0:
            raise ApiError(reply["retMsg"], reply["retCode"])
        return reply


def strategy_source(block: Block) -> str:
    """The block as a strategy file: itself, or a fragment as the body of st_heartbeat."""
    if "def st_" in block.body:
        return block.body
    body = textwrap.indent(block.body, "    ")
    return f"def st_init(ctx):\n    pass\n\ndef st_heartbeat(ctx, tick):\n{body}\ndef st_exit(ctx, reason):\n    pass\n"


def accounts_named(module: ModuleType, source: str) -> list[str]:
    """The accounts the example's Work would name: its ACCOUNTS, and every one it calls (as --account would)."""
    named = [*getattr(module, "ACCOUNTS", []), *re.findall(r'bybit\["([^"]+)"\]', source)]
    return list(dict.fromkeys(named)) or ["paper"]


def _call(module: ModuleType, hook: str, *args: Any) -> None:
    result = getattr(module, hook)(*args)
    if inspect.isawaitable(result):
        asyncio.run(result)  # type: ignore[arg-type]


@pytest.mark.parametrize("block", of("python", worker_hooks=False), ids=_ids(of("python", worker_hooks=False)))
def test_a_python_strategy_example_checks_and_runs(block: Block, tmp_path: Path) -> None:
    source = strategy_source(block)
    path = tmp_path / "example.py"
    path.write_text(source, encoding="utf-8")
    loader.check_file(path)  # what `qlab strategy assign` checks
    module = ModuleType("doc_example")
    module.__file__ = str(path)
    exec(compile(source, str(path), "exec"), module.__dict__)
    sent: list[Any] = []
    ctx = StrategyContext(
        id="example", params={}, state={}, log=lambda: logging.getLogger("doc-example"),
        api=Api(accounts_named(module, source), PaperAccounts(FileStore(tmp_path / "store")), PUBLIC_METHODS),
        send=sent.append,
    )
    _call(module, "st_init", ctx)
    to_json(ctx.state, "state")  # what the child checks after every hook
    ticks = TICKS if "def st_" in block.body else 1
    for seq in range(1, ticks + 1):
        _call(module, "st_heartbeat", ctx, TickInfo(seq=seq, ts=time.time(), interval=1.0))
        to_json(ctx.state, "state")
        if hasattr(module, "st_message"):
            _call(module, "st_message", ctx, {"from": "test", "seq": seq})
        if ctx.stop_reason is not None:
            break
    reason = "manual" if ctx.stop_reason is not None else "worker_exit"
    _call(module, "st_exit", ctx, ExitReason(type=reason, message=ctx.stop_reason or "the test ends"))
    to_json(ctx.state, "state")


def test_the_python_examples_include_a_fragment_an_async_one_and_one_that_stops_itself() -> None:
    bodies = [b.body for b in of("python", worker_hooks=False)]
    assert any("def st_" not in body for body in bodies)
    assert any("async def st_heartbeat" in body and "ctx.stop(" in body for body in bodies)


# ---- toml: fleet manifests and worker profiles ----


@pytest.mark.parametrize("block", of("toml"), ids=_ids(of("toml")))
def test_a_toml_example_is_what_it_stands_for(block: Block, tmp_path: Path) -> None:
    data = tomllib.loads(block.body)
    if "strategies" in data:
        # `qlab apply --dry-run` from the repository's root: its files are relative to there.
        (tmp_path / "strategies").symlink_to(REPO / "strategies")
        path = tmp_path / "fleet.toml"
        path.write_text(block.body, encoding="utf-8")
        steps = manifest.apply(FileStore(tmp_path / "store"), path, prune=False, dry_run=True)
        assert [(s.action, s.id) for s in steps] == [("add", work_id) for work_id in data["strategies"]]
        return
    path = tmp_path / "profile.toml"
    path.write_text(block.body, encoding="utf-8")
    options = load_profile(path)  # as `qlab worker start --profile` reads it
    if options.hooks is not None:
        assert (REPO / options.hooks).is_file(), f"{block.where}: no hook file {options.hooks}"


# ---- yaml ----


@pytest.mark.parametrize("block", of("yaml"), ids=_ids(of("yaml")))
def test_a_yaml_example_parses(block: Block) -> None:
    assert yaml.safe_load(block.body)
