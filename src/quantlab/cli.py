"""The `qlab` command line: parse options, call the core, print, exit with a named code.

Here: the `qlab` group and the Env every command gets, the commands on the
workers and on one strategy, and the entry point. The other commands are
defined by theme in the quantlab.cli_* modules (processes, fleet, status,
halt, admin) and added to these groups here: those of status, halt and admin
only when one of them is asked for (LATE_COMMANDS).

No supervision logic lives here: the operator's operations are in
quantlab.control (and fleet, strategylogs, workerstop), the long-running
processes in the director, worker and `up` modules. Bad input ends with one
``Error: ...`` line on stderr, never a traceback; click's own usage errors
keep click's message and exit 2.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

import click

from quantlab import ENV_PREFIX, cli_fleet, cli_processes, exits, helpcache
from quantlab.cli_options import LateOptionsCommand
from quantlab.errors import BadInput
from quantlab.exits import EXIT_INTERRUPTED, EXIT_OK
from quantlab.lazy import lazy_module

# Each command imports only what it uses (so `qlab --help` takes tens of milliseconds):
# these modules load on first use. pathlib too: it comes with the home (quantlab.config), and
# the commands that take a path make their Path themselves, so that listing them needs none.
if TYPE_CHECKING:
    from pathlib import Path

    import msgspec
    from rich.console import RenderableType

    from quantlab import control, settings, views
    from quantlab.config import Paths
    from quantlab.store.store import Store
else:
    control = lazy_module("quantlab.control")
    settings = lazy_module("quantlab.settings")
    views = lazy_module("quantlab.views")
    msgspec = lazy_module("msgspec")


class Env:
    """What every command gets: the home's paths and, opened on first use, its store."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self._store: Store | None = None
        self.config_path: Path | None = None  #: the settings file in force, if any
        self.config: dict[str, dict[str, Any]] = {}
        #: Where --home, --store and --config came from ("command line --home", "environment ...", "default").
        self.given_by: dict[str, str] = {}

    @property
    def store(self) -> Store:
        if self._store is None:
            from quantlab.store.open import open_store

            self._store = open_store(self.paths)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


pass_env = click.make_pass_decorator(Env)


#: `qlab`'s commands that other modules define, by name, with the module (its TOP_COMMANDS): it is imported
#: when one of them runs, or the help lists them all, so that every other command starts without building them.
LATE_COMMANDS = {
    "status": "quantlab.cli_status", "events": "quantlab.cli_status",
    "halt": "quantlab.cli_halt", "resume": "quantlab.cli_halt",
    "config": "quantlab.cli_admin", "systemd": "quantlab.cli_admin", "store": "quantlab.cli_admin",
    "js": "quantlab.cli_admin",
}


