"""The `qlab` command line: parse options, call the core, print, exit with a named code.

No supervision logic lives here: the operator's operations are in
quantlab.control, the long-running processes in the director, worker and
`up` modules. Bad input ends with one ``Error: ...`` line on stderr, never a
traceback; click's own usage errors keep click's message and exit 2.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

import click

from quantlab import ENV_PREFIX, cli_fleet, exits, helpcache
from quantlab.errors import BadInput
from quantlab.exits import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK
from quantlab.lazy import lazy_module

# Each command imports only what it uses (so `qlab --help` takes tens of milliseconds):
# these modules load on first use. pathlib too: it comes with the home (quantlab.config), and
# the commands that take a path make their Path themselves, so that listing them needs none.
if TYPE_CHECKING:
    from pathlib import Path

    import msgspec
    from rich.console import RenderableType

    from quantlab import control, killswitch, settings, views
    from quantlab.config import Paths
    from quantlab.store.records import Event
    from quantlab.store.store import Store
else:
    control = lazy_module("quantlab.control")
    killswitch = lazy_module("quantlab.killswitch")
    settings = lazy_module("quantlab.settings")
    views = lazy_module("quantlab.views")
    msgspec = lazy_module("msgspec")

POLL = 0.5  #: seconds between reads in `events --follow`
WATCH = 1.0  #: seconds between redraws in `status --watch`


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


class TopGroup(click.Group):
    """`qlab` itself: the help it renders is kept for the next ``qlab --help`` (quantlab.helpcache)."""

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


# ---- the long-running processes ----


class _LateOptionsCommand(click.Command):
    """A command with more options, made by ``late`` when its options are first read.

    The options made from declared settings (quantlab.settings.setting_options) are
    read from the records' fields, and reading those imports the records and msgspec,
    which listing the commands (`qlab --help`) must not (tests/integration/test_cli_imports.py).
    """

    def __init__(self, *args: Any, late: Callable[[], list[click.Parameter]], **kwargs: Any) -> None:
        self._late: Callable[[], list[click.Parameter]] | None = late
        super().__init__(*args, **kwargs)

    @property
    def params(self) -> list[click.Parameter]:
        if self._late is not None:
            late, self._late = self._late, None
            self._params.extend(late())
        return self._params

    @params.setter
    def params(self, params: list[click.Parameter]) -> None:
        self._params = params


def _up_options() -> list[click.Parameter]:
    """The strategy setting ``interval``, for the FILEs `up` runs."""
    from quantlab.store.strategy_settings import spec_settings

    interval = next(s for s in spec_settings() if s.name == "interval")
    return [settings.SettingOption(interval, help=f"Seconds between ticks for the FILEs [{interval.default_text}].")]


@qlab.command(cls=_LateOptionsCommand, late=_up_options)
@click.argument("files", nargs=-1)
@click.option("--region", default="JP", show_default=True, help="Region of the local worker.")
@click.option("--accounts", "accounts_file", metavar="FILE", help="The local worker's accounts file (env.jsonl).")
@click.option("--only", is_flag=True,
              help="Run only the FILEs: the home's other strategies are stopped (not removed) instead of resumed.")
@pass_env
def up(env: Env, files: tuple[str, ...], region: str, interval: float | None, accounts_file: str | None,
       only: bool) -> None:
    """A director and one local worker in the foreground, running FILEs and the home's earlier strategies."""
    from quantlab.up import run_up

    sys.exit(run_up(env.paths, files=list(files), region=region, interval=interval, only=only,
                    accounts_file=accounts_file))


@qlab.group()
def director() -> None:
    """The director: places strategies on workers."""


def _director_options() -> list[click.Parameter]:
    from quantlab.director.options import DirectorOptions
    from quantlab.store.strategy_settings import field_settings

    return settings.setting_options(field_settings(DirectorOptions))


