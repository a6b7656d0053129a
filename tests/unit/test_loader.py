"""load_module: a strategy file runs as module ``strategy``, as an import would run it."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Iterator

import pytest

from quantlab.errors import StrategyFileError
from quantlab.child.loader import load_module

HOOKS = '''
def st_init(ctx): pass
def st_heartbeat(ctx, tick): pass
def st_exit(ctx, reason): pass
'''


@pytest.fixture(autouse=True)
def _no_strategy_module() -> Iterator[None]:
    yield
    sys.modules.pop("strategy", None)


def write(tmp_path: Path, source: str) -> str:
    path = tmp_path / "s.py"
    path.write_text(source)
    return str(path)


def test_the_module_is_named_strategy_knows_its_file_and_is_in_sys_modules_while_it_runs(tmp_path: Path) -> None:
    # A dataclass looks its module up in sys.modules at class creation.
    path = write(tmp_path, "import dataclasses, sys\n"
                           "SEEN = sys.modules[__name__].__name__\n"
                           "@dataclasses.dataclass\nclass Order:\n    qty: int\n" + HOOKS)
    module = load_module(path)
    assert module.__name__ == "strategy" and module.SEEN == "strategy"
    assert module.__file__ == path
    assert module.Order(qty=2).qty == 2
    assert "def st_init" in inspect.getsource(module.st_init)


def test_the_loaders_own_future_imports_do_not_leak_into_the_strategy(tmp_path: Path) -> None:
    path = write(tmp_path, "def typed(x: int) -> None: pass\n" + HOOKS)
    assert load_module(path).typed.__annotations__ == {"x": int, "return": None}


def test_a_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, HOOKS + "def broken(:\n")
    with pytest.raises(SyntaxError) as raised:
        load_module(path)
    assert raised.value.filename == path and raised.value.lineno == 5


def test_a_missing_file_or_hook_is_a_strategy_file_error(tmp_path: Path) -> None:
    with pytest.raises(StrategyFileError, match="cannot load strategy file"):
        load_module(str(tmp_path / "gone.py"))
    with pytest.raises(StrategyFileError, match="missing hook st_exit"):
        load_module(write(tmp_path, "def st_init(ctx): pass\ndef st_heartbeat(ctx, tick): pass\n"))
