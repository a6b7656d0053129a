"""The chaos soak: real `qlab` processes, random faults from a seed, invariants checked throughout.

    python scripts/chaos.py --duration 60 --seed 1
    python scripts/chaos.py --faults worker-stop,stop-start --duration 20
    python scripts/chaos.py --faults remove-assign,stop-start-restart,apply --duration 60
    python scripts/chaos.py --store postgresql://postgres@127.0.0.1/postgres --duration 60
    python scripts/chaos.py --duration 60 --seed 1 --json verdicts.json
    python scripts/chaos.py --faults all,isolation --attacker --duration 300 --seed 11
    python scripts/chaos.py --live 0 --duration 60       # every strategy on paper

In a private temporary home it starts a director and a standby, three
workers with a short lease (2 s) and N strategies (default 12,
scripts/chaos_strategy.py) that record every heartbeat and place one paper
order per tick with an orderLinkId from ctx.state: on the paper account, or
(the last ``--live`` of them, 2 by default) through pybit on a live account
that the fake Bybit of the tests serves in its untidy mode, with lost
replies and held requests (chaos_exchange.py). For ``--duration``
seconds it injects one random fault every couple of seconds, then lets
everything settle, checks, stops everything and looks for leftovers. It
ends with a table and exits 1 on any violation (2 if the cluster never came
up). The seed is printed first: it replays the same schedule of fault kinds,
pauses and choices (the targets depend on where things run by then).

The pieces: chaos_strategy.py (what runs), chaos_checks.py (its records and
the invariants over them), chaos_ledger.py (what the exchange accepted, the
order intents and the epochs, read from the store, and the invariants over
them), chaos_faults.py (faults and recovery times), chaos_races.py (the
operator races: remove-assign, stop-start-restart, apply; chaos_seen.py:
what they see of a stop and an apply), chaos_halts.py (halt and resume),
chaos_corrupt.py (what a corrupt-record fault damages),
chaos_isolation.py (flood, zygote and escape faults; the leak check),
chaos_settings.py (the command line), chaos_exchange.py (the live account),
chaos_attack.py and chaos_attacker.py (``--attacker``),
chaos_cluster.py (processes, /proc, `qlab status`), chaos_report.py (the
tables and the JSON verdicts, ``--json PATH``). Kept in a failing run's
home: procs/*.log, logs/, store/events.jsonl, records/*.jsonl, manifests/
and chaos-report.json.

With ``--store ADMIN_URL`` every process uses a scratch PostgreSQL database
made on that server for the run (the URL must be allowed to create
databases); it is dropped at the end, whatever the outcome.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from chaos_checks import StrategyLog, Violation, check_log  # noqa: E402
import chaos_exchange  # noqa: E402
from chaos_cluster import Cluster, ProcessWatch, StatusPoller, leader_of, tail  # noqa: E402
from chaos_faults import Injector, Recovery, Timeline  # noqa: E402
from chaos_halts import Halts  # noqa: E402
from chaos_isolation import ISOLATION_KINDS, Isolation, LeakCheck, flood_budget, read_events  # noqa: E402
import chaos_attack  # noqa: E402
from chaos_strategy import HELPER_MARK  # noqa: E402
from chaos_ledger import TruthReader, check_truth  # noqa: E402
from chaos_races import MORE_ACCOUNTS, Races, Spec  # noqa: E402
from chaos_settings import Settings, parse_args  # noqa: E402
from chaos_report import Verdicts, skipped_violation, write_json  # noqa: E402
from tests.pgutil import scratch_database  # noqa: E402  (the scratch databases of the tests)
from quantlab.store.pglink import redact  # noqa: E402

LEAK_WAIT = 5.0  #: seconds the last of the run's processes have to end once the fleet stopped
SETUP_TIMEOUT = 60.0  #: seconds for the cluster to come up and every strategy to beat
SETTLE_EXTRA = 15.0  #: seconds past twice the bound that settling may take
SCAN_EVERY = 1.0  #: seconds between /proc scans
#: Seconds an apply may wait for every other operator command to end (it needs the fleet to itself):
#: a stop-start race holds its strategy for its commands, a bound and a hold. Halts and director
#: faults wait as long (``Soak._patience``).
APPLY_PATIENCE = 15.0
LOOP_SLEEP = 0.05
FINAL_WAIT = 3.0  #: seconds a strategy has to show a fresh beat in the final check


class SetupError(Exception):
    """The cluster did not come up: nothing was soaked."""


class Soak:
    """Set up, inject for the duration, settle, check, shut down: each a named step."""

    def __init__(self, settings: Settings, cluster: Cluster, console: Console) -> None:
        self.s = settings
        self.cluster = cluster
        self.home = cluster.home
        self.console = console
        self.t0 = time.monotonic()
        self.violations: list[Violation] = []
        self.ids = [f"s{i:02d}" for i in range(1, settings.strategies + 1)]
        self.live_ids = self.ids[len(self.ids) - settings.live:] if settings.live else []
        self.exchange = chaos_exchange.LiveExchange(random.Random(f"{settings.seed}:exchange")) if self.live_ids else None
        cluster.env[chaos_exchange.SECRET_ENV] = chaos_exchange.SECRET
        self.logs = {sid: StrategyLog(sid, self.home / "records" / f"{sid}.jsonl") for sid in self.ids}
        self.timeline = Timeline()
        self.status = StatusPoller(cluster)
        self.procs = ProcessWatch(cluster, self.violation)
        live_wait = chaos_exchange.start_wait(settings.lease_ttl)
        self.recovery = Recovery(settings.bound, self.violation, self.say, self.t0, {sid: live_wait for sid in self.live_ids})
        self.skipped = {kind: 0 for kind in settings.faults}  #: planned faults that found no target
        self.late = {kind: 0 for kind in settings.faults}  #: planned faults the run ended before (earlier ones waited)
        self.injector = Injector(
            cluster=cluster, logs=self.logs, recovery=self.recovery, procs=self.procs, status=self.status,
            timeline=self.timeline, rng=random.Random(f"{settings.seed}:choices"), timings=settings.timings,
            report=self.violation, say=self.say, start_worker=self.start_worker, start_director=self.start_director,
        )  # fmt: skip
        self.specs: dict[str, Spec] = {}  #: what each strategy was assigned as (setup fills it)
        self.races = Races(self.injector, self.specs, self.home, settings.interval, self.whereabouts)
        self.injector.handlers.update(self.races.handlers)
        self.reader = TruthReader(self.home, cluster.env.get("QLAB_STORE", ""), self.ids,
                                  self.exchange.orders if self.exchange else None, chaos_exchange.ACCOUNT)
        self.halts = Halts(self.injector, self.reader, ("paper", chaos_exchange.ACCOUNT) if self.exchange else ("paper",))
        self.injector.handlers.update(self.halts.handlers)
        self.isolation = Isolation(self.injector)
        self.injector.handlers.update(self.isolation.handlers)
        self.isolation.hold(self.injector.handlers)
        mark = HELPER_MARK + f"{self.home} "  # up to the space after the home: no other home's prefix
        self.leaks = LeakCheck(lambda: list(cluster.procs.values()), cluster.marker, mark)
        self.attacks: dict[str, object] = {}  #: the attacker's summary (chaos_attack.py), with --attacker
        self.next_scan = 0.0

    # ---- output ----

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{time.monotonic() - self.t0:7.2f}s[/dim] {text}")

    def violation(self, kind: str, strategy: str | None, detail: str) -> None:
        self.violations.append(Violation(kind, strategy, detail))
        self.say(f"[bold red]VIOLATION {kind}[/bold red] {strategy or ''} {detail}")

    # ---- the processes ----

    def start_worker(self, name: str) -> None:
        s = self.s
        self.cluster.start(
            name, "worker", "start", "--region", "JP", "--id", name, "--heartbeat", str(s.worker_heartbeat),
            "--lease-ttl", str(s.lease_ttl), "--drain-timeout", str(s.stop_timeout),
            "--accounts", str(self.home / "etc" / "env.jsonl"),
        )  # fmt: skip

    def start_director(self) -> None:
        lease = ("--lease-ttl", str(self.s.lease_ttl)) if self.cluster.supports("--lease-ttl", "director", "start") else ()
        self.cluster.start(self.cluster.next_name("d"), "director", "start", "--heartbeat", str(self.s.director_heartbeat), *lease)

    def reap(self) -> None:
        """A director or worker that exits unbidden is a violation; it is started again, as systemd would."""
        for name, managed in list(self.cluster.procs.items()):
            code = managed.proc.poll()
            if code is None or managed.expected_exit:
                continue
            managed.expected_exit = True
            log = tail(self.home / "logs" / f"worker-{name}.log", 4) if managed.is_worker else ""
            self.violation("process-died", None, f"{name} (pid {managed.pid}) exited by itself with {code}: {tail(managed.log)} {log}")
            restart = functools.partial(self.start_worker, name) if managed.is_worker else self.start_director
            self.timeline.later(time.monotonic() + 0.5, restart)

    # ---- setup ----

    def setup(self) -> None:
        self._write_home()
        deadline = time.monotonic() + SETUP_TIMEOUT
        self.start_director()
        self._until(deadline, "a leading director", self._has_leader)
        self.start_director()
        workers = [f"w{i}" for i in range(1, self.s.workers + 1)]
        for name in workers:
            self.start_worker(name)
        self._until(deadline, "every worker to register", lambda: {w["id"] for w in self.cluster.json("worker", "list", "--json") or []} >= set(workers))
        stop = self.s.stop_timeout if self.cluster.supports("--stop-timeout", "strategy", "assign") else None
        # Reading from before the first order: an account keeps only its latest closed orders, and a slow
        # setup (a database to migrate, a busy machine) would otherwise see the first ones pruned unread.
        self.reader.start()
        for sid in self.ids:
            spec = Spec(
                self.home / "chaos_strategy.py", self.s.interval, self.s.heartbeat_timeout, self.s.backoff, self.s.helpers, stop
            )  # fmt: skip
            if sid in self.live_ids:
                live = chaos_exchange.ACCOUNT
                spec = dataclasses.replace(spec, account=live, accounts=(live,))
            self.specs[sid] = spec
            self._assign(sid)
        if self.s.attacker:
            self.specs[chaos_attack.ID] = chaos_attack.deploy(self.home, self.specs[self.ids[0]])
            self._tell_attacker()
            self._assign(chaos_attack.ID)
        self._until(deadline, "every strategy to beat", self._all_beating)
        if "apply" in self.s.faults and (problem := self.races.check_manifest()) is not None:
            raise SetupError(f"the soak's manifest is not the fleet it assigned: {problem}")
        self.say(f"up: 2 directors, {len(workers)} workers, {len(self.ids)} strategies beating")

    def _write_home(self) -> None:
        for sub in ("records", "poison", "etc"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        # IOC orders never rest, so the account stays small; the limit is far above what 12 strategies use.
        paper = {"name": "paper", "type": "paper", "balances": {"USDT": 1_000_000}, "symbols": ["BTCUSDT"], "seed": 7, "rate_limit": 1000}
        # The second account is only there to be added to and taken from a strategy (an apply that moves it).
        accounts = [{**paper, "name": name} for name in MORE_ACCOUNTS]
        accounts += [self.exchange.account()] if self.exchange else []
        (self.home / "etc" / "env.jsonl").write_text("".join(json.dumps(a) + "\n" for a in accounts))
        shutil.copy(Path(__file__).resolve().parent / "chaos_strategy.py", self.home / "chaos_strategy.py")

    def _assign(self, sid: str) -> None:
        result = self.cluster.run(*self.specs[sid].assign_args(sid))
        if result is None or result.returncode != 0:
            raise SetupError(f"assign {sid} failed: {result.stderr.strip() if result else 'timed out'}")

    def _has_leader(self) -> bool:
        status = self.cluster.json("status", "--json")
        return bool(status) and leader_of(status, set()) is not None

    def _all_beating(self) -> bool:
        self.read_records()
        return all(self.logs[sid].latest() for sid in self.ids)

    def _until(self, deadline: float, what: str, check: Callable[[], bool]) -> None:
        while not check():
            self.reap()
            if time.monotonic() > deadline:
                raise SetupError(f"timed out waiting for {what}")
            time.sleep(0.2)

    # ---- the loop ----

    def run(self) -> None:
        """Inject the planned faults for the duration; one that finds no target waits for one, then is
        skipped (see ``_patience``); the faults after it wait for it."""
        self.status.start()
        plan = self._plan()
        self.say(f"{len(plan)} faults planned over {self.s.duration:g}s, seed {self.s.seed}; recovery bound {self.s.bound:.1f}s")
        start = time.monotonic()
        head_since = 0.0  #: when the plan's first fault was first tried: its patience counts from there
        while time.monotonic() < start + self.s.duration:
            now = time.monotonic()
            self.run_once(now)
            if plan and start + plan[0][0] <= now:
                kind = plan[0][1]
                head_since = head_since or now
                if self.injector.inject(kind, now) is not None:
                    plan.pop(0)
                    head_since = 0.0
                elif now > head_since + (patience := self._patience(kind)):
                    self.skipped[kind] += 1
                    self.say(f"[yellow]{kind}: no target within {patience:g}s, skipped[/yellow]")
                    plan.pop(0)
                    head_since = 0.0
            time.sleep(LOOP_SLEEP)
        for _, kind in plan:  # behind schedule (faults waited for targets): counted, not dropped
            self.late[kind] += 1
        if plan:
            self.say(f"[yellow]{len(plan)} planned fault(s) not reached in time: {', '.join(k for _, k in plan)}[/yellow]")
        tried = len(self.recovery.faults) + sum(self.skipped.values())
        if (skipped := skipped_violation(tried, self.skipped)) is not None:
            self.violation(skipped.kind, skipped.strategy, skipped.detail)

    def _patience(self, kind: str) -> float:
        """Seconds a fault may wait for a target: the recovery bound, since what it waits for (a strategy
        beating again) is due within it; longer (APPLY_PATIENCE) for an apply, which waits for every other
        operator command to end, a halt, which waits for the last one's resume, a director or worker fault,
        which waits for the last director fault's leader to show in `qlab status` and for any paused
        process to be back (seconds more on a busy machine), and any fault while an apply's commands have
        the fleet (a second or more each)."""
        waits = kind in ("apply", "halt", "director-kill", "director-stop", "worker-kill", "worker-stop", *ISOLATION_KINDS) \
            or self.injector.exclusive is not None
        return APPLY_PATIENCE if waits else self.s.bound

    def _plan(self) -> list[tuple[float, str]]:
        rng = random.Random(f"{self.s.seed}:plan")
        plan: list[tuple[float, str]] = []
        t = rng.uniform(0.5 * self.s.gap, 1.5 * self.s.gap)
        while t < self.s.duration:
            plan.append((t, rng.choice(self.s.faults)))
            t += rng.uniform(0.5 * self.s.gap, 1.5 * self.s.gap)
        return plan

    def run_once(self, now: float) -> None:
        """One pass: new records, due actions, command results, recoveries, processes."""
        self.read_records()
        self.timeline.run_due(now)
        self.injector.step(now)
        self.races.step(now)
        self.isolation.step(now)
        if self.exchange is not None:
            self.exchange.step(now)
        self.recovery.check_leader(now, self.status, {m.pid for m in self.cluster.procs.values() if m.stopped})
        self.recovery.check_overdue(now, self.whereabouts)
        self.reap()
        if now >= self.next_scan:
            self.procs.scan(now)
            self.leaks.observe()
            self._tell_attacker()
            self.next_scan = now + SCAN_EVERY

    def _tell_attacker(self) -> None:
        if self.s.attacker:
            alive = [m for m in self.cluster.procs.values() if m.alive()]
            chaos_attack.tell(self.home, [m.pid for m in alive if not m.is_worker], [m.pid for m in alive if m.is_worker])

    def read_records(self) -> None:
        for sid, log in self.logs.items():
            known = {id(r) for r in log.runners}
            for runner, beat in log.poll():
                self.recovery.on_beat(sid, beat)
            for runner in log.runners:
                if id(runner) not in known:
                    self.procs.remember(runner)

    def settle(self) -> None:
        """No new faults: let the pauses end, the restarts happen, every open recovery finish or time out."""
        self.say("faults over: settling")
        if self.exchange is not None:
            self.exchange.quiet()
            self.say(f"live account: {', '.join(f'{n} {kind}' for kind, n in self.exchange.faults.items())} at the exchange")
        deadline = time.monotonic() + SETTLE_EXTRA + 2 * self.s.bound
        while time.monotonic() < deadline:
            self.run_once(time.monotonic())
            busy = self.injector.ops or self.races.ops or self.halts.busy or self.isolation.busy
            if not (len(self.timeline) or busy or self.recovery.unsettled()):
                return
            time.sleep(LOOP_SLEEP)

    def whereabouts(self, sid: str) -> str:
        """Where a strategy is, for a violation's evidence: its last beat and what `status` says."""
        parts = []
        if (latest := self.logs[sid].latest()) is not None:
            parts.append(f"last beat pid {latest[1].pid} {time.monotonic() - latest[1].m:.1f}s ago")
        status = self.status.latest()
        entry = next((e for e in status[1].get("strategies", []) if e["id"] == sid), None) if status else None
        if entry:
            parts.append(f"status {entry['status']}/{entry['desired']} on {entry['worker']}: {str(entry.get('reason'))[:100]}")
        return f" ({'; '.join(parts)})" if parts else ""

    # ---- the end ----

    def final_checks(self) -> None:
        """Every Work still there and beating; then the invariants over every record."""
        status = self.cluster.json("status", "--json") or {}
        present = {e["id"] for e in status.get("strategies", [])} & set(self.ids)
        # Beating means a fresh beat within FINAL_WAIT from now, not in the very instant of looking: on a
        # busy machine a loop may miss a second (the status command just above may take that long too).
        deadline = time.monotonic() + FINAL_WAIT
        self.read_records()
        while any(self.injector.running(sid) is None for sid in present) and time.monotonic() < deadline:
            time.sleep(LOOP_SLEEP)
            self.read_records()
        for sid in self.ids:
            if sid not in present:
                self.violation("work-lost", sid, "no longer in `qlab status --json`")
            elif self.injector.running(sid) is None:
                self.violation("work-lost", sid, f"not heartbeating at the end{self.whereabouts(sid)}")
        for sid, log in self.logs.items():
            for v in check_log(log, self.injector.stopped_windows[sid]):
                self.violation(v.kind, v.strategy, v.detail)

    def shutdown(self) -> None:
        """SIGTERM the workers, then the directors: each must exit 0; then nothing of ours may be left."""
        self.status.stop()
        self.injector.close()
        for managed in self.cluster.procs.values():
            if managed.stopped:
                managed.stopped = False
                managed.signal(signal.SIGCONT)
        for workers in (True, False):
            group = [m for m in self.cluster.procs.values() if m.is_worker == workers and m.alive()]
            for managed in group:
                managed.expected_exit = True
                managed.signal(signal.SIGTERM)
            deadline = time.monotonic() + self.s.stop_timeout + 10.0
            for managed in group:
                try:
                    code = managed.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.violation("unclean-exit", None, f"{managed.name} (pid {managed.pid}) still running 10s after SIGTERM")
                    continue
                if code != 0:
                    self.violation("unclean-exit", None, f"{managed.name} (pid {managed.pid}) exited {code} on SIGTERM: {tail(managed.log)}")
        deadline = time.monotonic() + 2.0
        while self.cluster.ours() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.procs.scan(time.monotonic(), final=True)
        for v in self.leaks.final(LEAK_WAIT):
            self.violation(v.kind, v.strategy, v.detail)

    def check_ledger(self) -> None:
        """Everything stopped: one last read of the accounts and intents, then the invariants over them."""
        self.read_records()  # the last orders' sends, written while the workers drained
        self.reader.stop()
        for v in check_truth(self.reader.truth, self.logs, at_end=True):
            self.violation(v.kind, v.strategy, v.detail)
        self.check_isolation()

    def check_isolation(self) -> None:
        """The events the floods left, and what the attacker got (chaos_isolation.py, chaos_attack.py)."""
        url = self.cluster.env.get("QLAB_STORE", "")
        found = flood_budget(read_events(self.home, url), self.isolation.floods, time.monotonic() - self.t0)
        if self.s.attacker:
            state = chaos_attack.load_state(self.home, url)
            found += chaos_attack.judge(state, set(self.reader.truth.orders))
            self.attacks = chaos_attack.summary(state)
        for v in found:
            self.violation(v.kind, v.strategy, v.detail)

    # ---- the report ----

    def verdicts(self) -> Verdicts:
        return Verdicts(
            self.s.seed, self.s.duration, self.s.faults, self.recovery.faults, self.skipped, self.late, self.violations,
            self.reader.truth, self.logs, self.t0, self.attacks,
        )  # fmt: skip

    def title(self) -> str:
        return f"chaos soak: seed {self.s.seed}, {self.s.duration:g}s, {len(self.ids)} strategies, recovery bound {self.s.bound:.1f}s"