@director.command("start", cls=_LateOptionsCommand, late=_director_options)
@click.option("--log-format", type=click.Choice(["text", "json"]), help="The log: text, or one JSON object a line [text].")
@pass_env
def director_start(env: Env, **params: Any) -> None:
    """Run a director in the foreground until SIGTERM or Ctrl-C."""
    from quantlab import daemon
    from quantlab.director.options import DirectorOptions

    given = settings.given(click.get_current_context(), params)
    options = DirectorOptions(**{name: value for name, (value, _) in given.items() if value is not None}).checked()
    daemon.become(daemon.DirectorStart(home=daemon.home_of(env.paths), options=options))


@qlab.group()
def worker() -> None:
    """Workers: each runs strategies as child processes."""


def _worker_options() -> list[click.Parameter]:
    from quantlab.store.strategy_settings import field_settings
    from quantlab.worker.options import WorkerOptions

    return settings.setting_options(field_settings(WorkerOptions))


class Required(click.Option):
    """An option a command cannot run without and that has no default; ``unless``: what may give it instead.

    Not click's ``required``, which would refuse the command before ``unless`` (a profile) is
    read: the command checks it. `config show` reads ``needed`` and shows the option as
    required, never with the default its record happens to have.
    """

    def __init__(self, *args: Any, unless: str = "", **kwargs: Any) -> None:
        self.unless = unless
        super().__init__(*args, **kwargs)

    @property
    def needed(self) -> str:
        """How to give it: "give --region, or a --profile that sets it"."""
        return f"give {self.opts[0]}" + (f", or {self.unless}" if self.unless else "")


@worker.command("start", cls=_LateOptionsCommand, late=_worker_options)
@click.option("--region", cls=Required, unless="a --profile that sets it",
              help="Region this worker serves (required unless --profile sets it).")
@click.option("--id", "id", help="Worker id [<host>-<region>].")
@click.option("--accounts", "accounts_file", metavar="FILE", help="Accounts file (env.jsonl).")
@click.option("--proxy", metavar="URL", help="HTTP(S) proxy for the exchange.")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Its log: text, or one JSON object a line [text].")
@click.option("--profile", type=click.Path(dir_okay=False), help="Worker profile TOML.")
@pass_env
def worker_start(env: Env, profile: str | None, **params: Any) -> None:
    """Run a worker in the foreground until SIGTERM or Ctrl-C."""
    from pathlib import Path

    from click.core import ParameterSource

    from quantlab import daemon
    from quantlab.worker.options import WorkerOptions, load_profile, profile_keys

    if profile is None and params["region"] is None:
        raise click.UsageError("Missing option '--region' (or a --profile that sets it).")
    base = load_profile(Path(profile)) if profile is not None else WorkerOptions()
    in_profile = profile_keys(Path(profile)) if profile is not None else set()
    passed = {
        name: value
        for name, (value, source) in settings.given(click.get_current_context(), params).items()
        # command line and environment win over the profile; the profile wins over the settings file
        if value is not None and not (source == ParameterSource.DEFAULT_MAP and name in in_profile)
    }
    options = msgspec.structs.replace(base, **passed).resolved(env.paths.host_name)
    daemon.become(daemon.WorkerStart(home=daemon.home_of(env.paths), options=options))


@worker.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
@pass_env
def worker_list(env: Env, as_json: bool) -> None:
    """The registered workers, their load and lease."""
    now = time.time()
    workers = [control.worker_view(r, now) for r in env.store.list_resources()]
    _show(workers, as_json, lambda: views.workers_table(workers, now))


@worker.command("stop")
@click.argument("worker_id", metavar="ID")
@pass_env
def worker_stop(env: Env, worker_id: str) -> None:
    """Ask a worker on this host to drain its strategies and exit (SIGTERM)."""
    click.echo(control.stop_worker(env.store, worker_id, host=env.paths.host_name))


# ---- the store ----


@qlab.group("store")
def store_group() -> None:
    """The store itself."""