class TopGroup(click.Group):
    """`qlab` itself, with the LATE_COMMANDS; the help it renders is kept for the next ``qlab --help``.

    quantlab.helpcache prints that one while it is current.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *LATE_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LATE_COMMANDS:
            for command in importlib.import_module(LATE_COMMANDS[cmd_name]).TOP_COMMANDS:
                self.add_command(command)
        return super().get_command(ctx, cmd_name)

    def get_help(self, ctx: click.Context) -> str:
        text = super().get_help(ctx)
        helpcache.store(text, ctx.make_formatter().width, list(self.get_help_option_names(ctx)))
        return text


@click.group(cls=TopGroup, context_settings={"help_option_names": list(helpcache.HELP_OPTIONS)})
@click.version_option(package_name="quantlab", prog_name="qlab", message="%(prog)s %(version)s")
@click.option("--home", envvar="QLAB_HOME", metavar="DIR", help="Home [$QLAB_HOME, else ~/.local/state/quantlab].")
@click.option(
    "--store", "store_url", envvar="QLAB_STORE", metavar="URL",
    help="The store: postgresql://USER@HOST/DB shared by many hosts [$QLAB_STORE, else the home's store/ directory].",
)
@click.option("--config", "config_file", envvar="QLAB_CONFIG", metavar="FILE",
              help="Settings file [$QLAB_CONFIG, else quantlab.toml in the home].")
@click.option("--host", "host", envvar="QLAB_HOST", metavar="NAME",
              help="The host name recorded for directors and workers, and `worker stop`'s own [$QLAB_HOST, else the machine's].")
@click.pass_context
def qlab(ctx: click.Context, home: str | None, store_url: str | None, config_file: str | None, host: str | None) -> None:
    """Run live trading strategies: a director places them, workers keep them alive."""
    from quantlab.config import Paths, resolve_home

    env = Env(Paths(resolve_home(home), store_url=store_url or "", host=host or ""))
    _warn_if_open(env.paths.home)
    env.config_path = settings.find(config_file, env.paths.home)
    env.config = settings.load(env.config_path, qlab)
    env.given_by = {name: settings.given_by(ctx, name) for name in ("home", "store_url", "config_file")}
    ctx.default_map = settings.default_map(env.config)
    ctx.obj = env
    ctx.call_on_close(env.close)


# ---- the long-running processes (quantlab.cli_processes) and the workers ----


@qlab.group()
def director() -> None:
    """The director: places strategies on workers."""


@qlab.group()
def worker() -> None:
    """Workers: each runs strategies as child processes."""


qlab.add_command(cli_processes.up)
director.add_command(cli_processes.director_start)
worker.add_command(cli_processes.worker_start)


@worker.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
@pass_env
def worker_list(env: Env, as_json: bool) -> None:
    """The registered workers, their load and lease."""
    from quantlab.fleet import worker_view

    now = time.time()
    workers = [worker_view(r, now) for r in env.store.list_resources()]
    _show(workers, as_json, lambda: views.workers_table(workers, now))


@worker.command("stop")
@click.argument("worker_id", metavar="ID")
@pass_env
def worker_stop(env: Env, worker_id: str) -> None:
    """Ask a worker on this host to drain its strategies and exit (SIGTERM)."""
    from quantlab.workerstop import stop_worker

    click.echo(stop_worker(env.store, worker_id, host=env.paths.host_name))


# ---- strategies ----


@qlab.group()
def strategy() -> None:
    """Strategies: assign, inspect and control them."""


def _setting_options() -> list[click.Parameter]:
    """One option per StrategySpec setting (quantlab.control checks them again for every other way in)."""
    from quantlab.store.strategy_settings import spec_settings

    return settings.setting_options(spec_settings())


@strategy.command("assign", cls=LateOptionsCommand, late=_setting_options)
@click.argument("file")
@click.option("--id", "work_id", help="Strategy id [the file's stem].")
@click.option("--param", "pairs", multiple=True, metavar="K=V", help="A parameter; V is JSON or a string. Repeatable.")
@click.option("--params", "params_json", metavar="JSON", help="Parameters as one JSON object.")
@click.option("--account", "accounts", multiple=True, metavar="NAME", help="An account it may use. Repeatable.")
@click.option("--region", help="Run only on a worker of this region.")
@click.option("--worker", help="Run only on this worker.")
@pass_env
def strategy_assign(
    env: Env,
    file: str,
    work_id: str | None,
    pairs: tuple[str, ...],
    params_json: str | None,
    accounts: tuple[str, ...],
    **options: Any,
) -> None:
    """Submit the strategy in FILE; the director places it and a worker starts it."""
    request = control.AssignRequest(
        file=file,
        id=work_id,
        params=control.parse_params(list(pairs), params_json),
        accounts=list(accounts) or None,
        **options,
    )
    work = control.assign(env.store, request)
    click.echo(f"submitted {work.id}: {work.result.reason}")


@qlab.command("apply")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--prune", is_flag=True, help="Remove the strategies FILE does not list (without it they are stopped).")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@pass_env
def apply_manifest(env: Env, file: str, prune: bool, dry_run: bool) -> None:
    """Make the store match the fleet manifest FILE (TOML, one table per strategy)."""
    from pathlib import Path

    from quantlab import manifest

    steps = manifest.apply(env.store, Path(file), prune=prune, dry_run=dry_run)
    for line in manifest.describe(steps):
        click.echo(line)
    if dry_run:
        click.echo("dry run: nothing written")


@strategy.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
@pass_env
def strategy_list(env: Env, as_json: bool) -> None:
    """Every strategy with its status, heartbeats and errors."""
    from quantlab.fleet import strategy_view

    now = time.time()
    strategies = [strategy_view(w, now) for w in env.store.list_works()]
    _show(strategies, as_json, lambda: views.strategies_table(strategies, now))


for _fleet_command in cli_fleet.STRATEGY_COMMANDS:  # stop, start, restart, remove (several ids or --all), show
    strategy.add_command(_fleet_command)


@strategy.command("send")
@click.argument("work_id", metavar="ID")
@click.argument("message", metavar="JSON")
@pass_env
def strategy_send(env: Env, work_id: str, message: str) -> None:
    """Send a JSON message to the strategy's st_message hook."""
    try:
        data = msgspec.json.decode(message.encode())
    except msgspec.DecodeError as e:
        raise BadInput(f"message is not JSON: {e}") from e
    control.send(env.store, work_id, data)
    click.echo(f"sent to {work_id}")


