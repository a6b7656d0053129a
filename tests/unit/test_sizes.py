"""Small modules and classes: no module of src/quantlab over 400 lines, no class over 15 methods.

Read with ``ast`` from the source, as tests/unit/test_layers.py reads the imports. A
method is a function defined in the class's own body (properties and dunders count).
The modules and classes over a limit where a bigger one reads better are listed
below, and each module's docstring says why in a line of its own: "Over 400 lines: ..."
(or "... past 400 lines: ...") for the module, "Class has more than 15 methods: ..."
for a class. Any other that grows past a limit fails, and is split by responsibility;
one listed that fits again fails too, so the list only holds what is still over.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import quantlab

SRC = Path(quantlab.__file__).parent

MAX_LINES = 400
MAX_METHODS = 15

#: Modules over MAX_LINES whose docstring says why (relative to src/quantlab).
LONG_MODULES = {"exchange/paper_state.py", "store/tablestore.py", "store/workmachine.py", "worker/machine.py"}
#: Classes over MAX_METHODS whose module's docstring says why, as "module/path.py:Class".
BIG_CLASSES = {
    "director/loop.py:DirectorLoop", "store/filestore.py:FileStore",
    "store/pgstore.py:PostgresStore", "store/store.py:Store", "store/tablestore.py:TableStore",
    "worker/main.py:Worker", "worker/manager.py:StrategyManager",
}


def _sources() -> dict[str, str]:
    return {str(path.relative_to(SRC)): path.read_text(encoding="utf-8") for path in sorted(SRC.rglob("*.py"))}


def _long_modules() -> dict[str, int]:
    return {name: len(text.splitlines()) for name, text in _sources().items() if len(text.splitlines()) > MAX_LINES}


def _big_classes() -> dict[str, int]:
    big = {}
    for name, text in _sources().items():
        for node in ast.walk(ast.parse(text, filename=name)):
            if isinstance(node, ast.ClassDef):
                methods = sum(isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) for item in node.body)
                if methods > MAX_METHODS:
                    big[f"{name}:{node.name}"] = methods
    return big


def _docstring(module: str) -> str:
    return ast.get_docstring(ast.parse((SRC / module).read_text(encoding="utf-8"))) or ""


def test_no_module_is_over_400_lines() -> None:
    assert {name: lines for name, lines in _long_modules().items() if name not in LONG_MODULES} == {}


def test_no_class_has_over_15_methods() -> None:
    assert {name: methods for name, methods in _big_classes().items() if name not in BIG_CLASSES} == {}


def test_every_listed_exception_is_still_over_its_limit() -> None:
    assert LONG_MODULES - set(_long_modules()) == set()
    assert BIG_CLASSES - set(_big_classes()) == set()


@pytest.mark.parametrize("module", sorted(LONG_MODULES))
def test_a_long_modules_docstring_says_why(module: str) -> None:
    reason = re.compile(rf"^(.* past|Over) {MAX_LINES} lines: \S", re.MULTILINE)
    assert reason.search(_docstring(module)), f"{module}: no line 'Over {MAX_LINES} lines: <why>' in its docstring"


@pytest.mark.parametrize("entry", sorted(BIG_CLASSES))
def test_a_big_classs_module_docstring_says_why(entry: str) -> None:
    module, cls = entry.split(":")
    reason = re.compile(rf"^{re.escape(cls)} has more than {MAX_METHODS} methods: \S", re.MULTILINE)
    assert reason.search(_docstring(module)), f"{module}: no line '{cls} has more than {MAX_METHODS} methods: <why>'"
