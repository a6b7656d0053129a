"""The fault trials' fleet (scripts/fault_trials.py): a director, workers and strategies in one home, and what
the store and the ledger say about them.

The strategies are the chaos soak's (scripts/chaos_strategy.py): each records
every heartbeat in ``records/ID.jsonl`` and places one paper order per tick
on the account ``paper``; scripts/chaos_ledger.py reads what the account
accepted, the order intents and the Works' epochs on a thread while it runs.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from chaos_checks import StrategyLog
from chaos_cluster import Cluster, tail
from chaos_ledger import TruthReader
from chaos_races import Spec

from quantlab.config import Paths
from quantlab.exchange.halts import HALTED
from quantlab.store.open import open_store

STRATEGIES = 4
INTERVAL = 0.2  #: the strategies' tick: one order each per tick
SETUP_TIMEOUT = 60.0  #: seconds for the fleet to come up and every strategy to trade
RENEWALS = 3  #: lease renewals that show a resumed worker is back


@dataclass(frozen=True)
class Shape:
    """A kind's fleet."""

    workers: int
    lease_ttl: float
    heartbeat_timeout: float  #: long enough that a paused worker's children are not taken for hung


def until(deadline: float, check: Callable[[], bool], every: float = 0.05) -> bool:
    """Poll ``check`` until it holds (True) or the monotonic ``deadline`` passes (False)."""
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


class SetupError(Exception):
    """A fleet did not come up."""


class Fleet:
    """One kind's director, workers and strategies, and the ledger read while they run."""

    def __init__(self, home: Path, shape: Shape) -> None:
        self.home = home
        self.shape = shape
        self.cluster = Cluster(home)
        self.ids = [f"s{i:02d}" for i in range(1, STRATEGIES + 1)]
        self.logs = {sid: StrategyLog(sid, home / "records" / f"{sid}.jsonl") for sid in self.ids}
        self.workers = [f"w{i}" for i in range(1, shape.workers + 1)]
        self._write_home()
        self.store = open_store(Paths(home))
        self.reader = TruthReader(home, "", self.ids)

    def _write_home(self) -> None:
        for sub in ("records", "poison", "etc"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        paper = {
            "name": "paper", "type": "paper", "balances": {"USDT": 1_000_000}, "symbols": ["BTCUSDT"], "seed": 7, "rate_limit": 1000,
        }  # fmt: skip
        (self.home / "etc" / "env.jsonl").write_text(json.dumps(paper) + "\n")
        shutil.copy(Path(__file__).resolve().parent / "chaos_strategy.py", self.home / "chaos_strategy.py")

    def start(self) -> None:
        lease = str(self.shape.lease_ttl)
        self.cluster.start("d1", "director", "start", "--heartbeat", "0.2", "--lease-ttl", "2")
        for name in self.workers:
            self.cluster.start(
                name, "worker", "start", "--region", "JP", "--id", name, "--heartbeat", "0.2", "--lease-ttl", lease,
                "--drain-timeout", "1", "--accounts", str(self.home / "etc" / "env.jsonl"),
            )  # fmt: skip
        deadline = time.monotonic() + SETUP_TIMEOUT
        self._until(deadline, "every worker to register", lambda: all(self.store.find_resource(w) for w in self.workers))
        spec = Spec(self.home / "chaos_strategy.py", INTERVAL, self.shape.heartbeat_timeout, 0.1, False, 1.0)
        for sid in self.ids:
            result = self.cluster.run(*spec.assign_args(sid))
            if result is None or result.returncode != 0:
                raise SetupError(f"assign {sid} failed: {result.stderr.strip() if result else 'timed out'}")
        self.reader.start()
        self._until(deadline, "every strategy to trade", lambda: self.traded_since(self.ids, 0.0, {}))

    def _until(self, deadline: float, what: str, check: Callable[[], bool]) -> None:
        if not until(deadline, check, every=0.2):
            died = [f"{m.name} exited {m.proc.returncode}: {tail(m.log)}" for m in self.cluster.procs.values() if not m.alive()]
            raise SetupError(f"timed out waiting for {what}" + (f" ({'; '.join(died)})" if died else ""))

    def stop(self) -> None:
        """SIGTERM the workers, then the director; one last read of the ledger; nothing of ours left."""
        for workers in (True, False):
            group = [m for m in self.cluster.procs.values() if m.is_worker == workers and m.alive()]
            for managed in group:
                managed.signal(signal.SIGCONT)
                managed.signal(signal.SIGTERM)
            for managed in group:
                try:
                    managed.proc.wait(15)
                except subprocess.TimeoutExpired:  # the sweep below ends it
                    pass
        self.reader.stop()
        self.cluster.sweep()
        self.store.close()

    # ---- what the store and the ledger say ----

    def hosts(self) -> dict[str, tuple[str, int]]:
        """Strategy -> (the worker that adopted it, its epoch), for those adopted."""
        return {w.id: (w.assignment.worker, w.epoch) for w in self.store.list_works()
                if w.id in self.ids and w.assignment is not None and w.assignment.adopted}  # fmt: skip

    def busiest(self) -> tuple[str, dict[str, int]]:
        """The worker hosting the most strategies, and theirs with their epochs."""
        hosted: dict[str, dict[str, int]] = {name: {} for name in self.workers}
        for sid, (worker, epoch) in self.hosts().items():
            hosted.setdefault(worker, {})[sid] = epoch
        name = max(hosted, key=lambda w: len(hosted[w]))
        return name, hosted[name]

    def moved_off(self, worker: str, epochs: dict[str, int]) -> dict[str, int] | None:
        """Each of ``epochs``' strategies with its new epoch once all were placed on another worker at a higher one."""
        works = {w.id: w for w in self.store.list_works()}
        moved = {sid: works[sid].epoch for sid in epochs
                 if (a := works[sid].assignment) is not None and a.worker != worker and works[sid].epoch > epochs[sid]}  # fmt: skip
        return moved if len(moved) == len(epochs) else None

    def renewing(self, worker: str) -> Callable[[], bool]:
        """A check that ``worker`` has renewed its lease RENEWALS times since this call (or since it registered again)."""
        base: dict[str, int] = {}

        def check() -> bool:
            resource = self.store.find_resource(worker)
            if resource is None:
                return False
            renewals = resource.state.renewals
            if renewals < base.setdefault("renewals", renewals):  # registered anew: its count started over
                base["renewals"] = renewals
            return renewals >= base["renewals"] + RENEWALS

        check()
        return check

    def traded_since(self, sids: list[str], wall: float, epochs: dict[str, int]) -> bool:
        """Each of ``sids`` has an order accepted after ``wall`` of at least its epoch in ``epochs``."""
        need = set(sids)
        for order in list(self.reader.truth.orders.values()):
            if order.strategy in need and order.created > wall and (order.epoch or 0) >= epochs.get(order.strategy, 0):
                need.discard(order.strategy)
        return not need

    def refused_since(self, monotonic: float, times: int) -> bool:
        """Each strategy has had ``times`` orders refused by a halt in heartbeats begun after ``monotonic``."""
        for log in self.logs.values():
            log.poll()
        return all(self.halt_refusals(sid, monotonic) >= times for sid in self.ids)

    def halt_refusals(self, sid: str, monotonic: float = 0.0) -> int:
        """Orders of ``sid`` a halt refused, in heartbeats begun after ``monotonic`` (as read so far)."""
        return sum(1 for r in self.logs[sid].runners for b in r.beats if b.code == HALTED and b.m0 > monotonic)


