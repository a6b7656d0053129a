"""`qlab top` in a real terminal (a pty): strategies by CPU, the latest events, and q or Ctrl-C to quit."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

from quantlab.store.records import Event, EventKind, StrategyResult, StrategySpec, Work
from tests.conftest import QLAB, Lab, wait_for

#: Terminal escape sequences (colours, cursor moves, the alternate screen), taken out to read the text.
_ESCAPES = re.compile(rb"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-B]|[=>78])")


class Terminal:
    """`qlab top` on a pty of 40 lines by 160 columns, its controlling terminal, as in a shell."""

    def __init__(self, home: Path) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        self.proc = subprocess.Popen([QLAB, "--home", str(home), "top"], stdin=slave, stdout=slave, stderr=slave,
                                     env={**env, "TERM": "xterm-256color"}, start_new_session=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.seen = b""

    def read(self) -> bytes:
        while select.select([self.master], [], [], 0.05)[0]:
            try:
                self.seen += os.read(self.master, 65536)
            except OSError:  # the other end is gone: everything it wrote was read
                break
        return self.seen

    def frame(self) -> str:
        """The text of the last screen drawn (each starts with the summary line)."""
        text = _ESCAPES.sub(b"", self.read()).decode(errors="replace")
        return text[text.rfind("directors:"):] if "directors:" in text else ""

    def exits(self, key: bytes) -> int:
        os.write(self.master, key)
        deadline = time.monotonic() + 10
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.read()
        return self.proc.wait(1)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)


def _work(work_id: str, cpu: float | None, status: str = "running") -> Work:
    now = time.time()
    return Work(id=work_id, spec=StrategySpec(file=f"/srv/{work_id}.py"), created=now,
                result=StrategyResult(status=status, pid=4000 if cpu is not None else None, cpu=cpu, memory=30.0,
                                      since=now - 5, updated=now))  # type: ignore[arg-type]


def test_top_shows_strategies_by_cpu_and_new_events_and_quits_on_q_and_ctrl_c(lab: Lab) -> None:
    for work_id, cpu in (("calm", 2.0), ("busy", 87.0), ("waiting", None), ("middle", 30.0)):
        lab.store.add_work(_work(work_id, cpu, "pending" if cpu is None else "running"))
    lab.store.append_event(Event(ts=time.time(), kind=EventKind.CRASHED, strategy="calm", detail="signal SIGSEGV"))
    for quit_key in (b"q", b"\x03"):  # \x03: Ctrl-C, which the terminal turns into SIGINT
        term = Terminal(lab.home)
        try:
            frame = wait_for(lambda: "signal SIGSEGV" in term.frame() and term.frame(), timeout=30, what="top's first screen")
            assert "strategies: 1 pending, 3 running" in frame
            rows = [frame.index(f" {work_id} ") for work_id in ("busy", "middle", "calm", "waiting")]
            assert rows == sorted(rows), frame  # the busiest first; not measured last
            lab.store.append_event(Event(ts=time.time(), kind=EventKind.STOPPED, strategy="busy", detail="bye " + repr(quit_key)))
            wait_for(lambda: "bye " + repr(quit_key) in term.frame(), what="a new event on the screen")
            assert term.exits(quit_key) == 0, term.read()[-2000:]
            assert b"Traceback" not in term.read()
            assert termios.tcgetattr(term.master)[3] & termios.ICANON  # the terminal reads lines again
        finally:
            term.close()
