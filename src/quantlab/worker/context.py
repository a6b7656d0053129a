"""WorkerContext, ``wctx``: everything the worker lifecycle works on.

A worker profile's hook file (``hooks = "FILE"``) gets the same object. What a
hook may use is PUBLIC, documented in docs/worker-hooks.md; the rest is the
worker's own machinery, which a hook must not touch (tests/integration/
test_worker_hooks.py runs workers/hooks_example.py, which uses every public name).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

import msgspec

from quantlab.errors import ConfigError
from quantlab.store.records import Resource, WorkerState
from quantlab.ops.notify import Notifier
from quantlab.store.view import WorkView
from quantlab.store.fenced import FencedStore
from quantlab.worker.load import LoadMeter
from quantlab.worker.manager import StrategyManager
from quantlab.worker.options import WorkerOptions
from quantlab.worker.slot import Slot

if TYPE_CHECKING:
    from quantlab.exchange.apipool import ApiPool


#: What a worker hook file may use: attributes read, methods called (docs/worker-hooks.md).
PUBLIC = ("worker", "options", "state", "strategies", "apis", "pool", "log", "send_to_strategy", "broadcast_to_all")


class WorkerIdentity(msgspec.Struct, frozen=True):
    id: str
    name: str
    region: str
    host: str


class WorkerContext:
    def __init__(
        self,
        *,
        worker: WorkerIdentity,
        options: WorkerOptions,
        resource: Resource,
        fenced_store: FencedStore,
        apis: "ApiPool",
        manager: StrategyManager,
        log: logging.Logger,
        run_until: Callable[[Callable[[], bool], float, Callable[[], None] | None], None],
        view: WorkView,
        hooks: ModuleType | None = None,
    ) -> None:
        self.worker = worker
        self.options = options
        self.resource = resource
        self.fenced_store = fenced_store  #: the store, with the worker's named and fenced writes
        self.apis = apis
        self.manager = manager
        self.log = log
        self.view = view  #: the Works assigned here (or running here), kept fresh from the change feed
        self.hooks = hooks  #: the profile's optional user hooks
        self.meter = LoadMeter()
        self.notifier = Notifier()  #: systemd's READY/STATUS/WATCHDOG/STOPPING (nothing outside systemd)
        self.stopping = False
        self.mail: set[str] = set()  #: strategies whose inbox may hold messages (from the change feed)
        self.next_counts = 0.0  #: monotonic: when heartbeat counts are written next
        self.halt_problem: str | None = None  #: why the halts could not be read (all halted meanwhile)
        self._run_until = run_until

    @property
    def state(self) -> WorkerState:
        """The worker's registration state as last written: status, load, lease expiry.

        Read through the resource on every access: each renewal replaces the resource's
        state with a new record, so a reference taken once would stop moving.
        """
        return self.resource.state

    @property
    def pool(self) -> FencedStore:
        """``fenced_store`` under its workerpool name (``wctx.pool``), for worker hook files."""
        return self.fenced_store

    @property
    def strategies(self) -> dict[str, Slot]:
        """id -> Slot: status, last_heartbeat, error_count, pid of each strategy here."""
        return self.manager.slots

    def send_to_strategy(self, strategy_id: str, msg: Any) -> bool:
        """Deliver ``msg`` to the strategy's ``st_message`` hook; False if it is not running here."""
        return self.manager.send_message(strategy_id, msg)

    def broadcast_to_all(self, msg: Any) -> int:
        """Deliver ``msg`` to every strategy running here; how many took it."""
        return sum(self.send_to_strategy(sid, msg) for sid in list(self.manager.slots))

    def run_until(self, done: Callable[[], bool], timeout: float, every: Callable[[], None] | None = None) -> None:
        """Keep serving children (messages, exits) until ``done()`` or ``timeout`` seconds pass.

        ``every`` runs once a heartbeat meanwhile (the lease renewal while draining).
        """
        self._run_until(done, timeout, every)


def load_hooks(path: str | None) -> ModuleType | None:
    """The profile's hook file (``hooks = "FILE"``), run once as module ``worker_hooks``; None without one."""
    if path is None:
        return None
    spec = importlib.util.spec_from_file_location("worker_hooks", path)
    if spec is None or spec.loader is None or not Path(path).is_file():
        raise ConfigError(f"worker hooks file not found: {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["worker_hooks"] = module
    spec.loader.exec_module(module)
    return module
