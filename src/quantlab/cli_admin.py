"""The install's `qlab` commands: `config show`, `systemd render`, `store migrate` and `js install`.

Like quantlab.cli_fleet, whose pattern they follow, they parse, call the core
and print; quantlab.cli adds these groups to `qlab` (TOP_COMMANDS) when one
of them is asked for.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, cast

import click

from quantlab.lazy import lazy_module

if TYPE_CHECKING:
    import msgspec

    from quantlab import settings, views
    from quantlab.cli import Env
else:
    msgspec = lazy_module("msgspec")
    settings = lazy_module("quantlab.settings")
    views = lazy_module("quantlab.views")

pass_env = click.pass_obj  #: the Env quantlab.cli's group made


# ---- settings ----


@click.group("config")
def config() -> None:
    """The settings in force."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of {name, value, source}.")
@pass_env
def config_show(env: Env, as_json: bool) -> None:
    """The home, the store and the settings file in use, then every setting, its value and where it came from."""
    from quantlab.store.open import shown as shown_store

    qlab = cast(click.Group, click.get_current_context().find_root().command)  # the tree whose settings are read
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


@click.group("systemd")
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
@click.option("--strategy-uids", metavar="FIRST-LAST",
              help="The worker runs each strategy as a uid of its own from this range, e.g. 61000-61999; its unit "
                   "then gives it CAP_SETUID, CAP_SETGID and CAP_KILL.")
def systemd_render(user: str, qlab_home: str, venv: str | None, out: str, store_url: str | None,
                   env_file: str | None, strategy_uids: str | None) -> None:
    """Write qlab-director.service and qlab-worker@.service (Type=notify, watchdog, sandboxed)."""
    from pathlib import Path

    from quantlab.ops.units import STORE_ENV_FILE, Install, write, write_store_env
    from quantlab.worker.strategyuids import parse

    uids = str(parse(strategy_uids)) if strategy_uids is not None else None  # a bad range writes nothing

    # systemd takes only absolute paths in a unit.
    qlab_home, venv = os.path.abspath(qlab_home), venv and os.path.abspath(venv)
    env_file = os.path.abspath(env_file or STORE_ENV_FILE) if env_file or store_url is not None else None
    if store_url is not None and env_file is not None:
        url = sys.stdin.readline() if store_url == "-" else store_url
        click.echo(f"wrote {write_store_env(Path(env_file), url, user)}")
    for path in write(Install(user=user, home=qlab_home, venv=venv, env_file=env_file, strategy_uids=uids),
                      Path(out)):
        click.echo(f"wrote {path}")
    if env_file and not Path(env_file).exists():
        click.echo(f"note: the units need {env_file}: write QLAB_STORE=URL in it (mode 0600), or use --store", err=True)


# ---- the store ----


@click.group("store")
def store_group() -> None:
    """The store itself."""


@store_group.command("migrate")
@pass_env
def store_migrate(env: Env) -> None:
    """Create or update the store's schema (PostgreSQL; opening the store does it too)."""
    from quantlab.store.open import migrate_store

    click.echo(migrate_store(env.paths))


# ---- JavaScript strategies ----


@click.group("js")
def js_group() -> None:
    """JavaScript strategies: the Node runtime they run in."""


@js_group.command("install")
def js_install() -> None:
    """Install the Node runner's packages from the lock file (npm ci); runs offline afterwards."""
    from quantlab.child import jsruntime

    click.echo(f"JavaScript runtime installed in {jsruntime.install()}")


#: The groups quantlab.cli adds to `qlab` itself (its LATE_COMMANDS name them).
TOP_COMMANDS = (config, systemd, store_group, js_group)