@store_group.command("migrate")
@pass_env
def store_migrate(env: Env) -> None:
    """Create or update the store's schema (PostgreSQL; opening the store does it too)."""
    from quantlab.store.open import migrate_store

    click.echo(migrate_store(env.paths))


# ---- JavaScript strategies ----


@qlab.group("js")
def js_group() -> None:
    """JavaScript strategies: the Node runtime they run in."""


@js_group.command("install")
def js_install() -> None:
    """Install the Node runner's packages from the lock file (npm ci); runs offline afterwards."""
    from quantlab.child import jsruntime

    click.echo(f"JavaScript runtime installed in {jsruntime.install()}")


# ---- strategies ----


@qlab.group()
def strategy() -> None:
    """Strategies: assign, inspect and control them."""


def _setting_options() -> list[click.Parameter]:
    """One option per StrategySpec setting (quantlab.control checks them again for every other way in)."""
    from quantlab.store.strategy_settings import spec_settings

    return settings.setting_options(spec_settings())


@strategy.command("assign", cls=_LateOptionsCommand, late=_setting_options)
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
    now = time.time()
    strategies = [control.strategy_view(w, now) for w in env.store.list_works()]
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

    path = control.log_file(env.store, env.paths, work_id)
    if not path.exists() and not follow:
        click.echo(f"no log yet at {path}", err=True)
        return
    tail_log(path, lines, follow, click.echo)


# ---- the whole picture ----


for _fleet_command in cli_fleet.TOP_COMMANDS:  # logs, top
    qlab.add_command(_fleet_command)


@qlab.command()
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
    if check:
        from quantlab import health

        bounds = health.Bounds(pending_after=pending_after, stuck_after=stuck_after, allow_halted=allow_halted)
        now = time.time()
        snapshot = control.snapshot(env.store, now)
        found = health.problems(snapshot, now, bounds)
        for line in found:
            click.echo(line)
        click.echo(("FAIL: " if found else "ok: ") + views.summary(snapshot))
        sys.exit(EXIT_ERROR if found else EXIT_OK)
    if as_json:
        click.echo(views.to_json(control.snapshot(env.store, time.time())))
        return
    if not watch:
        views.console().print(_status_view(env.store))
        return
    try:
        _watch(env.store)
    except KeyboardInterrupt:
        return  # Ctrl-C is how one ends --watch


@qlab.command()
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


def _show(entries: list[dict[str, Any]], as_json: bool, table: Callable[[], RenderableType]) -> None:
    if as_json:
        click.echo(views.to_json(entries))
    else:
        views.console().print(table())


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
    now = time.time()
    return views.status_view(control.snapshot(store, now), now)


# ---- the kill switch ----


def _halt_scope(all_: bool, account: str | None, worker: str | None, strategy: str | None) -> tuple[str, str]:
    given: list[tuple[str, str | None]] = [("all", "" if all_ else None), ("account", account),
                                           ("worker", worker), ("strategy", strategy)]
    chosen = [(scope, target) for scope, target in given if target is not None]
    if len(chosen) != 1:
        raise click.UsageError("Give exactly one of --all, --account A, --worker W, --strategy S.")
    return chosen[0][0], chosen[0][1] or ""


def _halt_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed((
        click.option("--all", "all_", is_flag=True, help="Every account, worker and strategy."),
        click.option("--account", metavar="NAME", help="One exchange account, on every worker."),
        click.option("--worker", metavar="ID", help="Every call made on one worker."),
        click.option("--strategy", metavar="ID", help="One strategy, wherever it runs."),
    )):
        fn = option(fn)
    return fn


@qlab.command()
@_halt_options
@click.option("--cancel-orders", is_flag=True,
              help="Also cancel open orders: the accounts' it covers (linear USDT, and what strategies used), or the strategy's own.")
@click.option("--repair", is_flag=True,
              help="Replace a halts record that does not decode with a halt on everything (lift it with resume --all).")
