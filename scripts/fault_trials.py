"""Fault trials: a worker paused at a random moment, then every order the paper account took is judged.

    python scripts/fault_trials.py --trials 50 --seed 1
    python scripts/fault_trials.py --kind halt --trials 5 --json verdicts.json

Two kinds, each on a fleet of its own that is started once and kept across
its trials (a private home, the file store, real `qlab` processes):

- ``paper-fence``: a director, two workers with a 2 s lease and strategies
  (scripts/chaos_strategy.py) placing a paper order every tick. A trial
  pauses (SIGSTOP) the worker that hosts most of them at a random moment,
  waits until the director has placed them on the other worker at a new
  epoch, holds a random while longer, resumes (SIGCONT) it, and waits until
  the paused worker renews its lease again and every moved strategy's new
  epoch has an order accepted after the resume.
- ``halt``: one worker with a 10 s lease. A trial pauses it at a random
  moment, runs `qlab halt --all` (which returns once no order signed before
  it can land), resumes the worker a random moment later, well inside its
  lease, waits until every strategy has been refused by the halt twice, then
  runs `qlab resume --all` and waits until every strategy trades again.

Throughout, scripts/chaos_ledger.py reads the paper account's orders (each
stamped with the strategy and epoch of the write that committed it), the
order intents and the Works' epochs. At the end every order is judged
(``judge``): none of an epoch older than one already raised, none whose
intent was settled ``absent``, none between a halt's return and the resume
that lifted it, and none the account listed that was never read. It prints a
table per kind and exits 1 on any violation or trial that could not do its
fault, 2 when a fleet did not come up.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chaos_checks import Violation  # noqa: E402
from chaos_ledger import HaltWindow, Truth, absent_landed, post_halt_orders, stale_epochs, unread_orders  # noqa: E402
from chaos_report import write_json  # noqa: E402
from fault_fleet import INTERVAL, Fleet, SetupError, Shape, until  # noqa: E402

KINDS = ("paper-fence", "halt")
FAILOVER_TIMEOUT = 20.0  #: seconds for the director to place a paused worker's strategies elsewhere
SETTLE_TIMEOUT = 20.0  #: seconds for a trial's aftermath: a lease renewed, orders refused or accepted again
FENCE_HOLD = (0.0, 1.5)  #: seconds the worker stays paused after its strategies were placed elsewhere
HALT_HOLD = (0.0, 0.3)  #: seconds the worker stays paused after `qlab halt` returned
REFUSALS = 2  #: orders each strategy must have refused by the halt once its worker runs again

SHAPES = {"paper-fence": Shape(2, 2.0, 3.0), "halt": Shape(1, 10.0, 15.0)}


@dataclass
class Trial:
    kind: str
    index: int
    seconds: float
    what: str  #: what was done, for the log
    problem: str = ""  #: why the trial could not do its fault ("" when it did)


@dataclass
class Outcome:
    """One kind's trials and what the ledger says about them."""

    kind: str
    planned: int
    trials: list[Trial] = field(default_factory=list)
    orders: int = 0
    refused: int = 0  #: orders the halt refused (halt trials): the strategies kept trying
    violations: list[Violation] = field(default_factory=list)
    setup_error: str = ""

    @property
    def problems(self) -> list[str]:
        found = [f"trial {t.index}: {t.problem}" for t in self.trials if t.problem]
        return [self.setup_error, *found] if self.setup_error else found

    def row(self) -> dict[str, Any]:
        times = [t.seconds for t in self.trials]
        return {
            "planned": self.planned, "trials": len(self.trials), "orders": self.orders, "refused": self.refused,
            "violations": len(self.violations), "problems": self.problems,
            "median_s": round(statistics.median(times), 2) if times else None, "max_s": round(max(times), 2) if times else None,
        }  # fmt: skip


def judge(truth: Truth) -> list[Violation]:
    """Every order that should not exist: of a stale epoch, settled absent yet landed, under a halt, or never read."""
    return [*stale_epochs(truth), *absent_landed(truth), *post_halt_orders(truth), *unread_orders(truth)]


# ---- the trials ----