@strategy.command("logs")
@click.argument("work_id", metavar="ID")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=50, show_default=True, help="Lines to show.")
@pass_env
def strategy_logs(env: Env, work_id: str, follow: bool, lines: int) -> None:
    """Show the strategy's own log: its ctx.log lines and the worker's markers."""
    from quantlab.logs import tail_log
    from quantlab.strategylogs import log_file

    path = log_file(env.store, env.paths, work_id)
    if not path.exists() and not follow:
        click.echo(f"no log yet at {path}", err=True)
        return
    tail_log(path, lines, follow, click.echo)


def _show(entries: list[dict[str, Any]], as_json: bool, table: Callable[[], RenderableType]) -> None:
    if as_json:
        click.echo(views.to_json(entries))
    else:
        views.console().print(table())


for _fleet_command in cli_fleet.TOP_COMMANDS:  # logs, top (the other modules' are LATE_COMMANDS)
    qlab.add_command(_fleet_command)


# ---- entry point ----


def _warn_if_open(home: Path) -> None:
    try:
        mode = home.stat().st_mode & 0o777
    except OSError:
        return
    if mode & 0o077:
        click.echo(f"warning: {home} can be read by other users (mode {mode:o}): chmod 700 {home}", err=True)


def run(argv: list[str] | None = None) -> int:
    """Run one `qlab` command and return its exit code; never lets a traceback through."""
    # Private by default, whatever the caller's umask: every folder and file qlab and its
    # children create (home, store, sockets, logs) is the user's alone.
    os.umask(0o077)
    return exits.reported(lambda: _command(argv))


def _command(argv: list[str] | None) -> int:
    try:
        result = qlab.main(args=argv, prog_name="qlab", standalone_mode=False, auto_envvar_prefix=ENV_PREFIX)
    except click.exceptions.Abort:
        return EXIT_INTERRUPTED  # click already printed a newline after the ^C
    except click.ClickException as e:
        e.show()
        return e.exit_code
    return result if isinstance(result, int) else EXIT_OK


def main() -> None:
    """`qlab` as a process: run the command, then exit with its code."""
    code = run()
    # The command is done, its store closed. What is left is the interpreter's exit, whose garbage
    # collections would walk every object the imports made (click's, msgspec's, rich's: tens of
    # thousands) only to free them with the process, and take longer than a short command's own
    # work. Frozen, they are not walked. As at any exit, Python does not promise to finalize
    # objects that are still alive.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    main()
