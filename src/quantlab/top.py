"""`qlab top`: one live screen of the fleet, like `pm2 monit` or `top`.

The fleet summary and halts as `qlab status` prints them, the workers, the
strategies sorted by CPU (the busiest first, as their worker last measured
them: quantlab/worker/load.py) and the latest events as `qlab events` prints
them, redrawn every REFRESH seconds from one snapshot (quantlab.fleet) with
the same views (quantlab.views). `q` or Ctrl-C quits. Without a terminal it
prints one screen and ends, like `top -b -n 1`.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import sys
import termios
import time
import tty
from typing import TYPE_CHECKING, Any, Callable, Iterator

from quantlab import fleet, views
from quantlab.store.records import Event
from quantlab.store.store import Store

if TYPE_CHECKING:
    from rich.console import RenderableType

#: Seconds between redraws.
REFRESH = 1.0
#: Events shown under the strategies, the latest last.
EVENTS = 8
#: Screen lines besides the strategy rows: summary, a halt, the tables' titles, headers and edges, the events.
_OTHER_LINES = 14 + EVENTS
#: Keys that quit.
QUIT_KEYS = (b"q", b"Q")


def by_cpu(strategies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The busiest first; a strategy not measured yet (no child, or one sample so far) last."""
    return sorted(strategies, key=lambda e: (e.get("cpu") is None, -(e.get("cpu") or 0.0), e["id"]))


class Top:
    """The screen's state between redraws: the latest events, read from the store as they come."""

    def __init__(self, store: Store) -> None:
        self.store = store
        found, self.offset = store.read_events(0)
        self.events: collections.deque[Event] = collections.deque(found[-EVENTS:], maxlen=EVENTS)

    def screen(self, height: int, live: bool = True) -> RenderableType:
        """What to draw now, fitted to ``height`` lines; ``live``: with the keys that quit."""
        from rich.console import Group
        from rich.text import Text

        found, self.offset = self.store.read_events(self.offset)
        self.events.extend(found)
        now = time.time()
        snapshot = fleet.snapshot(self.store, now)
        strategies = by_cpu(snapshot["strategies"])
        room = max(1, height - _OTHER_LINES - len(snapshot["workers"]))
        parts: list[RenderableType] = [Text(views.summary(snapshot), style="bold"), *views.halt_lines(snapshot, now)]
        if snapshot["workers"]:
            parts.append(views.workers_table(snapshot["workers"], now))
        parts.append(views.strategies_table(strategies[:room], now))
        if len(strategies) > room:
            parts.append(Text(f"... and {len(strategies) - room} more (qlab status lists all)"))
        parts.append(Text("latest events", style="bold"))
        parts.extend(Text(views.event_line(e, as_json=False)) for e in self.events)
        if live:
            parts.append(Text("q or Ctrl-C quits", style="dim"))
        return Group(*parts)


def run_top(store: Store) -> None:
    """Redraw until `q` or Ctrl-C; one screen when stdout is not a terminal."""
    top = Top(store)
    console = views.console()
    if not console.is_terminal:
        console.print(top.screen(height=10_000, live=False))
        return
    from rich.live import Live

    with _keys() as pressed, Live(top.screen(console.height), console=console, screen=True,
                                  auto_refresh=False) as live:
        while not pressed(REFRESH):
            live.update(top.screen(console.height), refresh=True)


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], bool]]:
    """A function that waits up to its seconds for a quit key; the terminal reads keys one by one meanwhile.

    Only cbreak: the terminal still turns Ctrl-C into SIGINT, which ends `top` like `q`.
    """
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    saved = termios.tcgetattr(fd) if fd is not None else None
    if fd is not None:
        tty.setcbreak(fd)

    def pressed(seconds: float) -> bool:
        if fd is None:
            time.sleep(seconds)
            return False
        ready, _, _ = select.select([fd], [], [], seconds)
        typed = os.read(fd, 32) if ready else b""
        return any(key in typed for key in QUIT_KEYS)

    try:
        yield pressed
    finally:
        if fd is not None and saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