def paper_fence_trial(fleet: Fleet, rng: random.Random, index: int) -> Trial:
    began = time.monotonic()
    target, epochs = fleet.busiest()
    worker = fleet.cluster.procs[target]
    time.sleep(rng.uniform(0, 2 * INTERVAL))  # a random moment of the tick: mid-order or between orders
    paused = time.monotonic()
    worker.signal(signal.SIGSTOP)
    placed: dict[str, dict[str, int]] = {}  #: "moved": each strategy's new epoch, once all were placed elsewhere

    def moved_off() -> bool:
        if epochs and (moved := fleet.moved_off(target, epochs)) is not None:
            placed["moved"] = moved
        return bool(placed)

    hold = rng.uniform(*FENCE_HOLD)
    try:
        if until(paused + FAILOVER_TIMEOUT, moved_off):
            time.sleep(hold)
    finally:
        worker.signal(signal.SIGCONT)
    resumed, stopped_for = time.time(), time.monotonic() - paused
    what = f"{target} paused {stopped_for:.2f}s, {len(epochs)} strategies, held {hold:.2f}s past their new placement"
    moved = placed.get("moved")
    if moved is None:
        problem = f"{target}'s strategies {sorted(epochs)} were not placed elsewhere"
        return Trial("paper-fence", index, time.monotonic() - began, what, problem)
    back = fleet.renewing(target)
    deadline = time.monotonic() + SETTLE_TIMEOUT
    problem = ""
    if not until(deadline, back):
        problem = f"{target} did not renew its lease after the pause"
    elif not until(deadline, lambda: fleet.traded_since(list(moved), resumed, moved)):
        problem = f"the new epochs {moved} had no order accepted after {target} resumed"
    return Trial("paper-fence", index, time.monotonic() - began, what, problem)


def halt_trial(fleet: Fleet, rng: random.Random, index: int) -> Trial:
    began = time.monotonic()
    worker = fleet.cluster.procs[fleet.workers[0]]
    time.sleep(rng.uniform(0, 2 * INTERVAL))
    paused = time.monotonic()
    worker.signal(signal.SIGSTOP)
    try:
        halted = fleet.cluster.run("halt", "--all", timeout=fleet.shape.lease_ttl / 2)
        returned = time.time()
        time.sleep(rng.uniform(*HALT_HOLD))
    finally:
        worker.signal(signal.SIGCONT)
    running, stopped_for = time.monotonic(), time.monotonic() - paused
    what = f"{worker.name} paused {stopped_for:.2f}s around `qlab halt --all`"
    if halted is None or halted.returncode != 0:
        problem = f"`qlab halt --all` {'timed out' if halted is None else 'failed: ' + halted.stderr.strip()[-300:]}"
    elif stopped_for >= fleet.shape.lease_ttl:
        problem = f"the pause ({stopped_for:.2f}s) outlived the lease"
    elif not until(running + SETTLE_TIMEOUT, lambda: fleet.refused_since(running, REFUSALS)):
        problem = f"not every strategy had {REFUSALS} orders refused by the halt after the worker resumed"
    else:
        problem = ""
    issued = time.time()
    resumed = fleet.cluster.run("resume", "--all")  # also after a failed halt, which may have been written
    if halted is None or halted.returncode != 0:
        return Trial("halt", index, time.monotonic() - began, what, problem)
    fleet.reader.add_halt(HaltWindow("all", "", returned, issued))
    if resumed is None or resumed.returncode != 0:
        why = resumed.stderr.strip() if resumed else "timed out"
        raise SetupError(f"`qlab resume --all` failed: {why}: the fleet stays halted")
    if not problem and not until(time.monotonic() + SETTLE_TIMEOUT, lambda: fleet.traded_since(fleet.ids, issued, {})):
        problem = "not every strategy traded again after `qlab resume --all`"
    return Trial("halt", index, time.monotonic() - began, what, problem)


TRIALS = {"paper-fence": paper_fence_trial, "halt": halt_trial}


def run_kind(kind: str, trials: int, seed: int, home: Path, say: Callable[[str], None]) -> Outcome:
    """Start the kind's fleet, run its trials, stop it, judge the ledger."""
    outcome = Outcome(kind, trials)
    fleet = Fleet(home, SHAPES[kind])
    rng = random.Random(f"{seed}:{kind}")
    try:
        fleet.start()
        shape = fleet.shape
        say(f"{kind}: fleet up in {home}: {shape.workers} worker(s), lease {shape.lease_ttl:g}s, {len(fleet.ids)} strategies")
        for index in range(1, trials + 1):
            trial = TRIALS[kind](fleet, rng, index)
            outcome.trials.append(trial)
            problem = f" [red]{trial.problem}[/red]" if trial.problem else ""
            say(f"{kind} {index}/{trials}: {trial.what}; {trial.seconds:.2f}s{problem}")
    except SetupError as e:
        outcome.setup_error = str(e)
        say(f"[red]{kind}: {e}[/red]")
    finally:
        fleet.stop()
    outcome.orders = len(fleet.reader.truth.orders)
    outcome.refused = sum(fleet.halt_refusals(sid) for sid in fleet.ids)
    outcome.violations = judge(fleet.reader.truth)
    return outcome


