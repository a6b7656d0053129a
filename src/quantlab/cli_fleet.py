"""The `qlab` commands an operator runs across the fleet, as with pm2 or supervisorctl.

`strategy stop|start|restart|remove` take several ids or ``--all``; `strategy
show` gathers one strategy's whole picture; `logs` tails every strategy's log on
this host with an id before each line; `top` is a live screen of it all. Like quantlab.cli, which adds them to its
groups (STRATEGY_COMMANDS, TOP_COMMANDS), they parse, call the core
(quantlab.control, quantlab.details, quantlab.strategylogs, quantlab.logs) and print. Each gets the
command line's Env as the context's object.

``--all`` asks before it acts, on a terminal; without one it acts only with
``--yes``: a script that meant one strategy and lost its argument must not stop
the fleet.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Callable

import click

from quantlab import exits
from quantlab.errors import BadInput, QuantlabError
from quantlab.exits import EXIT_ERROR, EXIT_OK
from quantlab.lazy import lazy_module

if TYPE_CHECKING:
    from pathlib import Path

    from quantlab import control, views
    from quantlab.cli import Env
else:
    control = lazy_module("quantlab.control")
    views = lazy_module("quantlab.views")

pass_env = click.pass_obj  #: the Env quantlab.cli's group made


def _targets(fn: Callable[..., Any]) -> Callable[..., Any]:
    """IDs, ``--all`` and ``--yes``: which strategies a command acts on."""
    for decorate in reversed((
        click.argument("work_ids", metavar="[ID]...", nargs=-1),
        click.option("--all", "every", is_flag=True, help="Every strategy (asks first, unless --yes)."),
        click.option("--yes", "-y", is_flag=True, help="With --all: do not ask (needed without a terminal)."),
    )):
        fn = decorate(fn)
    return fn


def _chosen(env: Env, work_ids: tuple[str, ...], every: bool, yes: bool, doing: str) -> list[str]:
    """The strategies to act on, each known; with ``--all``, confirmed. Empty: nothing to do (said so)."""
    if every and work_ids:
        raise click.UsageError("Give strategy IDs or --all, not both.")
    if not every and not work_ids:
        raise click.UsageError("Missing argument 'ID...' (or --all for every strategy).")
    chosen = control.select(env.store, list(work_ids), every)
    if not every:
        return chosen
    if not chosen:
        click.echo("no strategies")
        return []
    what = f"{doing} {len(chosen)} strateg{'y' if len(chosen) == 1 else 'ies'}"
    if yes:
        return chosen
    if not sys.stdin.isatty():
        raise BadInput(f"--all would {what}: add --yes to do it without a terminal to confirm on")
    shown = ", ".join(chosen[:5]) + (", ..." if len(chosen) > 5 else "")
    if not click.confirm(f"{what.capitalize()} ({shown})?", default=False):
        raise BadInput(f"nothing done: did not {what}")
    return chosen


def _each(work_ids: list[str], act: Callable[[str], str]) -> None:
    """``act`` on each strategy, one line each; one that fails is an Error line, the others still go.

    Ends with exit 1 when any failed. One strategy alone fails as any command does.
    """
    if len(work_ids) == 1:
        click.echo(act(work_ids[0]))
        return
    failed = 0
    for work_id in work_ids:
        try:
            click.echo(act(work_id))
        except QuantlabError as e:
            exits.error(str(e))
            failed += 1
    if failed:
        sys.exit(EXIT_ERROR)


@click.command("stop")
@_targets
@pass_env
def strategy_stop(env: Env, work_ids: tuple[str, ...], every: bool, yes: bool) -> None:
    """Stop strategies: st_exit runs with reason manual."""
    def stop(work_id: str) -> str:
        work = control.stop(env.store, work_id)
        return f"stopped {work.id}" if work.result.status == "stopped" else f"stop requested for {work.id}"

    _each(_chosen(env, work_ids, every, yes, "stop"), stop)


@click.command("start")
@_targets
@pass_env
def strategy_start(env: Env, work_ids: tuple[str, ...], every: bool, yes: bool) -> None:
    """Run stopped or failed strategies again, each with a fresh error count."""
    _each(_chosen(env, work_ids, every, yes, "start"),
          lambda work_id: f"start requested for {control.start(env.store, work_id).id}")


@click.command("restart")
@_targets
@pass_env
def strategy_restart(env: Env, work_ids: tuple[str, ...], every: bool, yes: bool) -> None:
    """Restart strategies' child processes (or start stopped ones), once their files check out as `assign` checks them."""
    chosen = _chosen(env, work_ids, every, yes, "restart")
    control.check_files(env.store, chosen)  # all of them, before any restarts: a bad file restarts none
    _each(chosen, lambda work_id: "restart requested for "
          + control.restart(env.store, work_id, file_checked=True).id)


@click.command("remove")
@_targets
@pass_env
def strategy_remove(env: Env, work_ids: tuple[str, ...], every: bool, yes: bool) -> None:
    """Stop strategies and forget them, with their saved state."""
    def remove(work_id: str) -> str:
        control.remove(env.store, work_id)
        return f"removed {work_id}"

    _each(_chosen(env, work_ids, every, yes, "remove"), remove)


@click.command("show")
@click.argument("work_id", metavar="ID")
@click.option("-n", "--events", "count", type=click.IntRange(min=0), default=10, show_default=True, metavar="N",
              help="Recent events to show.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@pass_env
def strategy_show(env: Env, work_id: str, count: int, as_json: bool) -> None:
    """One strategy: file, worker, host, pid, uptime, log, settings, risk limits, last error, recent events."""
    from quantlab import details

    now = time.time()
    entry = details.describe(env.store, env.paths, work_id, now, events=count)
    if as_json:
        click.echo(views.to_json(entry))
        return
    for line in views.strategy_details(entry, now):
        click.echo(line)


@click.command("logs")
@click.argument("work_ids", metavar="[ID]...", nargs=-1)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C; new strategies join in.")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=15, show_default=True,
              help="Lines to show from each log first.")
@pass_env
def logs(env: Env, work_ids: tuple[str, ...], follow: bool, lines: int) -> None:
    """Every strategy's log on this host (or the IDs'), each line after its strategy's id."""
    from quantlab.logs import tail_many
    from quantlab.strategylogs import local_logs

    def sources() -> dict[str, Path]:
        return local_logs(env.store, env.paths, list(work_ids))

    found = sources()
    if not found and not follow:
        click.echo("no strategy logs on this host", err=True)
        sys.exit(EXIT_OK)
    tail_many(sources, lines, follow, click.echo)


@click.command("top")
@pass_env
def top(env: Env) -> None:
    """A live screen: the fleet, its strategies by CPU and the latest events; q or Ctrl-C quits."""
    from quantlab.top import run_top

    try:
        run_top(env.store)
    except KeyboardInterrupt:
        return  # Ctrl-C is one way to quit it


#: The commands quantlab.cli adds to `qlab strategy`, and to `qlab` itself.
STRATEGY_COMMANDS = (strategy_stop, strategy_start, strategy_restart, strategy_remove, strategy_show)
TOP_COMMANDS = (logs, top)
