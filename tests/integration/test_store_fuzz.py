"""Fuzz: garbage in the store's files never bricks a daemon nor draws a traceback from `qlab`.

A real director and worker run two strategies. For FUZZ_SECONDS a seeded loop
overwrites the head version files of records nobody running depends on (a
third strategy's work and state, a fake worker's resource, the leader lease,
the directors, the halts blob) with random bytes, truncations and JSON holding
non-finite numbers, appends garbage and torn lines to the change feed, and runs
`qlab` commands with random numeric options. Both daemons must stay up, every
command must answer without a traceback (a failure is one ``Error:`` line), and
both strategies must keep beating. Replay a failure with QLAB_FUZZ_SEED=<seed>.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time
from pathlib import Path
from typing import Callable

import msgspec

from tests.conftest import COUNTER, Lab, wait_for

#: Seconds of fuzzing (the whole test, with start and stop, stays under a minute).
FUZZ_SECONDS = 32.0
#: Seconds within which each running strategy must show a new heartbeat.
BEAT_WINDOW = 4.0

BEATER = COUNTER

NON_FINITE = ["NaN", "-NaN", "Infinity", "-Infinity", "1e999", "-1e999", "nan", "inf"]
NUMBERS = ["nan", "inf", "-inf", "-1", "0", "1e-300", "1e300", "1e999", "-0", "0.05", "3", "NaN", "-Infinity"]
#: A JSON number after a key: the values the non-finite mutation replaces.
_NUMBER = re.compile(rb'(":)(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)')


class Fuzzer:
    """One seeded source of damage to the store and of `qlab` command lines."""

    def __init__(self, lab: Lab, seed: int) -> None:
        self.lab = lab
        self.rng = random.Random(seed)
        self.store = lab.home / "store"
        self.log: list[str] = []  #: what was done, newest last, for the failure message

    def folders(self) -> list[Path]:
        """The record folders to damage: none of them is read by the two running strategies."""
        out = [self.store / "works" / "c", self.store / "state" / "c", self.store / "resources" / "ghost",
               self.store / "leases" / "director"]
        out += [p for p in (self.store / "directors").iterdir() if p.is_dir()]
        out += [p for p in (self.store / "blobs").glob("*/*") if p.is_dir()]
        return out

    def damage_record(self) -> None:
        folder = self.rng.choice(self.folders())
        folder.mkdir(parents=True, exist_ok=True)
        names = sorted(n for n in os.listdir(folder) if n.isdigit())
        head = folder / (names[-1] if names else "000000000001")
        try:
            raw = head.read_bytes()
        except FileNotFoundError:  # pruned meanwhile, or a new record
            raw = b'{"v":1,"n":"fuzz"}\n{}'
            head = folder / "000000000001"
        how = self.rng.choice(["bytes", "truncate", "non-finite", "non-finite", "sidecar"])
        if how == "bytes":
            data = self.rng.randbytes(self.rng.randrange(0, 300))
        elif how == "truncate":
            data = raw[: self.rng.randrange(0, max(1, len(raw)))]
        elif how == "non-finite":
            data = self._non_finite(raw)
        else:  # the state log's frames beside a version, or a stray sidecar elsewhere
            with open(f"{head}.log", "ab") as f:
                f.write(self.rng.randbytes(self.rng.randrange(1, 64)))
            self.log.append(f"{how} {head.relative_to(self.store)}.log")
            return
        head.write_bytes(data)
        self.log.append(f"{how} {head.relative_to(self.store)} ({len(data)} bytes)")

    def _non_finite(self, raw: bytes) -> bytes:
        header, _, body = raw.partition(b"\n")
        numbers = list(_NUMBER.finditer(body))
        if not numbers:
            body = b'{"id":"c","ttl":%s,"epoch":%s}' % (self._nf(), self._nf())
        else:
            for m in self.rng.sample(numbers, k=self.rng.randint(1, min(3, len(numbers)))):
                body = body.replace(m.group(0), m.group(1) + self._nf(), 1)
        return header + b"\n" + body

    def _nf(self) -> bytes:
        return self.rng.choice(NON_FINITE).encode()

    def damage_feed(self) -> None:
        feed = self.store / "changes"
        segments = sorted(feed.glob("*.log"))
        if not segments:
            return
        choice = self.rng.choice(["bytes", "torn", "bad-crc", "nan"])
        if choice == "bytes":
            data = self.rng.randbytes(self.rng.randrange(1, 120))
        elif choice == "torn":
            data = b"works a 1"[: self.rng.randrange(1, 9)]
        elif choice == "bad-crc":
            data = b"works a 99999 w1 deadbeef\n"
        else:
            data = b"works c %s w1\n" % self._nf()
        with open(segments[-1], "ab") as f:
            f.write(data)
        self.log.append(f"feed {choice} {len(data)} bytes")

    def command(self, cfile: Path) -> list[str]:
        n = lambda: self.rng.choice(NUMBERS)  # noqa: E731
        commands: list[Callable[[], list[str]]] = [
            lambda: ["status"],
            lambda: ["status", "--json"],
            lambda: ["status", "--pending-after", n()],
            lambda: ["events", "-n", self.rng.choice(["5", "1", "-1", "1e3", "nan"])],  # -n 0 rightly prints nothing
            lambda: ["strategy", "list"],
            lambda: ["strategy", "list", "--json"],
            lambda: ["worker", "list"],
            lambda: ["halt", "--strategy", "c"],
            lambda: ["resume", "--strategy", "c"],
            lambda: ["strategy", "assign", str(cfile), "--id", "c", "--region", "ZZ",
                     self.rng.choice(["--interval", "--heartbeat-timeout", "--backoff", "--stop-timeout",
                                      "--error-window", "--max-errors", "--max-memory"]), n()],
        ]
        return self.rng.choice(commands)()


def check_answer(args: list[str], result: subprocess.CompletedProcess[str], why: str) -> None:
    said = f"qlab {' '.join(args)} -> {result.returncode}\nstdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}\n{why}"
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, said
    if result.returncode == 0:
        assert result.stdout.strip() or result.stderr.strip(), said
    else:
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, said


def test_garbage_in_the_store_never_bricks_a_daemon(lab: Lab) -> None:
    seed = int(os.environ.get("QLAB_FUZZ_SEED") or random.randrange(1 << 32))
    director = lab.director()
    worker = lab.worker("w1")
    for name in ("a", "b"):
        lab.assign(lab.strategy(name, BEATER), "--interval", "0.1")
    cfile = lab.strategy("c", BEATER)
    lab.assign(cfile, "--region", "ZZ")  # never placed: no worker serves ZZ
    lab.run("halt", "--strategy", "c")  # so that the halts blob exists
    for name in ("a", "b"):
        lab.wait_heartbeats(name, 3, timeout=20)
    fuzz = Fuzzer(lab, seed)
    # A resource for the fake worker: a copy of w1's, under another id and a pid nobody has.
    w1 = lab.store.find_resource("w1")
    assert w1 is not None
    ghost = msgspec.to_builtins(w1)
    ghost["id"], ghost["spec"]["pid"] = "ghost", 999_999_999
    (fuzz.store / "resources" / "ghost").mkdir(parents=True, exist_ok=True)
    (fuzz.store / "resources" / "ghost" / "000000000001").write_text('{"v":1,"n":"ghost"}\n' + json.dumps(ghost))

    def why() -> str:
        return f"seed {seed} (replay: QLAB_FUZZ_SEED={seed}); last damage: {fuzz.log[-8:]}"

    def beats() -> dict[str, int]:
        return {name: lab.work(name).result.heartbeats for name in ("a", "b")}

    last_beats, checked = beats(), time.monotonic()
    began = time.monotonic()
    commands = 0
    while time.monotonic() - began < FUZZ_SECONDS:
        for _ in range(fuzz.rng.randint(1, 4)):
            fuzz.damage_record()
        if fuzz.rng.random() < 0.5:
            fuzz.damage_feed()
        args = fuzz.command(cfile)
        check_answer(args, lab.run(*args, check=False, timeout=20), why())
        commands += 1
        for proc, name in ((director, "director"), (worker, "worker")):
            assert proc.poll() is None, f"the {name} exited with {proc.returncode}; {why()}"
        if time.monotonic() - checked > BEAT_WINDOW:
            now = beats()
            assert all(now[k] > last_beats[k] for k in now), f"heartbeats stalled: {last_beats} -> {now}; {why()}"
            last_beats, checked = now, time.monotonic()
    end = beats()
    wait_for(lambda: all(beats()[k] > end[k] for k in end), timeout=BEAT_WINDOW,
             what=f"heartbeats after the fuzz ({end}); {why()}")
    for proc, name in ((director, "director"), (worker, "worker")):
        assert proc.poll() is None, f"the {name} exited with {proc.returncode}; {why()}"
    daemon_logs = "".join(p.read_text(errors="replace") for p in lab.home.glob("proc-*.err"))
    assert "Traceback" not in daemon_logs, f"a daemon logged a traceback; {why()}\n{daemon_logs[-4000:]}"
    print(f"fuzz seed {seed}: {commands} commands, {len(fuzz.log)} damages")
