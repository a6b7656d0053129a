"""The worker's parts get what they need in their constructors, and each Slot field has one writer.

The manager is given its fence guard, its metrics and its log settings when it is
built (quantlab/worker/main.py builds them first); nothing is attached to it later.
A slot's ``dirty`` (its counts wait to be written) is publishing.py's alone.
"""

from __future__ import annotations

import ast
import logging
import time
from pathlib import Path

import pytest

import quantlab
from quantlab.config import Paths
from quantlab.logsetup import LogSettings
from quantlab.ops.metrics import WorkerMetrics
from quantlab.worker.fenceguard import FenceGuard
from quantlab.worker.manager import StrategyManager
from tests.conftest import wait_for
from tests.unit.test_manager import Env

pytestmark = pytest.mark.timeout(30)

SRC = Path(quantlab.__file__).parent


def test_the_manager_takes_its_guard_metrics_and_log_settings_in_its_constructor(tmp_path: Path) -> None:
    kills: list[str] = []
    guard = FenceGuard(lambda: kills.append("all"), logging.getLogger("test"))
    metrics = WorkerMetrics()
    settings = LogSettings(max_mb=3.0, keep=2)
    env = Env(tmp_path)
    manager = StrategyManager(
        worker_id="w1", fenced_store=env.fenced_store,  # type: ignore[arg-type]
        transport=env.transport, paths=Paths(tmp_path), log=logging.getLogger("test"),
        guard=guard, metrics=metrics, log_settings=settings,
    )
    try:
        assert (manager.guard, manager.metrics, manager.log_settings) == (guard, metrics, settings)
        assert (manager.inbox.metrics, manager.inbox.log_settings) == (metrics, settings)
        manager.set_lease(time.monotonic() + 100.0, grace=1.0)
        # The metrics read the lease at each scrape: given the metrics, the manager had them follow it.
        left = metrics.registry.get_sample_value("quantlab_lease_seconds_left")
        assert left is not None and 90.0 < left <= 100.0
        assert metrics.registry.get_sample_value("quantlab_strategies", {"status": "running"}) == 0
        manager.set_lease(time.monotonic() - 2.0, grace=1.0)  # ran out, grace over: the guard kills
        wait_for(lambda: kills, 5.0, "the guard given to the manager killed every child")
        assert kills == ["all"]
    finally:
        guard.close()


def _dirty_writers() -> set[str]:
    """The modules of src/quantlab that assign a ``dirty`` attribute on anything but ``self``."""
    writers = set()
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr == "dirty" and not (
                        isinstance(target.value, ast.Name) and target.value.id == "self"):
                    writers.add(str(path.relative_to(SRC)))
    return writers


def test_only_publishing_writes_a_slots_dirty_flag() -> None:
    assert _dirty_writers() == {"worker/publishing.py"}
