"""The import floors of src/quantlab, read from every module's source with ``ast``.

Every import counts: at the top, under ``if TYPE_CHECKING``, inside a function
(a lazy import is still a dependency), and ``lazy_module("quantlab....")``.
The allowed graph, lowest floor first; a module may import its own floor and
the floors listed for it:

    base       the quantlab package itself, errors, config, files, logsetup, heap,
               signals, exits, lazy, helpcache, logs, numbers,
               daemon_settings, proctitle, ops/*                    -> base
    store      store/*                                              -> base
    protocol   protocol (the worker <-> child wire format)          -> base, the store interface
    exchange   exchange/*                                           -> base, the store interface, protocol
    processes  director/, worker/, child/                           -> base, store, protocol, exchange;
                                                                       never one another
    top        cli, control, manifest, views, up, daemon, entry, settings,
               and any module not named above                       -> anything

The store interface is what a reader of the store needs whatever the backend:
``store.store`` (Store, TableStore), ``store.records``, ``store.table`` (Head,
Change, Cursor) and ``store.leases``. A backend (the file, memory and
PostgreSQL modules in BACKENDS) is imported inside store/ only; everyone else
gets one from ``store.open``, and the interface modules import none.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator

import quantlab

SRC = Path(quantlab.__file__).parent

BASE = {
    "quantlab", "quantlab.errors", "quantlab.config", "quantlab.files", "quantlab.logsetup", "quantlab.heap",
    "quantlab.signals", "quantlab.exits", "quantlab.lazy", "quantlab.helpcache", "quantlab.logs", "quantlab.numbers",
    "quantlab.daemon_settings", "quantlab.proctitle",
}
STORE_INTERFACE = {"quantlab.store.store", "quantlab.store.records", "quantlab.store.table", "quantlab.store.leases"}
BACKENDS = {
    "quantlab.store.vfiles", "quantlab.store.feed", "quantlab.store.statelog", "quantlab.store.filestore",
    "quantlab.store.memstore", "quantlab.store.pgstore", "quantlab.store.pgfeed", "quantlab.store.pglink",
    "quantlab.store.pgschema",
}
PROCESSES = ("director", "worker", "child")
#: What each floor may import besides itself ("store-interface": the STORE_INTERFACE modules only).
BELOW = {
    "base": set(),
    "store": {"base"},
    "protocol": {"base", "store-interface"},
    "exchange": {"base", "store-interface", "protocol"},
    **{process: {"base", "store", "protocol", "exchange"} for process in PROCESSES},
}

#: Imports that break a rule above and stay, each with the reason. An entry that no longer
#: occurs fails the test, so the list only shrinks.
EXCEPTIONS = {
    ("quantlab.worker.zygote", "quantlab.child.runner"):
        "the zygote is the parent every strategy child is forked from: it preloads the child's runner "
        "and, in the fork, calls run_child; it is the one door from the worker into the child",
    ("quantlab.worker.starts", "quantlab.child.jsruntime"):
        "child_command gives the argv of the Node runner for a JavaScript strategy, which the worker "
        "puts in its ForkRequest; jsruntime also serves the CLI's and the loader's checks of a .js file",
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(module: str, path: Path, known: set[str]) -> Iterator[str]:
    """Every quantlab module ``module`` imports, by its full name."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                # ``from quantlab.store import statewrites`` imports a module; ``from quantlab import ENV_PREFIX`` a name
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)) and node.args
              and getattr(node.func, "id", getattr(node.func, "attr", "")) in ("lazy_module", "import_module")
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.args[0].value


def floor(module: str) -> str:
    parts = module.split(".")
    if module in BASE or (len(parts) > 1 and parts[1] == "ops"):
        return "base"
    if len(parts) > 1 and parts[1] in ("store", "exchange", *PROCESSES):
        return parts[1]
    if module == "quantlab.protocol":
        return "protocol"
    return "top"


def broken_rule(source: str, target: str) -> str | None:
    """Why ``source`` may not import ``target``; None when it may."""
    here, there = floor(source), floor(target)
    if target in BACKENDS and here != "store":
        return "a store backend is imported inside store/ only (open one with store.open)"
    if source in STORE_INTERFACE and target in BACKENDS:
        return "the store interface imports no backend"
    if here == "top" or here == there:
        return None
    allowed = BELOW[here]
    if there == "store" and "store-interface" in allowed:
        return None if target in STORE_INTERFACE else f"{here} reaches the store through its interface only"
    if there in allowed:
        return None
    if here in PROCESSES and there in PROCESSES:
        return "a process package never imports another's"
    return f"{here} is below {there}"


def edges() -> set[tuple[str, str]]:
    found = modules()
    known = set(found)
    return {(module, target) for module, path in found.items() for target in imports(module, path, known)
            if target == "quantlab" or target.startswith("quantlab.")}


def test_every_import_keeps_to_the_floors() -> None:
    broken = [f"{source} -> {target}: {why}" for source, target in sorted(edges())
              if (why := broken_rule(source, target)) is not None and (source, target) not in EXCEPTIONS]
    assert broken == []


def test_every_exception_still_occurs() -> None:
    assert set(EXCEPTIONS) - edges() == set()


def test_the_named_modules_exist() -> None:
    """A rename must reach this file: a module named here that is gone would check nothing."""
    known = set(modules())
    assert (BASE | STORE_INTERFACE | BACKENDS | {"quantlab.protocol"}) - known == set()


def test_the_rules_catch_what_they_forbid() -> None:
    assert broken_rule("quantlab.store.records", "quantlab.exchange.risk") is not None
    assert broken_rule("quantlab.store.store", "quantlab.store.vfiles") is not None
    assert broken_rule("quantlab.logsetup", "quantlab.store.vfiles") is not None
    assert broken_rule("quantlab.ops.metrics", "quantlab.worker.machine") is not None
    assert broken_rule("quantlab.exchange.halts", "quantlab.store.filestore") is not None
    assert broken_rule("quantlab.worker.main", "quantlab.director.loop") is not None
    assert broken_rule("quantlab.exchange.apipool", "quantlab.control") is not None
    assert broken_rule("quantlab.worker.manager", "quantlab.exchange.risk") is None
    assert broken_rule("quantlab.cli", "quantlab.worker.options") is None
