"""The whole picture's `qlab` commands: `status` (once, as JSON, redrawn, or checked) and `events`.

Like quantlab.cli_fleet, whose pattern they follow, they read the store through
quantlab.fleet and print with quantlab.views; quantlab.cli adds them to
`qlab` (TOP_COMMANDS) when one of them is asked for.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import click

from quantlab.exits import EXIT_ERROR, EXIT_OK
from quantlab.lazy import lazy_module

if TYPE_CHECKING:
    from rich.console import RenderableType

    from quantlab import views
    from quantlab.cli import Env
    from quantlab.store.records import Event
    from quantlab.store.store import Store
else:
    views = lazy_module("quantlab.views")

POLL = 0.5  #: seconds between reads in `events --follow`
WATCH = 1.0  #: seconds between redraws in `status --watch`

pass_env = click.pass_obj  #: the Env quantlab.cli's group made


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: directors, workers, strategies.")
@click.option("--watch", is_flag=True, help="Redraw every second until Ctrl-C.")
@click.option("--check", is_flag=True,
              help="For scripts: exit 1, one line per problem, when a strategy failed or is stuck, no director "
                   "leads, a halt is in force or a worker's lease is short.")
@click.option("--pending-after", type=float, default=60.0, show_default=True, metavar="S",
              help="With --check: seconds a strategy may be pending before it counts.")
@click.option("--stuck-after", type=float, default=60.0, show_default=True, metavar="S",
              help="With --check: seconds a strategy may stay assigned, starting or stopping before it counts.")
@click.option("--allow-halted", is_flag=True, help="With --check: a halt in force is meant, not a problem.")
@pass_env
def status(env: Env, as_json: bool, watch: bool, check: bool, pending_after: float, stuck_after: float,
           allow_halted: bool) -> None:
    """Directors, workers and strategies."""
    if as_json and watch:
        raise click.UsageError("--json and --watch do not go together.")
    from quantlab import fleet

    if check:
        from quantlab import health

        bounds = health.Bounds(pending_after=pending_after, stuck_after=stuck_after, allow_halted=allow_halted)
        now = time.time()
        snapshot = fleet.snapshot(env.store, now)
        found = health.problems(snapshot, now, bounds)
        for line in found:
            click.echo(line)
        click.echo(("FAIL: " if found else "ok: ") + views.summary(snapshot))
        sys.exit(EXIT_ERROR if found else EXIT_OK)
    if as_json:
        click.echo(views.to_json(fleet.snapshot(env.store, time.time())))
        return
    if not watch:
        views.console().print(_status_view(env.store))
        return
    try:
        _watch(env.store)
    except KeyboardInterrupt:
        return  # Ctrl-C is how one ends --watch


@click.command("events")
@click.option("--strategy", "work_id", metavar="ID", help="Only events about this strategy.")
@click.option("-n", "--lines", "count", type=click.IntRange(min=0), metavar="N",
              help="Only the last N events (then, with --follow, every new one).")
@click.option("--since", metavar="WHEN",
              help="Only events since WHEN: a time back from now (30s, 10m, 2h, 1d) or an ISO time (2024-05-01T09:30).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_env
def events(env: Env, work_id: str | None, count: int | None, since: str | None, follow: bool, as_json: bool) -> None:
    """The append-only audit log of every transition."""
    from quantlab import durations

    start = durations.since(since, time.time()) if since is not None else None

    def wanted(event: Event) -> bool:
        return (work_id is None or event.strategy == work_id) and (start is None or event.ts >= start)

    try:
        batch, offset = env.store.read_events(0)
        shown = [e for e in batch if wanted(e)]
        for event in shown[max(0, len(shown) - count):] if count is not None else shown:
            click.echo(views.event_line(event, as_json))
        while follow:
            time.sleep(POLL)
            batch, offset = env.store.read_events(offset)
            for event in filter(wanted, batch):
                click.echo(views.event_line(event, as_json))
    except KeyboardInterrupt:
        return  # Ctrl-C is how one ends --follow


def _watch(store: Store) -> None:
    from rich.live import Live

    console = views.console()
    if not console.is_terminal:
        # No cursor to redraw with (a pipe, a log file): print each view in turn.
        while True:
            console.print(_status_view(store))
            time.sleep(WATCH)
    with Live(_status_view(store), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(WATCH)
            live.update(_status_view(store), refresh=True)


def _status_view(store: Store) -> RenderableType:
    from quantlab import fleet

    now = time.time()
    return views.status_view(fleet.snapshot(store, now), now)


#: The commands quantlab.cli adds to `qlab` itself (its LATE_COMMANDS name them).
TOP_COMMANDS = (status, events)
