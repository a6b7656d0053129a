"""The soak's side of ``--attacker``: deploying scripts/chaos_attacker.py beside the fleet, and judging it.

The attacker runs from a folder of its own beside the home (``HOME-attacker``),
outside it, as a desk deploys a strategy, so it gets the sandbox a production
strategy gets. At the end its ctx.state says what it tried; any attempt that
did something is an ``attack-succeeded`` violation, and so is an order of its
own (``atk-`` ids) on the paper account. An attacker that never finished a
round is ``attacker-idle``: the run tested nothing of the sandbox.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from chaos_checks import Violation
from chaos_cluster import all_procs
from chaos_races import Spec

ID = "attacker"
FILE = Path(__file__).resolve().parent / "chaos_attacker.py"


def folder(home: Path) -> Path:
    return home.parent / f"{home.name}-attacker"


def deploy(home: Path, fleet: Spec) -> Spec:
    """Its file in its own folder, and its assign options: the fleet's timings, no helper, no account."""
    where = folder(home)
    where.mkdir(exist_ok=True)
    shutil.copy(FILE, where / FILE.name)
    return Spec(where / FILE.name, fleet.interval, fleet.heartbeat_timeout, fleet.backoff, False, fleet.stop_timeout)


def tell(home: Path, directors: list[int], workers: list[int]) -> None:
    """Where its targets are, in ``targets.json`` beside it (written whole): what an attacker who searched
    the machine would know (from inside its PID namespace it sees no process). The soak writes it again
    on each scan, as processes come and go."""
    where = folder(home)
    data = {"home": str(home), "accounts": str(home / "etc" / "env.jsonl"), "directors": directors, "workers": workers,
            "children": {str(w): _children(w) for w in workers}}
    part = where / "targets.json.part"
    part.write_text(json.dumps(data))
    os.replace(part, where / "targets.json")


def _children(worker: int) -> list[tuple[int, str]]:
    """(pid, command line) of each process ``worker`` is the parent of: its zygote and its strategies."""
    return [(p.pid, p.cmdline) for p in all_procs().values() if p.ppid == worker]


def judge(state: dict[str, Any], orders: set[str]) -> list[Violation]:
    """Violations from its state (``{"rounds", "tries": {attack: [tries, done, last]}}``) and the account's order ids."""
    found = [
        Violation("attack-succeeded", ID, f"{attack}: {done} of {tries} tries had an effect, the last: {last}")
        for attack, (tries, done, last) in sorted(state.get("tries", {}).items())
        if done
    ]
    found += [Violation("attack-succeeded", ID, f"its order {link} landed on the paper account") for link in sorted(orders) if link.startswith("atk-")]
    if not state.get("rounds"):
        found.append(Violation("attacker-idle", ID, "it never finished a round of attacks"))
    return found


def load_state(home: Path, store_url: str) -> dict[str, Any]:
    """The attacker's saved ctx.state ({} when there is none)."""
    from quantlab.config import Paths
    from quantlab.store.fenced import FencedStore
    from quantlab.store.open import open_store

    return FencedStore(open_store(Paths(home, store_url=store_url))).load_state(ID)


def summary(state: dict[str, Any]) -> dict[str, Any]:
    """For the JSON verdicts: rounds, and per attack its tries and how many had an effect."""
    tries = {attack: {"tries": t, "done": d} for attack, (t, d, _) in sorted(state.get("tries", {}).items())}
    return {"rounds": state.get("rounds", 0), "attacks": tries}