@pass_env
def halt(env: Env, all_: bool, account: str | None, worker: str | None, strategy: str | None,
         cancel_orders: bool, repair: bool) -> None:
    """Refuse every call that opens or increases exposure (reduce-only orders and cancels pass)."""
    if repair:
        if all_ or account or worker or strategy or cancel_orders:
            raise click.UsageError("--repair takes no other option: it halts everything.")
        click.echo(killswitch.repair_halts(env.store))
        return
    scope, target = _halt_scope(all_, account, worker, strategy)
    click.echo(killswitch.halt(env.store, scope, target, cancel_orders=cancel_orders))


@qlab.command()
@_halt_options
@pass_env
def resume(env: Env, all_: bool, account: str | None, worker: str | None, strategy: str | None) -> None:
    """Lift a halt written by `qlab halt` with the same scope."""
    scope, target = _halt_scope(all_, account, worker, strategy)
    click.echo(killswitch.resume(env.store, scope, target))


# ---- settings ----


@qlab.group()
def config() -> None:
    """The settings in force."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of {name, value, source}.")
@pass_env
def config_show(env: Env, as_json: bool) -> None:
    """The home, the store and the settings file in use, then every setting, its value and where it came from."""
    from quantlab.store.open import shown as shown_store

    paths = env.paths
    found = [*settings.places(home=(paths.home, env.given_by["home"]),
                              store=(shown_store(paths), env.given_by["store_url"]),
                              config=(env.config_path, env.given_by["config_file"])),
             *settings.effective(env.config, env.config_path, qlab)]
    if as_json:
        click.echo(views.to_json([msgspec.to_builtins(s) for s in found]))
        return
    for setting in found:
        shown = "-" if setting.value is None else repr(setting.value)
        click.echo(f"{setting.name} = {shown}  ({setting.source})")


# ---- systemd ----


@qlab.group()
def systemd() -> None:
    """systemd units for this install."""


@systemd.command("render")
@click.option("--user", default="quantlab", show_default=True, help="The user the units run as.")
@click.option("--home", "qlab_home", default="/var/lib/quantlab", show_default=True, help="QLAB_HOME for the units.")
@click.option("--venv", type=click.Path(file_okay=False), help="The virtualenv quantlab is installed in [/usr/local].")
@click.option("--out", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder to write the units into (e.g. /etc/systemd/system).")
@click.option("--store", "store_url", metavar="URL",
              help="The store the units use, written to --env-file (0600); `-` reads it from stdin.")
@click.option("--env-file", type=click.Path(dir_okay=False),
              help="EnvironmentFile with QLAB_STORE=URL for the units [with --store: /etc/quantlab/store.env].")
def systemd_render(user: str, qlab_home: str, venv: str | None, out: str, store_url: str | None,
                   env_file: str | None) -> None:
    """Write qlab-director.service and qlab-worker@.service (Type=notify, watchdog, sandboxed)."""
    from pathlib import Path

    from quantlab.ops.units import STORE_ENV_FILE, Install, write, write_store_env

    # systemd takes only absolute paths in a unit.
    qlab_home, venv = os.path.abspath(qlab_home), venv and os.path.abspath(venv)
    env_file = os.path.abspath(env_file or STORE_ENV_FILE) if env_file or store_url is not None else None
    if store_url is not None and env_file is not None:
        url = sys.stdin.readline() if store_url == "-" else store_url
        click.echo(f"wrote {write_store_env(Path(env_file), url, user)}")
    for path in write(Install(user=user, home=qlab_home, venv=venv, env_file=env_file), Path(out)):
        click.echo(f"wrote {path}")
    if env_file and not Path(env_file).exists():
        click.echo(f"note: the units need {env_file}: write QLAB_STORE=URL in it (mode 0600), or use --store", err=True)


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
    sys.exit(run())


if __name__ == "__main__":
    main()
