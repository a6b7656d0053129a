"""`qlab apply FILE`: a fleet manifest the store is made to match in one command.

The manifest is TOML, one table per strategy under ``strategies``, named by
the strategy's id; an optional ``defaults`` table gives every strategy the
keys it does not set itself::

    [defaults]
    region = "JP"
    interval = 1.0

    [strategies.grid-btc]
    file = "strategies/grid_paper.py"      # relative to the manifest's folder
    params = { symbol = "BTCUSDT" }
    accounts = ["paper"]

The keys are the options of `qlab strategy assign`, by their field names:
file, params, accounts, region, worker, and StrategySpec's settings (Entry
takes their fields from control.AssignOptions, which makes them from the
settings' declarations): interval, heartbeat_timeout, max_errors,
error_window, backoff, stop_timeout, max_memory_mb, max_order_notional,
max_orders_per_minute, max_open_orders, cancel_stale_orders
(tests/unit/test_settings_table.py keeps this list whole). Applying it: a
strategy not in the store is assigned; one whose spec differs is updated and
restarted (moved anew when its placement or accounts changed); a stopped one is started; one
in the store but not in the manifest is stopped, or removed with ``prune``.
Everything is read and checked before the first write, so bad input writes
nothing.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args

import msgspec

from quantlab import control
from quantlab.errors import BadInput, QuantlabError
from quantlab.store.records import StrategySpec, Work
from quantlab.store import workmachine as wm
from quantlab.store.store import Store
from quantlab.child import loader

Action = Literal["add", "update", "start", "stop", "remove"]

#: The detail of the events a manifest's changes write.
APPLIED = "qlab apply"

class Entry(control.AssignOptions, kw_only=True, forbid_unknown_fields=True):
    """One strategy's table (or the defaults): the options of `qlab strategy assign`."""

    file: str | None = None
    params: dict[str, Any] | None = None


class Manifest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    defaults: Entry = msgspec.field(default_factory=Entry)
    strategies: dict[str, Entry] = {}


class Step(msgspec.Struct, kw_only=True):
    """One change the plan makes to one strategy."""

    action: Action
    id: str
    why: str = ""
    spec: StrategySpec | None = None  #: the spec to write (add, update)


def read(path: Path) -> Manifest:
    """The manifest in ``path``; BadInput naming the file and the key when it is not one."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise BadInput(f"cannot read manifest {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"manifest {path} is not TOML: {e}") from None
    try:
        return msgspec.convert(data, Manifest)
    except msgspec.ValidationError as e:
        raise BadInput(f"manifest {path}: {e}") from None


def desired_specs(store: Store, manifest: Manifest, base: Path) -> dict[str, StrategySpec]:
    """Every strategy's checked spec, by id (files relative to ``base``, each parsed once)."""
    checked: dict[Path, Path] = {}
    specs: dict[str, StrategySpec] = {}
    for work_id, entry in manifest.strategies.items():
        merged = {**_given(manifest.defaults), **_given(entry)}
        where = f"strategy {work_id!r}"
        file = merged.pop("file", None)
        if file is None:
            raise BadInput(f"{where}: no file")
        path = Path(file).expanduser()
        path = path if path.is_absolute() else base / path
        request = control.AssignRequest(file=str(path), id=work_id, **merged)
        try:
            if path not in checked:
                checked[path] = loader.check_file(path)
            _, specs[work_id] = control.checked_spec(store, request, checked[path])
        except QuantlabError as e:
            raise BadInput(f"{where}: {e}") from None
    return specs


def _given(entry: Entry) -> dict[str, Any]:
    return {name: value for name in entry.__struct_fields__ if (value := getattr(entry, name)) is not None}


def plan(works: list[Work], specs: dict[str, StrategySpec], *, prune: bool) -> list[Step]:
    """What makes the store match ``specs``, in the manifest's order, then what it no longer lists."""
    works = [w for w in works if w.desired != "removed"]  # on its way out: a listed one is added anew
    current = {w.id: w for w in works}
    steps = []
    for work_id, spec in specs.items():
        work = current.get(work_id)
        if work is None:
            steps.append(Step(action="add", id=work_id, spec=spec))
        elif _comparable(work.spec) != _comparable(spec):
            steps.append(Step(action="update", id=work_id, spec=spec, why=_changed(work.spec, spec)))
        elif work.desired == "stopped" or work.result.status == "failed":
            steps.append(Step(action="start", id=work_id))
    for work in works:
        if work.id in specs:
            continue
        if prune:
            steps.append(Step(action="remove", id=work.id))
        elif work.desired == "running":
            steps.append(Step(action="stop", id=work.id))
    return steps


def _comparable(spec: StrategySpec) -> StrategySpec:
    return msgspec.structs.replace(spec, restart_seq=0)


def _changed(old: StrategySpec, new: StrategySpec) -> str:
    names = [f for f in old.__struct_fields__ if f != "restart_seq" and getattr(old, f) != getattr(new, f)]
    return ", ".join(names)


def perform(store: Store, steps: list[Step], *, clock: control.Clock = time.time) -> None:
    """Write the plan: each step one transition of its strategy's Work, with its event; durable together."""
    with store.durable_together():
        for step in steps:
            _perform(store, step, clock())


def _perform(store: Store, step: Step, now: float) -> None:
    if step.action == "add":
        assert step.spec is not None
        control.submit(store, step.id, step.spec, now, detail=APPLIED)
    elif step.action == "remove":
        control.remove(store, step.id, clock=lambda: now, detail=APPLIED)
    else:
        wm.apply(store, step.id, _transition(step, now))


def _transition(step: Step, now: float) -> wm.Transition:
    if step.action == "update":
        assert step.spec is not None
        return wm.update_spec(step.spec, now, detail=APPLIED)
    if step.action == "start":
        return wm.request_start(now, detail=APPLIED)
    assert step.action == "stop"
    return wm.request_stop(now, detail=APPLIED)


def describe(steps: list[Step]) -> list[str]:
    """The plan as lines a person reads: one per step, then a count per action."""
    lines = [f"{step.action:<7} {step.id}" + (f"  ({step.why})" if step.why else "") for step in steps]
    counts = {action: sum(1 for s in steps if s.action == action) for action in get_args(Action)}
    lines.append(", ".join(f"{n} to {a}" for a, n in counts.items() if n) or "nothing to change")
    return lines


def apply(store: Store, path: Path, *, prune: bool, dry_run: bool) -> list[Step]:
    """Read and check the manifest in ``path``, plan, and (unless ``dry_run``) write the plan."""
    specs = desired_specs(store, read(path), path.resolve().parent)
    steps = plan(store.list_works(), specs, prune=prune)
    if not dry_run:
        perform(store, steps)
    return steps
