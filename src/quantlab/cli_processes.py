"""The `qlab` commands that run the long-lived processes: `up`, `director start` and `worker start`.

Like quantlab.cli_fleet, whose pattern they follow, they parse and hand over:
`up` to quantlab.up, the two `start`s to quantlab.daemon, which the process
becomes. quantlab.cli adds them to its groups. Their options made from the
records' settings are made on first read (LateOptionsCommand), so that
`qlab --help` imports no record.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from quantlab.cli_options import LateOptionsCommand, Required
from quantlab.lazy import lazy_module

if TYPE_CHECKING:
    import msgspec

    from quantlab import settings
    from quantlab.cli import Env
else:
    msgspec = lazy_module("msgspec")
    settings = lazy_module("quantlab.settings")

pass_env = click.pass_obj  #: the Env quantlab.cli's group made


def _up_options() -> list[click.Parameter]:
    """The strategy setting ``interval``, for the FILEs `up` runs."""
    from quantlab.store.strategy_settings import spec_settings

    interval = next(s for s in spec_settings() if s.name == "interval")
    return [settings.SettingOption(interval, help=f"Seconds between ticks for the FILEs [{interval.default_text}].")]


@click.command("up", cls=LateOptionsCommand, late=_up_options)
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


def _director_options() -> list[click.Parameter]:
    from quantlab.director.options import DirectorOptions
    from quantlab.store.strategy_settings import field_settings

    return settings.setting_options(field_settings(DirectorOptions))


@click.command("start", cls=LateOptionsCommand, late=_director_options)
@click.option("--log-format", type=click.Choice(["text", "json"]), help="The log: text, or one JSON object a line [text].")
@pass_env
def director_start(env: Env, **params: Any) -> None:
    """Run a director in the foreground until SIGTERM or Ctrl-C."""
    from quantlab import daemon
    from quantlab.director.options import DirectorOptions

    given = settings.given(click.get_current_context(), params)
    options = DirectorOptions(**{name: value for name, (value, _) in given.items() if value is not None}).checked()
    daemon.become(daemon.DirectorStart(home=daemon.home_of(env.paths), options=options))


def _worker_options() -> list[click.Parameter]:
    from quantlab.store.strategy_settings import field_settings
    from quantlab.worker.options import WorkerOptions

    return settings.setting_options(field_settings(WorkerOptions))


@click.command("start", cls=LateOptionsCommand, late=_worker_options)
@click.option("--region", cls=Required, unless="a --profile that sets it",
              help="Region this worker serves (required unless --profile sets it).")
@click.option("--id", "id", help="Worker id [<host>-<region>].")
@click.option("--accounts", "accounts_file", metavar="FILE", help="Accounts file (env.jsonl).")
@click.option("--proxy", metavar="URL", help="HTTP(S) proxy for the exchange.")
@click.option("--strategy-uids", metavar="FIRST-LAST",
              help="Run each strategy as a uid of its own from this range, e.g. 61000-61999 (needs root, or "
                   "CAP_SETUID, CAP_SETGID and CAP_KILL).")
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
