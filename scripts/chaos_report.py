"""The chaos soak's verdicts: the tables it prints, chaos-report.json in its home, and the ``--json`` summary.

The summary is what a test asserts on (tests/integration/test_chaos.py):
``{"seed", "duration", "passed", "violations": {kind: count}, "details":
[{kind, strategy, detail}], "faults": {kind: {"planned", "injected",
"skipped", "late", "failed", "recovered"}}, "orders": {"sent", "accepted",
"live" (those accepted on the live account), "halts"}, "attacker": {"rounds", "attacks": {attack: {"tries", "done"}}} (empty
without --attacker)}``.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from chaos_checks import StrategyLog, Violation
from chaos_faults import Fault
from chaos_ledger import Truth

VIOLATION_KINDS = (
    "double-runner",  # an older runner began a heartbeat after a newer one's st_init
    "counter-rollback",  # st_init restored a counter older than the last delivered heartbeat
    "lost-write",  # after a clean handover, st_init restored other than the counter its predecessor left
    "duplicate-order",  # an orderLinkId accepted twice, or refused as a duplicate when it was fresh
    "stale-order",  # an order accepted from a runner after a newer runner began (fencing)
    "stale-epoch",  # the account accepted an order after a newer epoch of its strategy was raised
    "unmatched-order",  # an accepted order not matched to the incarnation and epoch that sent it
    "intent-open",  # an order intent left pending once everything stopped
    "post-halt-order",  # an order accepted after `qlab halt` returned and before `qlab resume`
    "ledger-unread",  # an order the account listed that the soak never read (it cannot vouch for it)
    "few-accepted",  # too few of the orders sent landed for the order checks to mean anything
    "ran-while-stopped",  # a heartbeat while the strategy was stopped
    "stop-lost",  # a stop (or a remove) took no effect: status not stopped, or a child of it left, past the bound
    "stale-state",  # a runner restored the state of a removed Work of the same id
    "command-failed",  # a `qlab` command of a fault failed or timed out
    "faults-skipped",  # more planned faults than MAX_SKIPPED found no target: the run did not test what it says
    "apply-plan",  # `qlab apply` planned more, or less, than its manifest changed
    "recovery",  # not back within the bound after a fault
    "work-lost",  # a strategy missing or not running at the end
    "process-died",  # a director or worker exited by itself
    "unclean-exit",  # a director or worker did not exit 0 on SIGTERM
    "process-leak",  # a process outlived its owner or the run
    "zombie",  # a child not reaped
    "neighbour-disturbed",  # beside a flood or a zygote fault, a strategy lost its process or a beat for a bound
    "zygote-not-replaced",  # a paused or killed zygote still there, or none after it
    "escaped-helper",  # a helper of a strategy alive past the bound after its child was killed or restarted
    "flood-budget",  # a flood nothing was dropped of, or a strategy's ctx.send events past its budget
    "leaked-process",  # a process of the run (a descendant of its workers, a helper) left once the fleet stopped
    "attack-succeeded",  # an attempt of the attacker strategy had an effect
    "attacker-idle",  # the attacker never finished a round of attempts
)

#: The share of faults tried that may find no target (all strategies busy recovering, an apply holding
#: the fleet) before the run fails: above it, the run tested much less than its table says.
MAX_SKIPPED = 0.1


def skipped_violation(planned: int, skipped: dict[str, int]) -> Violation | None:
    """A violation when more than MAX_SKIPPED of the faults tried found no target."""
    total = sum(skipped.values())
    if planned and total <= MAX_SKIPPED * planned:
        return None
    by_kind = ", ".join(f"{kind} {n}" for kind, n in skipped.items() if n)
    return Violation("faults-skipped", None, f"{total} of {planned} faults tried found no target ({by_kind or 'none tried'})")


@dataclass(frozen=True)
class Verdicts:
    """Everything a run found, for the tables and the summaries."""

    seed: int
    duration: float
    kinds: tuple[str, ...]
    faults: list[Fault]
    skipped: dict[str, int]  #: planned faults that found no target within their patience
    late: dict[str, int]  #: planned faults not reached before the run's end (earlier ones waited for targets)
    violations: list[Violation]
    truth: Truth
    logs: dict[str, StrategyLog]
    t0: float
    attacks: dict[str, Any] = field(default_factory=dict)  #: with --attacker: chaos_attack.summary

    def per_kind(self) -> dict[str, dict[str, Any]]:
        rows = {}
        for kind in self.kinds:
            faults = [f for f in self.faults if f.kind == kind]
            times = [t for f in faults if (t := f.recovery()) is not None]
            rows[kind] = {
                "planned": len(faults) + self.skipped[kind] + self.late[kind], "injected": len(faults),
                "skipped": self.skipped[kind], "late": self.late[kind],
                "failed": sum(len(f.failed) for f in faults), "recovered": len(times), "times": times,
            }  # fmt: skip
        return rows

    def orders(self) -> dict[str, int]:
        sent = {s.link for log in self.logs.values() for r in log.runners for s in r.sends}
        live = {link for link, order in self.truth.orders.items() if order.judged}
        return {"sent": len(sent), "accepted": len(sent & set(self.truth.orders)), "live": len(sent & live),
                "halts": len(self.truth.halts)}

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(VIOLATION_KINDS, 0)
        for v in self.violations:
            counts[v.kind] = counts.get(v.kind, 0) + 1
        return counts

    def summary(self) -> dict[str, Any]:
        faults = {kind: {k: v for k, v in row.items() if k != "times"} for kind, row in self.per_kind().items()}
        details = [{"kind": v.kind, "strategy": v.strategy, "detail": v.detail} for v in self.violations]
        return {
            "seed": self.seed, "duration": self.duration, "passed": not self.violations, "violations": self.counts(),
            "details": details, "faults": faults, "orders": self.orders(), "attacker": self.attacks,
        }  # fmt: skip

    def report(self) -> dict[str, Any]:
        """chaos-report.json: the summary and every fault with its target, recovery and failed commands."""
        faults = [
            {
                "kind": f.kind, "at": round(f.at - self.t0, 3), "target": f.target, "recovery": f.recovery(),
                "hit": [w.strategy for w in f.watches], "failed": f.failed,
            }  # fmt: skip
            for f in self.faults
        ]
        return {**self.summary(), "fault_log": faults}

    def faults_table(self, title: str) -> Table:
        table = Table(title=title, title_justify="left")
        for column in ("fault", "injected", "skipped", "late", "cmd failed", "recovered", "median s", "max s"):
            table.add_column(column, justify="left" if column == "fault" else "right")
        for kind, row in self.per_kind().items():
            times = row["times"]
            median = f"{statistics.median(times):.2f}" if times else "-"
            worst = f"{max(times):.2f}" if times else "-"
            failed = row["failed"]
            table.add_row(
                kind, str(row["injected"]), str(row["skipped"]), str(row["late"]), f"[bold red]{failed}[/bold red]" if failed else "0",
                f"{row['recovered']}/{row['injected']}", median, worst,
            )  # fmt: skip
        return table

    def violations_table(self) -> Table:
        orders = self.orders()
        title = (f"violations (all must be 0); orders: {orders['accepted']} of {orders['sent']} sent accepted "
                 f"({orders['live']} on the live account), {orders['halts']} halt(s)")
        table = Table(title=title, title_justify="left")
        table.add_column("violation")
        table.add_column("count", justify="right")
        for kind, count in self.counts().items():
            table.add_row(kind, f"[bold red]{count}[/bold red]" if count else "0")
        return table


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