# ---- the report ----


def table(outcomes: list[Outcome], title: str) -> Table:
    result = Table(title=title, title_justify="left")
    for column in ("kind", "trials", "orders checked", "violations", "failed trials", "median s", "max s"):
        result.add_column(column, justify="left" if column == "kind" else "right")
    for outcome in outcomes:
        row = outcome.row()
        bad = row["violations"]
        result.add_row(
            outcome.kind, f"{row['trials']}/{row['planned']}", str(row["orders"]), f"[bold red]{bad}[/bold red]" if bad else "0",
            str(len(row["problems"])), str(row["median_s"] or "-"), str(row["max_s"] or "-"),
        )  # fmt: skip
    return result


def summary(seed: int, outcomes: list[Outcome]) -> dict[str, Any]:
    """The --json verdicts: what tests/integration/test_fault_trials.py asserts on."""
    details = [{"trials": o.kind, **asdict(v)} for o in outcomes for v in o.violations]
    passed = not details and not any(o.problems for o in outcomes)
    return {"seed": seed, "passed": passed, "kinds": {o.kind: o.row() for o in outcomes}, "details": details}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50, help="trials of each kind [50]")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random moments and holds [random, printed]")
    parser.add_argument("--kind", choices=("paper-fence", "halt", "both"), default="both", help="which trials [both]")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the verdicts as JSON to PATH")
    parser.add_argument("--home", type=Path, metavar="DIR", help="make each kind's home in DIR/KIND [a temporary one]")
    parser.add_argument("--keep-home", action="store_true", help="keep the fleets' homes even when the trials pass")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 10**6)
    return args


def fleet_home(parent: Path | None, kind: str) -> Path:
    """A new, empty home for one kind's fleet: DIR/KIND, or a temporary directory."""
    if parent is None:
        return Path(tempfile.mkdtemp(prefix=f"qlab-faults-{kind}-")).resolve()
    home = (parent / kind).resolve()
    home.mkdir(parents=True, exist_ok=True)
    if any(home.iterdir()):
        raise SystemExit(f"fault trials: {home} is not empty")
    return home


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    signal.signal(signal.SIGTERM, _interrupt)  # so each fleet's stop runs: it ends every process
    t0 = time.monotonic()

    def say(text: str) -> None:
        console.print(f"[dim]{time.monotonic() - t0:7.2f}s[/dim] {text}")

    kinds = KINDS if args.kind == "both" else (args.kind,)
    console.print(f"fault trials: seed {args.seed} (replay: python scripts/fault_trials.py --trials {args.trials} "
                  f"--seed {args.seed} --kind {args.kind})")
    outcomes = []
    try:
        for kind in kinds:
            home = fleet_home(args.home, kind)
            outcomes.append(run_kind(kind, args.trials, args.seed, home, say))
            if outcomes[-1].violations or outcomes[-1].problems or args.keep_home:
                console.print(f"fault trials: home kept: {home}")
            else:
                shutil.rmtree(home, ignore_errors=True)
    except KeyboardInterrupt:
        console.print("fault trials: interrupted; every process they started is ended")
        return 130
    verdicts = summary(args.seed, outcomes)
    if args.json is not None:
        write_json(args.json, verdicts)
    console.print(table(outcomes, f"fault trials: seed {args.seed}, {args.trials} per kind"))
    for detail in verdicts["details"]:
        console.print(f"[bold red]VIOLATION {detail['kind']} {detail['strategy'] or ''}[/bold red] {detail['detail']}")
    for outcome in outcomes:
        for problem in outcome.problems:
            console.print(f"[yellow]{outcome.kind}: {problem}[/yellow]")
    if any(o.setup_error for o in outcomes) and not verdicts["details"]:
        return 2
    return 0 if verdicts["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
