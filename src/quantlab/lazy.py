"""Modules imported on first use: how `qlab` loads only what the command it runs needs.

``qlab --help`` must not import the worker, rich or psutil; ``qlab status
--json`` must not import rich (tests/integration/test_cli_imports.py lists what
each may not load). A command body keeps writing ``control.stop(...)``:
the module behind ``control`` runs its top level the first time an attribute
is read (importlib.util.LazyLoader, the standard library's recipe).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    """``name``, registered now and executed on first attribute access (already imported: as it is)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
