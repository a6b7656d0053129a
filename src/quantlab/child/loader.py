"""Check and load a strategy file.

`check_file` reads the file with ``ast`` and never runs it, so `qlab strategy
assign` catches a bad path, a syntax error or a missing hook at once, in the
operator's shell. `load_module` runs it, in the strategy child only.
A JavaScript file (``.js``, ``.mjs``) is checked by loading it in Node
(quantlab/child/jsruntime.py): there is no parser for it here. That module,
and the subprocess it runs Node with, is imported only for such a file.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from types import ModuleType

from quantlab.child import is_js
from quantlab.errors import StrategyFileError

HOOKS = ("st_init", "st_heartbeat", "st_exit")


def check_file(file: str | Path) -> Path:
    """The absolute path of a valid strategy file, or StrategyFileError."""
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise StrategyFileError(f"strategy file not found: {file}")
    if is_js(path):
        from quantlab.child import jsruntime

        jsruntime.check_file(path)
        return path
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as e:
        raise StrategyFileError(f"{file}:{e.lineno}: syntax error: {e.msg}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise StrategyFileError(f"cannot read strategy file {file}: {e}") from e
    defined = {
        node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    missing = [hook for hook in HOOKS if hook not in defined]
    if missing:
        raise StrategyFileError(f"{file}: missing hook(s) {', '.join(missing)}: a strategy defines {', '.join(HOOKS)}")
    return path


def default_accounts(path: Path) -> list[str]:
    """The module-level ``ACCOUNTS = [...]`` (or ``ACCOUNT = "..."``) literal, if any.

    Lets an example strategy name the account it was written for, so
    ``qlab up strategies/grid_paper.py`` needs no --account. A JavaScript file exports it.
    """
    if is_js(path):
        from quantlab.child import jsruntime

        return jsruntime.check_file(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name not in ("ACCOUNT", "ACCOUNTS"):
                continue
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            values = [value] if isinstance(value, str) else value
            if isinstance(values, list) and all(isinstance(v, str) for v in values):
                return values
    return []


def load_module(path: str) -> ModuleType:
    """Import the strategy file as module ``strategy`` (runs its top level), in the strategy child.

    Compiled and run here rather than through importlib's loaders: their Python code, run for the
    first time in each child, would cost it 0.3 MB of private memory. No bytecode cache is
    read or written; the module is in ``sys.modules`` while its top level runs, as with import.
    """
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as e:
        raise StrategyFileError(f"cannot load strategy file {path}") from e
    module = ModuleType("strategy")
    module.__file__ = path
    sys.modules["strategy"] = module
    exec(compile(source, path, "exec", dont_inherit=True), module.__dict__)
    for hook in HOOKS:
        if not callable(getattr(module, hook, None)):
            raise StrategyFileError(f"{path}: missing hook {hook}")
    return module