# ---- main ----


@contextlib.contextmanager
def soak_store(settings: Settings) -> Iterator[str]:
    """The store's URL for the run: "" (the home's files), or a scratch database dropped afterwards."""
    if not settings.store:
        yield ""
        return
    with scratch_database(settings.store) as url:
        yield url


@contextlib.contextmanager
def soak_home(settings: Settings, passed: Callable[[], bool]) -> Iterator[Path]:
    """The home: a fresh temporary one unless given; removed afterwards only when the run passed."""
    if settings.home is not None:
        settings.home.mkdir(parents=True, exist_ok=True)
        if any(settings.home.iterdir()):
            raise SystemExit(f"chaos: --home {settings.home} is not empty")
        home = settings.home.resolve()
    else:
        home = Path(tempfile.mkdtemp(prefix="qlab-chaos-")).resolve()
    try:
        yield home
    finally:
        if passed() and not settings.keep_home:
            shutil.rmtree(home, ignore_errors=True)
            shutil.rmtree(chaos_attack.folder(home), ignore_errors=True)
        else:
            print(f"chaos: home kept: {home}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv, __doc__.split("\n\n")[0])
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    signal.signal(signal.SIGTERM, _interrupt)  # so the finally below runs: it ends every process
    outcome = {"code": 1}
    with soak_home(settings, lambda: outcome["code"] == 0) as home, soak_store(settings) as url:
        console.print(f"chaos: seed {settings.seed} (replay: {settings.replay()})")
        console.print(f"chaos: home {home}; store {redact(url) if url else 'files'}; faults {','.join(settings.faults)}")
        cluster = Cluster(home, url)
        soak = Soak(settings, cluster, console)
        try:
            soak.setup()
            soak.run()
            soak.settle()
            soak.final_checks()
            soak.shutdown()
            soak.check_ledger()
        except SetupError as e:
            console.print(f"chaos: the cluster did not come up: {e}")
            outcome["code"] = 2
            return 2
        except KeyboardInterrupt:
            console.print("chaos: interrupted; every process it started is ended")
            outcome["code"] = 130
            return 130
        finally:
            soak.status.stop()
            soak.reader.stop()
            cluster.sweep()
            soak.leaks.sweep()
            if soak.exchange is not None:
                soak.exchange.close()
        verdicts = soak.verdicts()
        write_json(home / "chaos-report.json", verdicts.report())
        if settings.json is not None:
            write_json(settings.json, verdicts.summary())
        console.print(verdicts.faults_table(soak.title()))
        console.print(verdicts.violations_table())
        console.print(f"chaos: seed {settings.seed}: {len(soak.violations)} violation(s); replay: {settings.replay()}")
        outcome["code"] = 1 if soak.violations else 0
    return outcome["code"]


if __name__ == "__main__":
    sys.exit(main())
