"""The kill switch's `qlab` commands: `halt` (and `halt --repair`) and `resume`.

Like quantlab.cli_fleet, whose pattern they follow, they parse, call the core
(quantlab.killswitch) and print; quantlab.cli adds them to `qlab` (TOP_COMMANDS)
when one of them is asked for. Each takes exactly one scope: --all, --account,
--worker or --strategy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import click

from quantlab.lazy import lazy_module

if TYPE_CHECKING:
    from quantlab import killswitch
    from quantlab.cli import Env
else:
    killswitch = lazy_module("quantlab.killswitch")

pass_env = click.pass_obj  #: the Env quantlab.cli's group made


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


@click.command("halt")
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


@click.command("resume")
@_halt_options
@pass_env
def resume(env: Env, all_: bool, account: str | None, worker: str | None, strategy: str | None) -> None:
    """Lift a halt written by `qlab halt` with the same scope."""
    scope, target = _halt_scope(all_, account, worker, strategy)
    click.echo(killswitch.resume(env.store, scope, target))


#: The commands quantlab.cli adds to `qlab` itself (its LATE_COMMANDS name them).
TOP_COMMANDS = (halt, resume)
