"""The chaos soak's settings: the command line (``parse_args``) and what it sets (``Settings``)."""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path

from chaos_faults import FAULT_KINDS, Timings
from chaos_isolation import ISOLATION_KINDS
from quantlab.store.pglink import redact

#: Kinds ``--faults`` knows, and the groups it takes: "isolation" is opt-in, since while one of its
#: faults holds a worker (up to ZYGOTE_PAUSE + the bound) no worker fault may run.
KNOWN_KINDS = FAULT_KINDS + ISOLATION_KINDS
GROUPS = {"all": FAULT_KINDS, "isolation": ISOLATION_KINDS}


@dataclass(frozen=True)
class Settings:
    duration: float
    seed: int
    strategies: int
    faults: tuple[str, ...]
    workers: int = 3
    lease_ttl: float = 2.0  #: workers' and directors' lease, s
    heartbeat_timeout: float = 3.0  #: strategies' hang timeout, s
    interval: float = 0.2  #: strategies' tick, s
    backoff: float = 0.1  #: first restart delay, s
    director_heartbeat: float = 0.2
    worker_heartbeat: float = 0.2
    stop_timeout: float = 1.0  #: st_exit's time; fits inside the lease
    gap: float = 2.0  #: mean seconds between faults
    helpers: bool = True
    home: Path | None = None
    keep_home: bool = False
    store: str = ""  #: an admin URL of a PostgreSQL server, or "" for the file store
    json: Path | None = None  #: where to write the machine-readable summary (chaos_report.py)
    attacker: bool = False  #: run scripts/chaos_attacker.py beside the fleet
    live: int = 2  #: strategies that trade on the live account, on the fake Bybit (scripts/chaos_exchange.py)

    @property
    def bound(self) -> float:
        """Seconds within which every strategy must beat again after a fault: lease + hang timeout + a tick."""
        return self.lease_ttl + self.heartbeat_timeout + max(self.director_heartbeat, self.interval)

    @property
    def timings(self) -> Timings:
        return Timings(self.bound, self.lease_ttl, self.heartbeat_timeout, fresh=max(1.0, 5 * self.interval))

    def replay(self) -> str:
        line = f"python scripts/chaos.py --seed {self.seed} --duration {self.duration:g} --strategies {self.strategies}"
        line += f" --store {redact(self.store)}" if self.store else ""
        line += " --attacker" if self.attacker else ""
        line += f" --live {self.live}" if self.live != 2 else ""
        return line + (f" --faults {','.join(self.faults)}" if self.faults != FAULT_KINDS else "")


def parse_args(argv: list[str] | None, description: str) -> Settings:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of faults [60]")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault schedule [random, printed]")
    parser.add_argument("--strategies", type=int, default=12, help="strategies to run [12]")
    parser.add_argument("--faults", default="all", help=(
        f"comma-separated kinds or groups [all]: all ({','.join(FAULT_KINDS)}), isolation ({','.join(ISOLATION_KINDS)})"))
    parser.add_argument("--attacker", action="store_true", help="run an attacker strategy beside the fleet")
    parser.add_argument("--live", type=int, default=2,
                        help="strategies that trade through pybit on a live account on the fake Bybit [2]")
    parser.add_argument("--lease-ttl", type=float, default=2.0, help="workers' and directors' lease in seconds [2]")
    parser.add_argument("--heartbeat-timeout", type=float, default=3.0, help="strategies' hang timeout in seconds [3]")
    parser.add_argument("--interval", type=float, default=0.2, help="strategies' tick in seconds [0.2]")
    parser.add_argument("--gap", type=float, default=2.0, help="mean seconds between faults [2]")
    parser.add_argument("--no-helpers", action="store_true", help="strategies start no helper process")
    parser.add_argument("--home", type=Path, help="an empty or new directory for the home [a temporary one]")
    parser.add_argument("--keep-home", action="store_true", help="keep the home even when the run passes")
    parser.add_argument("--store", default="", metavar="ADMIN_URL",
                        help="run on a scratch database made on this PostgreSQL server [the file store]")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the verdicts as JSON to PATH")
    args = parser.parse_args(argv)
    # remove_assign is taken for remove-assign: a misspelt kind would otherwise end a long soak before it began
    words = [k.strip().replace("_", "-") for k in args.faults.split(",") if k.strip()]
    kinds = tuple(dict.fromkeys(kind for word in words for kind in GROUPS.get(word, (word,))))
    if args.store and "all" in words:  # PostgreSQL has no record files to damage
        kinds = tuple(k for k in kinds if k != "corrupt-record")
    unknown = sorted(set(kinds) - set(KNOWN_KINDS))
    if unknown or not kinds:
        parser.error(f"unknown fault kind(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(KNOWN_KINDS)}")
    if args.strategies < 1 or args.duration <= 0 or args.gap <= 0:
        parser.error("--strategies, --duration and --gap must be positive")
    if not 0 <= args.live <= args.strategies:
        parser.error("--live must be between 0 and --strategies")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    return Settings(
        duration=args.duration, seed=seed, strategies=args.strategies, faults=kinds, lease_ttl=args.lease_ttl,
        heartbeat_timeout=args.heartbeat_timeout, interval=args.interval, gap=args.gap, helpers=not args.no_helpers,
        home=args.home, keep_home=args.keep_home, store=args.store, json=args.json, attacker=args.attacker,
        live=args.live,
    )  # fmt: skip
