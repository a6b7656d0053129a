"""The chaos soak's kill-switch fault: `qlab halt`, a hold, then `qlab resume` of the same scope.

The scope is every account and strategy, the paper account, or one
strategy. From the moment `qlab halt` returns until `qlab resume` is issued
no order it covers may land (chaos_ledger.py's ``post_halt_orders`` reads the
account for that); once `qlab resume` returns, every strategy it covered and
that is running undisturbed must get an order accepted again within the bound.
Both commands must succeed. One halt at a time: a resume lifts exactly its own
halt, and two overlapping windows would blur which one an order broke.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from chaos_faults import Fault, Injector, Ran, Watch
from chaos_ledger import HaltWindow, TruthReader

HOLD = (0.3, 1.5)  #: seconds a halt stands, from its return to the resume
#: Seconds added to the halt's return (and taken off the resume's issue): the soak turns monotonic times
#: into the exchange's wall time, and a window a hair too wide would blame an order that landed just outside.
MARGIN = 0.05


@dataclass
class HaltOp:
    fault: Fault
    scope: str  #: all, account or strategy
    name: str  #: the account or strategy; "" for all


class Halts:
    """The halt fault, for the injector (``handlers``), with the windows it makes going to the truth reader."""

    def __init__(self, inj: Injector, reader: TruthReader, accounts: tuple[str, ...]) -> None:
        """``accounts``: those the soak's strategies trade on, one of which an account halt names."""
        self.inj = inj
        self.reader = reader
        self.accounts = accounts
        self.op: HaltOp | None = None
        self.handlers = {"halt": self.halt}
        self.to_wall = time.time() - time.monotonic()  #: wall = monotonic + this (one host, one run)

    @property
    def busy(self) -> bool:
        return self.op is not None

    def halt(self, now: float) -> Fault | None:
        if self.op is not None or self.inj.exclusive is not None:
            return None
        scope = self.inj.rng.choice(("all", "account", "strategy"))
        name = {"all": "", "account": self.inj.rng.choice(self.accounts)}.get(scope)
        if name is None and (name := self.inj.pick_for_command(now)) is None:
            return None
        option = ("--all",) if scope == "all" else (f"--{scope}", name)
        hold = self.inj.rng.uniform(*HOLD)
        self.op = op = HaltOp(self.inj.fault("halt", now, f"{scope} {name}".strip() + f" held {hold:.1f}s", []), scope, name)
        self.inj.commands([(0.0, ("halt", *option)), (hold, ("resume", *option))], lambda ran: self._done(op, ran))
        return op.fault

    def _done(self, op: HaltOp, ran: list[Ran]) -> None:
        """Both commands back: the window for the ledger, and a watch on each strategy it covered."""
        self.op = None
        halted, resumed = ran
        target = op.name if op.scope == "strategy" else None
        if not self.inj.checked(op.fault, target or "", halted):
            return
        until = resumed.issued - MARGIN + self.to_wall if self.inj.checked(op.fault, target or "", resumed) else float("inf")
        self.reader.add_halt(HaltWindow(op.scope, op.name, halted.returned + MARGIN + self.to_wall, until))
        if until == float("inf"):
            return
        covered = [op.name] if op.scope == "strategy" else self.inj.healthy()
        for sid in covered:
            if self.inj.running(sid) is not None and not self.inj.taken(sid):
                op.fault.watches.append(Watch(sid, resumed.returned, frozenset(), resumed.returned, needs_ok=True))
